"""SSE framing (server/api/streaming.py), the client's SSE reader, and the chunk logic behind streams
(serving.Responder over OutputProcessor deltas; engine ChoiceStream): streamed deltas always add up to the
non-streamed text."""
from __future__ import annotations

import asyncio
import json

import pytest

from tests.unit.steps import step_out
from unmask.clients.sse import SSEDecoder, iter_events
from unmask.server.api import streaming as sse
from unmask.server.api.metrics import Metrics
from unmask.server.api.responder import Responder
from unmask.server.api.serving import Prepared, StreamFlags
from unmask.server.api.serving_chat import ChatShape
from unmask.server.api.serving_completion import CompletionShape
from unmask.server.engine.async_engine import ChoiceStream
from unmask.server.engine.batch import StepOutput
from unmask.server.engine.client import Request
from unmask.server.engine.output_processor import OutputProcessor
from unmask.server.engine.params import DiffusionParams


def ids(tok, text):
    return tok.encode(text)


out = step_out


def test_framing():
    assert sse.data({"a": 1}) == b'data: {"a":1}\n\n'
    assert sse.event("denoise", {"b": "é"}) == 'event: denoise\ndata: {"b":"é"}\n\n'.encode()
    assert sse.DONE == b"data: [DONE]\n\n"
    assert sse.comment() == b": ping\n\n"
    assert sse.data({"t": "a\nb"}).count(b"\n") == 2  # newlines inside JSON strings stay escaped
    assert b"\\ud800" in sse.data({"t": "\ud800"})  # not UTF-8-encodable: ASCII escapes instead
    with pytest.raises(ValueError):
        sse.data({"x": float("nan")})
    with pytest.raises(ValueError):
        sse.event("bad\nname", {})


def test_decoder_roundtrip():
    stream = (sse.data({"i": 1}) + sse.comment() + sse.event("denoise", {"i": 2}) + sse.DONE).decode()
    events = list(iter_events(stream.split("\n")))
    assert [(e.event, e.data) for e in events] == [(None, '{"i":1}'), ("denoise", '{"i":2}'), (None, "[DONE]")]
    assert events[-1].is_done and events[1].json() == {"i": 2}


def test_decoder_spec_details():
    dec = SSEDecoder()
    assert dec.feed("data: a\r\n") is None and dec.feed("data:b") is None
    assert dec.feed("").data == "a\nb"
    assert dec.feed("") is None  # a blank line with nothing pending dispatches nothing
    dec.feed("data: tail")
    assert dec.close().data == "tail"


class _State:
    """What Responder reads of the app state."""

    def __init__(self):
        self.metrics = Metrics("m", lambda: None, 8)


def _responder(tok, shape, n_choices=1, flags=None, echo=None):
    params = DiffusionParams(max_tokens=10)
    prep = Prepared(shape, [[1, 2, 3, 4]], echo or [""], params, n_choices, True, flags or StreamFlags(), 0.0)
    procs = [OutputProcessor(tok, params) for _ in range(n_choices)]
    return Responder(_State(), prep, procs), procs


def _parse(chunks):
    return [json.loads(c[6:]) for c in b"".join(chunks).decode().split("\n\n") if c.startswith("data: {")]


def test_chat_chunks_role_first_one_finish_and_usage(tok):
    r, (p,) = _responder(tok, ChatShape("chatcmpl-x", 1, "m"), flags=StreamFlags(include_usage=True))
    sent = r.on_delta(0, p.process(out([])), stream=True)
    assert sent == []  # no role chunk before the first text
    sent += r.on_delta(0, p.process(out(ids(tok, "HI"))), stream=True)
    sent += r.on_delta(0, p.process(out([], True, "stop")), stream=True)
    sent += r.tail()
    chunks = _parse(sent)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["delta"] == {"content": "HI"}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes == [None, None, "stop"]
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == []
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (4, 2, 6)
    assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens", "nfe", "tokens_per_forward"}
    assert sent[-1] == sse.DONE and p.finished


def test_completion_stream_matches_final_with_echo_and_continuous_usage(tok):
    r, procs = _responder(tok, CompletionShape("cmpl-x", 1, "m"), n_choices=2, echo=["P:"],
                          flags=StreamFlags(continuous_usage=True))
    sent = []
    for i, text, finished in [(0, "AB", False), (1, "C", False), (0, "DE", False), (1, "", False),
                              (0, "", True), (1, "FG", True)]:
        sent += r.on_delta(i, procs[i].process(out(ids(tok, text), finished, "length")), stream=True)
    chunks = _parse(sent)
    streamed = {}
    for c in chunks:
        ch = c["choices"][0]
        streamed[ch["index"]] = streamed.get(ch["index"], "") + ch["text"]
        assert c["usage"]["prompt_tokens"] == 4
    final = r.final()
    assert {c["index"]: c["text"] for c in final["choices"]} == streamed == {0: "P:ABDE", 1: "P:CFG"}
    assert final["usage"]["prompt_tokens"] == 4  # one prompt for both choices (n=2)


def test_engine_error_raises_api_error(tok):
    from unmask.server.api.errors import APIError
    r, (p,) = _responder(tok, CompletionShape("cmpl-x", 1, "m"))
    err = StepOutput("r", (), True, "error", 3, 0, error="RuntimeError: boom")
    with pytest.raises(APIError) as e:
        r.on_delta(0, p.process(err), stream=True)
    assert e.value.status == 500 and "boom" in e.value.message


class _Engine:
    """What a ChoiceStream calls on its engine: records aborts and released routes."""

    def __init__(self, tok):
        self.tokenizer, self.aborted, self.released = tok, [], []

    def abort(self, request_id):
        self.aborted.append(request_id)

    def _release(self, request_id):
        self.released.append(request_id)


def _stream(tok, *ids_, max_tokens=4, max_buffered=None):
    reqs = [Request(i, (1,), DiffusionParams(max_tokens=max_tokens)) for i in ids_]
    engine = _Engine(tok)
    stream = ChoiceStream(engine, reqs, max_buffered)
    return stream, stream.push, engine


def test_stream_heartbeat_loses_nothing(tok):
    async def go():
        stream, push, _ = _stream(tok, "a", "b")
        loop = asyncio.get_running_loop()
        loop.call_later(0.35, push, (0, StepOutput("a", (5,), True, "stop")))
        loop.call_later(0.40, push, (1, StepOutput("b", (6,), True, "stop")))
        return [i async for i, _ in stream.events(heartbeat=0.1)]
    seen = asyncio.run(go())
    assert seen.count(None) >= 2 and sorted(s for s in seen if s is not None) == [0, 1]


def test_stream_aborts_a_choice_at_its_budget_and_close_aborts_the_rest(tok):
    async def go():
        stream, push, engine = _stream(tok, "a", "b", max_tokens=2)
        push((0, StepOutput("a", (5, 6, 7), False)))  # budget reached, engine still running
        agen = stream.events()
        index, delta = await agen.__anext__()
        assert (index, delta.finish_reason, delta.token_ids) == (0, "length", (5, 6))
        assert engine.aborted == ["a"]
        await agen.aclose()
        stream.close()  # b never finished: aborted in the engine, ended as 'abort'
        return engine, stream
    engine, stream = asyncio.run(go())
    assert engine.aborted == ["a", "b"] and sorted(engine.released) == ["a", "b"]
    assert stream.processors[1].finish_reason == "abort"


def test_stream_that_is_not_read_is_aborted_and_freed(tok):
    from unmask.server.engine.client import StreamStalledError

    async def go():
        stream, push, engine = _stream(tok, "a", "b", max_tokens=64, max_buffered=8)
        for step in range(20):  # nobody reads: the 9th unread output trips the bound
            push((step % 2, StepOutput("ab"[step % 2], (5,), False)))
        assert stream.stalled and stream._queue.qsize() == 1  # the unread outputs were dropped
        items = [item async for _, item in stream.events()]
        return items, engine
    items, engine = asyncio.run(go())
    assert len(items) == 1 and isinstance(items[0], StreamStalledError)
    assert sorted(engine.aborted) == ["a", "b"]
