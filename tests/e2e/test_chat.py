"""/v1/chat/completions through a real server (openai client as the oracle)."""
from __future__ import annotations

import pytest

MODEL = "tiny"
USER = [{"role": "user", "content": "WHAT IS 2+2?"}]


def _chat_tokens(http, messages) -> int:
    return http.post("/tokenize", json={"messages": messages}).json()["count"]


def _stream(client, **kw):
    chunks = list(client.chat.completions.create(model=MODEL, stream=True, **kw))
    text = {}
    reasons = {}
    for ch in chunks:
        for c in ch.choices:
            text[c.index] = text.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason is not None:
                reasons.setdefault(c.index, []).append(c.finish_reason)
    return chunks, text, reasons


def test_chat_non_streaming(client, http):
    out = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=10)
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    msg = out.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str)
    assert out.usage.prompt_tokens == _chat_tokens(http, USER)
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.usage.completion_tokens <= 10


@pytest.mark.parametrize("extra", [{}, {"preset": "fast"}, {"block_length": 4, "steps": 8}])
def test_chat_stream_equals_non_stream(client, extra):
    kw = dict(messages=USER, max_tokens=12, temperature=0, extra_body=extra)
    full = client.chat.completions.create(model=MODEL, **kw)
    chunks, text, reasons = _stream(client, **kw)
    assert text[0] == full.choices[0].message.content
    assert reasons[0] == [full.choices[0].finish_reason]
    first = chunks[0].choices[0]
    assert first.delta.role == "assistant" and first.delta.content == ""
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_max_completion_tokens_wins(client):
    out = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=30, max_completion_tokens=3,
                                         extra_body={"logits_eos_inf": True})
    assert out.usage.completion_tokens <= 3


def test_default_budget_fills_server_default(client):
    out = client.chat.completions.create(model=MODEL, messages=USER, extra_body={"preset": "fast"})
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.completion_tokens <= 256


def test_multi_turn_and_content_parts(client, http):
    turns = [{"role": "system", "content": "BE BRIEF"},
             {"role": "user", "content": "HI"},
             {"role": "assistant", "content": "HELLO"},
             {"role": "user", "content": [{"type": "text", "text": "AGAIN"}]}]
    out = client.chat.completions.create(model=MODEL, messages=turns, max_tokens=6)
    as_text = turns[:3] + [{"role": "user", "content": "AGAIN"}]
    assert out.usage.prompt_tokens == _chat_tokens(http, as_text)
    plain = client.chat.completions.create(model=MODEL, messages=as_text, max_tokens=6)
    assert plain.choices[0].message.content == out.choices[0].message.content


def test_developer_role_is_system(client):
    a = client.chat.completions.create(model=MODEL, messages=[{"role": "developer", "content": "X"}] + USER,
                                       max_tokens=6)
    b = client.chat.completions.create(model=MODEL, messages=[{"role": "system", "content": "X"}] + USER,
                                       max_tokens=6)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.prompt_tokens == b.usage.prompt_tokens


def test_chat_n_greater_than_one(client):
    out = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=6, n=3, temperature=0.8, seed=1)
    assert sorted(c.index for c in out.choices) == [0, 1, 2]
    chunks, text, reasons = _stream(client, messages=USER, max_tokens=6, n=3, temperature=0.8, seed=1)
    assert sorted(reasons) == [0, 1, 2] and all(len(r) == 1 for r in reasons.values())
    assert {c.index: c.message.content for c in out.choices} == text
    roles = [c.choices[0].index for c in chunks if c.choices and c.choices[0].delta.role == "assistant"]
    assert sorted(roles) == [0, 1, 2]


def test_chat_usage_chunk(client):
    full = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=8)
    chunks, _, _ = _stream(client, messages=USER, max_tokens=8, stream_options={"include_usage": True})
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == full.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])


async def _async_chat(server):
    client = server.async_openai()
    out = await client.chat.completions.create(model=MODEL, messages=USER, max_tokens=6)
    stream = await client.chat.completions.create(model=MODEL, messages=USER, max_tokens=6, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    await client.close()
    return out.choices[0].message.content, text


def test_async_openai_client(server):
    import asyncio
    full, streamed = asyncio.run(_async_chat(server))
    assert full == streamed
