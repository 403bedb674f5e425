"""unmask.clients against the shared server (sync, async, streaming, chat CLI) and retry behaviour
against a scripted transport."""
from __future__ import annotations

import argparse
import asyncio
import io

import httpx
import pytest

from unmask.clients import AsyncClient, Client, UnmaskAPIError
from unmask.clients.chat import add_chat_args, render_canvas, run_chat

MSG = [{"role": "user", "content": "HI"}]


def test_sync_client(server, client):
    with Client(server.base_url) as c:
        assert c.models() == ["tiny"]
        out = c.complete("HELLO", max_tokens=10, block_length=8)
        oracle = client.completions.create(model="tiny", prompt="HELLO", max_tokens=10, extra_body={"block_length": 8})
        assert out.text == oracle.choices[0].text and out.usage.completion_tokens == oracle.usage.completion_tokens
        events = list(c.complete_stream("HELLO", max_tokens=10, block_length=8))
        assert "".join(e.text for e in events if e.kind == "delta") == out.text
        assert events[-1].kind == "usage" and events[-1].usage == out.usage
        chat = c.chat(MSG, max_tokens=8, preset="fast")
        streamed = "".join(e.text for e in c.chat_stream(MSG, max_tokens=8, preset="fast"))
        assert streamed == chat.text
        assert c.tokenize("AB") == [33, 34]
        with pytest.raises(UnmaskAPIError) as e:
            c.complete("A", top_p=1.5)
        assert e.value.status == 400 and e.value.param == "top_p"


def test_client_denoise_stream(server):
    with Client(server.base_url) as c:
        events = list(c.complete_stream("HELLO", max_tokens=8, denoise=True))
    steps = [e for e in events if e.kind == "denoise"]
    assert steps and steps[-1].denoise["finished"] and events[-1].usage.nfe == steps[-1].denoise["nfe"]
    assert "·" in render_canvas(steps[0].denoise, 80) or not steps[0].denoise["masked"]


def test_async_client(server):
    async def go():
        async with AsyncClient(server.base_url) as c:
            outs = await asyncio.gather(*[c.complete("HELLO", max_tokens=6) for _ in range(4)])
            text = "".join([e.text async for e in c.chat_stream(MSG, max_tokens=6) if e.kind == "delta"])
            chat = await c.chat(MSG, max_tokens=6)
            return outs, text, chat
    outs, text, chat = asyncio.run(go())
    assert len({o.text for o in outs}) == 1  # batch invariance at temperature 0
    assert text == chat.text


def test_chat_cli(server):
    parser = argparse.ArgumentParser()
    add_chat_args(parser)
    args = parser.parse_args(["--url", server.base_url, "--max-tokens", "6", "--system", "BE BRIEF"])
    out = io.StringIO()
    assert run_chat(args, io.StringIO("HI\n/denoise\nAGAIN\n/reset\n/exit\n"), out) == 0
    text = out.getvalue()
    assert text.count("> ") == 5 and "[denoise view on]" in text and "tokens]" in text


def _scripted(statuses: list[int]):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        status = statuses[min(len(calls) - 1, len(statuses) - 1)]
        if status == 503:
            return httpx.Response(503, headers={"Retry-After": "0"},
                                  json={"error": {"message": "full", "type": "x", "param": None, "code": "queue_full"}})
        return httpx.Response(200, json={"id": "cmpl-1", "model": "m", "created": 1, "usage": None,
                                         "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}]})
    return handler, calls


def test_retries_on_503():
    handler, calls = _scripted([503, 503, 200])
    with Client("http://test", transport=httpx.MockTransport(handler), max_retries=3) as c:
        assert c.complete("A").text == "ok"
    assert len(calls) == 3
    handler, calls = _scripted([503])
    with Client("http://test", transport=httpx.MockTransport(handler), max_retries=1) as c:
        with pytest.raises(UnmaskAPIError) as e:
            c.complete("A")
    assert e.value.status == 503 and e.value.code == "queue_full" and len(calls) == 2


def test_async_retries_on_503():
    handler, calls = _scripted([503, 200])

    async def go():
        async with AsyncClient("http://test", transport=httpx.MockTransport(handler)) as c:
            return await c.complete("A")
    assert asyncio.run(go()).text == "ok" and len(calls) == 2
