"""/v1/completions through a real server, with the official openai client as the oracle."""
from __future__ import annotations

import pytest

MODEL = "tiny"
PROMPT = "HELLO WORLD"


def _tokens(http, text: str) -> list[int]:
    return http.post("/tokenize", json={"prompt": text}).json()["tokens"]


def _stream_text(client, **kw) -> tuple[dict[int, str], dict[int, list[str]], list]:
    """Concatenated text and every finish_reason per choice index, plus the raw chunks."""
    texts, reasons, chunks = {}, {}, list(client.completions.create(model=MODEL, stream=True, **kw))
    for ch in chunks:
        for c in ch.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason is not None:
                reasons.setdefault(c.index, []).append(c.finish_reason)
    return texts, reasons, chunks


def test_completion_usage_is_exact(client, http):
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12)
    assert out.object == "text_completion" and out.id.startswith("cmpl-") and out.model == MODEL
    (choice,) = out.choices
    assert choice.index == 0 and choice.finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens == len(_tokens(http, PROMPT))
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    if choice.finish_reason == "length":
        assert out.usage.completion_tokens == 12
    assert 0 <= out.usage.completion_tokens <= 12


def test_default_max_tokens_is_16(client):
    out = client.completions.create(model=MODEL, prompt="A", extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens <= 16


@pytest.mark.parametrize("extra", [
    {},                                               # exact, one block
    {"block_length": 8, "steps": 16},                  # several blocks
    {"block_length": 8},                              # 13 tokens rounded up to 16, cut back to 13
    {"preset": "fast"},                               # prefix cache + threshold
    {"cache": "dual", "threshold": 0.5, "block_length": 4},
    {"remasking": "random", "seed": 7},
])
def test_stream_equals_non_stream(client, extra):
    kw = dict(prompt=PROMPT, max_tokens=13, temperature=0, extra_body=extra)
    full = client.completions.create(model=MODEL, **kw)
    texts, reasons, _ = _stream_text(client, **kw)
    assert texts[0] == full.choices[0].text
    assert reasons[0] == [full.choices[0].finish_reason]


def test_budget_cut_reports_length(client):
    """max_tokens=5 inside an 8-token block: the canvas is rounded up, the answer cut back to 5."""
    out = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5,
                                    extra_body={"block_length": 8, "logits_eos_inf": True})
    if out.choices[0].finish_reason == "length":
        assert out.usage.completion_tokens == 5


def test_prompt_shapes_and_n(client, http):
    ids = _tokens(http, "ABC")
    for prompt, count in [("ABC", 1), (["ABC", "XYZ"], 2), (ids, 1), ([ids, ids[:2]], 2)]:
        out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, n=2)
        assert sorted(c.index for c in out.choices) == list(range(2 * count))
        if count == 1 and prompt == ids:
            assert out.usage.prompt_tokens == len(ids)
    # temperature 0: the same prompt gives the same text whatever form it takes
    a = client.completions.create(model=MODEL, prompt="ABC", max_tokens=6)
    b = client.completions.create(model=MODEL, prompt=ids, max_tokens=6)
    assert a.choices[0].text == b.choices[0].text


def test_batch_prompt_usage_counts_each_prompt_once(client, http):
    out = client.completions.create(model=MODEL, prompt=["AB", "CDE"], max_tokens=4, n=3)
    assert len(out.choices) == 6
    assert out.usage.prompt_tokens == len(_tokens(http, "AB")) + len(_tokens(http, "CDE"))
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.usage.completion_tokens <= 6 * 4


def test_n_streaming_one_finish_per_choice(client):
    texts, reasons, _ = _stream_text(client, prompt=["AB", "CD"], max_tokens=8, n=2)
    assert sorted(reasons) == [0, 1, 2, 3]
    assert all(len(r) == 1 for r in reasons.values())
    full = client.completions.create(model=MODEL, prompt=["AB", "CD"], max_tokens=8, n=2)
    assert {c.index: c.text for c in full.choices} == {i: texts.get(i, "") for i in range(4)}


def test_echo(client):
    out = client.completions.create(model=MODEL, prompt="ECHO ME", max_tokens=4, echo=True)
    assert out.choices[0].text.startswith("ECHO ME")
    only = client.completions.create(model=MODEL, prompt="ECHO ME", max_tokens=0, echo=True)
    assert only.choices[0].text == "ECHO ME" and only.usage.completion_tokens == 0
    texts, _, _ = _stream_text(client, prompt="ECHO ME", max_tokens=4, echo=True)
    assert texts[0] == out.choices[0].text


def test_seeded_sampling_is_reproducible(client):
    kw = dict(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=1.0, seed=123)
    assert client.completions.create(**kw).choices[0].text == client.completions.create(**kw).choices[0].text


def test_stop_string_cuts_text(client):
    base = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, extra_body={"logits_eos_inf": True})
    text = base.choices[0].text
    assert len(text) >= 4, "the seeded tiny checkpoint must produce enough text to pick a stop string"
    stop = text[2:4]
    cut = text[:text.find(stop)]
    for stream in (False, True):
        kw = dict(prompt=PROMPT, max_tokens=16, stop=[stop], extra_body={"logits_eos_inf": True})
        if stream:
            texts, reasons, chunks = _stream_text(client, **kw)
            assert texts[0] == cut and reasons[0] == ["stop"]
        else:
            out = client.completions.create(model=MODEL, **kw)
            assert out.choices[0].text == cut and out.choices[0].finish_reason == "stop"
            assert out.choices[0].model_extra["stop_reason"] == stop
    inc = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=16, stop=[stop],
                                    extra_body={"logits_eos_inf": True, "include_stop_str_in_output": True})
    assert inc.choices[0].text == cut + stop


@pytest.mark.parametrize("opts", [None, {"include_usage": False}, {"include_usage": True},
                                  {"include_usage": True, "continuous_usage_stats": True},
                                  {"include_usage": False, "continuous_usage_stats": True}])
def test_stream_options(client, opts):
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10)
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, stream=True,
                                            stream_options=opts))
    with_choices = [c for c in chunks if c.choices]
    usage_only = [c for c in chunks if not c.choices]
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    if opts and opts.get("include_usage"):
        assert len(usage_only) == 1 and chunks[-1] is usage_only[0]
        assert usage_only[0].usage.model_dump() == full.usage.model_dump()
    else:
        assert not usage_only
    if opts and opts.get("continuous_usage_stats"):
        assert all(c.usage is not None for c in with_choices)
        assert with_choices[-1].usage.completion_tokens == full.usage.completion_tokens
    else:
        assert all(c.usage is None for c in with_choices)


def test_request_id_header(http):
    r = http.post("/v1/completions", json={"prompt": "A", "max_tokens": 2}, headers={"X-Request-Id": "abc-123"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "abc-123" and r.json()["id"] == "cmpl-abc-123"
    # the same id twice at once is fine: engine ids stay unique
    r2 = http.post("/v1/completions", json={"prompt": "A", "max_tokens": 2, "n": 2}, headers={"X-Request-Id": "abc-123"})
    assert r2.status_code == 200 and len(r2.json()["choices"]) == 2
