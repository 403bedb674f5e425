"""Sampling controls, logprobs, suffix infilling and ignore_eos through HTTP (openai SDK), streaming and not.

Each field reaches the engine (seeded T > 0: the HTTP answer equals the offline-style repeat of itself and,
streamed, the same text); logprobs come in OpenAI's exact shapes, chunk by chunk when streaming."""
from __future__ import annotations

import pytest

MODEL = "tiny"
SEEDED = {"temperature": 0.8, "seed": 7}
CONTROLS = [{"top_p": 0.7}, {"top_k": 4}, {"min_p": 0.1}, {"logit_bias": {"40": 5.0}}, {"presence_penalty": 1.0},
            {"frequency_penalty": 0.5}, {"repetition_penalty": 1.3}, {"min_tokens": 6}, {"stop_token_ids": [40]},
            {"ignore_eos": True}]


def _body(ctl: dict) -> tuple[dict, dict]:
    """Standard OpenAI arguments and the rest (extra_body) for one control set."""
    std = {k: v for k, v in ctl.items() if k in ("top_p", "logit_bias", "presence_penalty", "frequency_penalty")}
    return std, {**{k: v for k, v in ctl.items() if k not in std}, "block_length": 4}


@pytest.mark.parametrize("ctl", CONTROLS, ids=lambda c: next(iter(c)))
def test_completion_fields_streamed_and_not(client, ctl):
    std, extra = _body(ctl)
    kw = dict(model=MODEL, prompt="HELLO", max_tokens=8, extra_body=extra, **std, **SEEDED)
    one = client.completions.create(**kw)
    assert client.completions.create(**kw).choices[0].text == one.choices[0].text  # seeded
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw) if c.choices)
    assert streamed == one.choices[0].text
    if "ignore_eos" in ctl or "min_tokens" in ctl:
        assert one.usage.completion_tokens >= (8 if "ignore_eos" in ctl else 6)


@pytest.mark.parametrize("ctl", CONTROLS[::3], ids=lambda c: next(iter(c)))
def test_chat_fields_streamed_and_not(client, ctl):
    std, extra = _body(ctl)
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "AB"}], max_tokens=8, extra_body=extra, **std,
              **SEEDED)
    text = client.chat.completions.create(**kw).choices[0].message.content
    chunks = client.chat.completions.create(stream=True, **kw)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text


def _check_chat_entries(entries, top: int):
    for e in entries:
        assert e.logprob <= 0 and bytes(e.bytes).decode("utf-8", "replace") == e.token
        assert len(e.top_logprobs) == top and all(t.logprob <= e.top_logprobs[0].logprob for t in e.top_logprobs)


def test_chat_logprobs_shapes(client):
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "AB"}], max_tokens=8, logprobs=True, top_logprobs=3,
              extra_body={"block_length": 4, "ignore_eos": True})
    out = client.chat.completions.create(**kw)
    entries = out.choices[0].logprobs.content
    assert len(entries) == out.usage.completion_tokens == 8
    _check_chat_entries(entries, 3)
    for e in entries:  # greedy: the committed token is the step's best
        assert e.logprob == pytest.approx(e.top_logprobs[0].logprob)
    streamed = [e for c in client.chat.completions.create(stream=True, **kw) if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]
    plain = client.chat.completions.create(**{**kw, "logprobs": False, "top_logprobs": None})
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_shapes(client, http):
    body = {"model": MODEL, "prompt": "HELLO", "max_tokens": 6, "logprobs": 2, "ignore_eos": True, "block_length": 4}
    out = http.post("/v1/completions", json=body).json()
    lp = out["choices"][0]["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 6
    assert "".join(lp["tokens"]) == out["choices"][0]["text"]
    assert lp["text_offset"] == [sum(len(t) for t in lp["tokens"][:i]) for i in range(6)]
    assert all(v <= 0 for v in lp["token_logprobs"]) and all(2 <= len(t) <= 3 for t in lp["top_logprobs"])
    chunks = list(client.completions.create(stream=True, **{k: v for k, v in body.items() if k in
                                                            ("model", "prompt", "max_tokens", "logprobs")},
                                            extra_body={"ignore_eos": True, "block_length": 4}))
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert tokens == lp["tokens"]


def test_suffix_infilling(client):
    kw = dict(model=MODEL, prompt="AB", suffix="YZ", max_tokens=8, extra_body={"preset": "exact", "block_length": 4})
    out = client.completions.create(**kw)
    assert out.usage.completion_tokens <= 8
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw) if c.choices)
    assert streamed == out.choices[0].text
    fast = client.completions.create(**{**kw, "extra_body": {"preset": "fast", "block_length": 4}})
    assert fast.usage.completion_tokens <= 8


def test_stop_token_id_is_the_stop_reason(http):
    body = {"model": MODEL, "prompt": "HELLO", "max_tokens": 8, "stop_token_ids": [40], "logit_bias": {"40": 100.0}}
    choice = http.post("/v1/completions", json=body).json()["choices"][0]
    assert (choice["finish_reason"], choice["stop_reason"], choice["text"]) == ("stop", 40, "")


def test_ignore_eos_is_exact_length(client):
    for n in (3, 17):
        out = client.completions.create(model=MODEL, prompt="A", max_tokens=n, extra_body={"ignore_eos": True})
        assert out.usage.completion_tokens == n and out.choices[0].finish_reason == "length"


def test_responses_top_p_and_logprobs(client):
    r = client.responses.create(model=MODEL, input="AB", max_output_tokens=6, top_p=0.8, temperature=0.5,
                                include=["message.output_text.logprobs"],
                                extra_body={"top_logprobs": 2, "ignore_eos": True, "block_length": 4, "seed": 1})
    part = r.output[0].content[0]
    assert len(part.logprobs) == 6 and all(len(e.top_logprobs) == 2 for e in part.logprobs)
    assert "".join(e.token for e in part.logprobs) == r.output_text


def test_suffix_counts_toward_the_context(http):
    long = "A" * 4000
    r = http.post("/v1/completions", json={"model": MODEL, "prompt": "B", "suffix": long, "max_tokens": 4})
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded" and "4001 input tokens" in err["message"]
    ok = http.post("/v1/completions", json={"model": MODEL, "prompt": "B", "suffix": "C D", "ignore_eos": True})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 16
