"""``unmask serve tiny-llada2-instruct``: the embedded LLaDA2-style (block-causal MoE) model answers held-out
task-suite prompts over /v1/chat/completions with the checkpoint's defaults (exact preset: LLaDA2's threshold
rule over the exact prefix cache), streamed as it answers unstreamed, and on the fast preset."""
from __future__ import annotations

import json

import pytest

from recipes.tasks import check, heldout_set
from tests.e2e.remote import RemoteServer

MODEL = "tiny-llada2-instruct"
FLOOR = 0.4
"""Fraction of the sampled held-out prompts answered exactly, below the model card's 54.0% (exact) / 53.8% (fast)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with RemoteServer(MODEL, log_path=tmp_path_factory.mktemp("llada2") / "server.log") as srv:
        yield srv


def _answer(http, content: str, **fields) -> str:
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}], **fields})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == MODEL and body["choices"][0]["finish_reason"] == "stop"
    return body["choices"][0]["message"]["content"]


def _streamed(http, content: str) -> str:
    text = []
    body = {"messages": [{"role": "user", "content": content}], "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                text += [c["delta"].get("content") or "" for c in json.loads(line[6:])["choices"]]
    return "".join(text)


@pytest.mark.e2e
def test_serves_the_task_suite(server):
    examples = heldout_set(2, seed=0)  # two held-out prompts per task
    with server.http(timeout=300) as http:
        assert MODEL in [m["id"] for m in http.get("/v1/models").json()["data"]]
        exact = [_answer(http, ex.prompt) for ex in examples]
        fast = [_answer(http, ex.prompt, preset="fast") for ex in examples]
        right = next(i for i, (ex, text) in enumerate(zip(examples, exact)) if check(ex, text))
        assert _streamed(http, examples[right].prompt) == exact[right]
    for texts in (exact, fast):
        hits = sum(check(ex, t) for ex, t in zip(examples, texts))
        assert hits >= FLOOR * len(examples), [(ex.prompt, t) for ex, t in zip(examples, texts)]
