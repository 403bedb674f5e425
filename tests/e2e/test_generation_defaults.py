"""The checkpoint's generation defaults through HTTP: a client that sends only messages gets the model
card's accuracy on both embedded models; ``--generation-config vllm`` restores the server's own defaults;
request > ``--override-generation-config`` > checkpoint, seen in the canvas each request gets."""
from __future__ import annotations

import json
import shutil

import pytest

from recipes.tasks import check, heldout_set
from tests.e2e.remote import RemoteServer

CARD = {"max_tokens": 64, "block_length": 32, "steps": 64}  # the model cards' settings


def _chat(http, content: str, **fields) -> dict:
    r = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": content}], **fields})
    assert r.status_code == 200, r.text
    return r.json()


def _canvas(http, path: str, body: dict) -> tuple[int, int]:
    """(max_tokens as the server applied it, canvas length) from the first denoise event of a stream."""
    with http.stream("POST", path, json={**body, "stream": True, "stream_options": {"denoise": True}}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {") and '"denoise"' in line:
                d = json.loads(line[6:])["denoise"]
                return d["length"], len(d["token_ids"])
    raise AssertionError("no denoise event")


@pytest.mark.e2e
@pytest.mark.parametrize("model", ["tiny-llada-instruct", "tiny-llada-moe-instruct"])
def test_messages_only_gets_the_card_accuracy(model, tmp_path):
    examples = heldout_set(4, seed=0)
    with RemoteServer(model, log_path=tmp_path / "auto.log") as srv, srv.http(timeout=300) as http:
        default = [check(ex, _chat(http, ex.prompt)["choices"][0]["message"]["content"]) for ex in examples]
        card = [check(ex, _chat(http, ex.prompt, **CARD)["choices"][0]["message"]["content"]) for ex in examples]
        assert _canvas(http, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})[0] == 64
    acc_default, acc_card = sum(default) / len(default), sum(card) / len(card)
    assert acc_card >= 0.85, acc_card  # the card reports >= 97% on the full held-out set
    assert abs(acc_default - acc_card) <= 0.02, (acc_default, acc_card)
    with RemoteServer(model, ("--generation-config", "vllm"), log_path=tmp_path / "vllm.log") as srv:
        with srv.http() as http:
            length, canvas = _canvas(http, "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
    assert length > 64 and length % 32 == 0  # --default-max-tokens (256), capped to fit the context


@pytest.fixture(scope="module")
def configured(chat_ckpt, tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("gencfg") / "tiny"
    shutil.copytree(chat_ckpt, ckpt)
    (ckpt / "generation_config.json").write_text(json.dumps(
        {"max_new_tokens": 12, "block_length": 4, "temperature": 0.0, "eos_token_id": [1]}))
    args = ("--override-generation-config", '{"block_length": 6}', "--served-model-name", "tiny")
    with RemoteServer(ckpt, args, log_path=ckpt.parent / "server.log") as srv:
        yield srv


def test_request_over_override_over_checkpoint(configured):
    msgs = {"messages": [{"role": "user", "content": "A"}]}
    with configured.http() as http:
        assert _canvas(http, "/v1/chat/completions", msgs) == (12, 12)  # checkpoint budget, override block 6
        assert _canvas(http, "/v1/completions", {"prompt": "A"}) == (12, 12)  # not OpenAI's 16
        assert _canvas(http, "/v1/chat/completions", {**msgs, "block_length": 8}) == (12, 16)  # request wins
        assert _canvas(http, "/v1/chat/completions", {**msgs, "max_tokens": 5}) == (5, 6)
    assert "block_length=6 (override)" in configured.log_tail(20000)
    assert "max_tokens=12 (checkpoint)" in configured.log_tail(20000)
