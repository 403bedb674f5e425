"""SSE framing (server/api/sse.py), the client's SSE reader, and the text/chunk logic behind streams
(ChoiceState, ResponseBuilder): streamed deltas always add up to the non-streamed text."""
from __future__ import annotations

import json

import pytest

from tests.helpers import SPECIALS, write_tokenizer
from unmask.clients.sse import SSEDecoder, iter_events
from unmask.server.api import sse
from unmask.server.api.builder import ResponseBuilder, StreamFlags
from unmask.server.api.choice import ChoiceState
from unmask.server.api.shapes import ChatShape, CompletionShape
from unmask.server.engine.batch import StepOutput
from unmask.server.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    write_tokenizer(path, SPECIALS)
    return Tokenizer.from_pretrained(path)


def ids(tok, text):
    return tok.encode(text)


def out(new, finished=False, reason=None):
    return StepOutput("r", tuple(new), finished, reason, 3, len(new), nfe=1, num_committed=len(new))


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


def test_budget_cut_and_length(tok):
    c = ChoiceState(0, tok, max_tokens=3)
    assert c.feed(out(ids(tok, "AB"))) == "AB" and not c.done
    assert c.feed(out(ids(tok, "CDE"))) == "C"
    assert c.done and c.finish_reason == "length" and c.token_ids == ids(tok, "ABC")


def test_engine_finish_reason_passes_through(tok):
    c = ChoiceState(0, tok, max_tokens=10)
    assert c.feed(out(ids(tok, "AB"), True, "stop")) == "AB" and c.finish_reason == "stop"


def test_stop_string_held_back_across_steps(tok):
    c = ChoiceState(0, tok, max_tokens=20, stops=("XYZ",))
    deltas = [c.feed(out(ids(tok, "ABX"))), c.feed(out(ids(tok, "Y"))), c.feed(out(ids(tok, "ZQQ")))]
    assert deltas == ["AB", "", ""] and c.text == "AB"
    assert c.finish_reason == "stop" and c.stop_reason == "XYZ"
    assert c.token_ids == ids(tok, "ABXYZ")  # counted up to where the stop string completed


def test_held_back_text_released_when_no_stop(tok):
    c = ChoiceState(0, tok, max_tokens=20, stops=("XYZ",))
    assert c.feed(out(ids(tok, "ABX"))) == "AB"
    assert c.feed(out(ids(tok, "Q"))) == "XQ"
    assert c.feed(out(ids(tok, "XY"), True, "length")) == "XY"  # final: nothing stays held back
    assert c.text == "ABXQXY"


def test_include_stop_and_earliest_stop(tok):
    c = ChoiceState(0, tok, max_tokens=20, stops=("CD", "B"), include_stop=True)
    c.feed(out(ids(tok, "ABCD")))
    assert c.text == "AB" and c.stop_reason == "B"


def _builder(tok, shape, n_choices=1, flags=None, echo=None):
    choices = [ChoiceState(i, tok, 10) for i in range(n_choices)]
    return ResponseBuilder(shape, choices, [4] * n_choices, echo or [""] * n_choices, flags or StreamFlags(),
                           None, 0.0, n=n_choices)


def _parse(chunks):
    return [json.loads(c[6:]) for c in b"".join(chunks).decode().split("\n\n") if c.startswith("data: {")]


def test_chat_chunks_role_first_one_finish_and_usage(tok):
    b = _builder(tok, ChatShape("chatcmpl-x", 1, "m"), flags=StreamFlags(include_usage=True))
    sent = b.on_item(0, out([]), stream=True)
    assert sent == []  # no role chunk before the first text
    sent += b.on_item(0, out(ids(tok, "HI")), stream=True)
    sent += b.on_item(0, out([], True, "stop"), stream=True)
    sent += b.tail()
    chunks = _parse(sent)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[1]["choices"][0]["delta"] == {"content": "HI"}
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes == [None, None, "stop"]
    usage = chunks[-1]["usage"]
    assert chunks[-1]["choices"] == [] and {k: usage[k] for k in ("prompt_tokens", "completion_tokens",
                                                                   "total_tokens")} == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens", "nfe", "tokens_per_forward"}
    assert sent[-1] == sse.DONE and b.done


def test_completion_stream_matches_final_with_echo_and_continuous_usage(tok):
    b = _builder(tok, CompletionShape("cmpl-x", 1, "m"), n_choices=2, echo=["P:", "P:"],
                 flags=StreamFlags(continuous_usage=True))
    sent = []
    for i, text, finished in [(0, "AB", False), (1, "C", False), (0, "DE", False), (1, "", False),
                              (0, "", True), (1, "FG", True)]:
        sent += b.on_item(i, out(ids(tok, text), finished, "length"), stream=True)
    chunks = _parse(sent)
    streamed = {}
    for c in chunks:
        ch = c["choices"][0]
        streamed[ch["index"]] = streamed.get(ch["index"], "") + ch["text"]
        assert c["usage"]["prompt_tokens"] == 4
    final = b.final()
    assert {c["index"]: c["text"] for c in final["choices"]} == streamed == {0: "P:ABDE", 1: "P:CFG"}
    assert final["usage"]["prompt_tokens"] == 4  # one prompt for both choices (n=2)


def test_engine_error_raises_api_error(tok):
    from unmask.server.api.errors import APIError
    b = _builder(tok, CompletionShape("cmpl-x", 1, "m"))
    err = StepOutput("r", (), True, "error", 3, 0, error="RuntimeError: boom")
    with pytest.raises(APIError) as e:
        b.on_item(0, err, stream=True)
    assert e.value.status == 500 and "boom" in e.value.message


class _FakeEngine:
    """Stands in for AsyncEngine: scripted outputs per request, records which generators were closed."""

    def __init__(self, delay: float = 0.0, refuse: dict | None = None):
        self.delay, self.refuse, self.closed = delay, refuse or {}, []

    async def generate(self, request):
        import asyncio
        if request.request_id in self.refuse:
            raise self.refuse[request.request_id]
        try:
            await asyncio.sleep(self.delay)
            yield StepOutput(request.request_id, (1,), True, "length")
        finally:
            self.closed.append(request.request_id)

    def abort(self, request_id):
        self.closed.append(request_id)


def _requests(*ids):
    from unmask.server.engine.params import DiffusionParams
    from unmask.server.engine.sequence import Request
    return [Request(i, (1,), DiffusionParams(max_tokens=1)) for i in ids]


def test_run_heartbeat_loses_nothing():
    import asyncio
    from unmask.server.api.run import GenerationRun

    async def go():
        run = GenerationRun(_FakeEngine(delay=0.35), _requests("a", "b"))
        await run.start()
        seen = []
        async for index, item in run.events(heartbeat=0.1):
            seen.append(index)
            if len([s for s in seen if s is not None]) == 2:
                break
        run.close()
        return seen
    seen = asyncio.run(go())
    assert seen.count(None) >= 2 and sorted(s for s in seen if s is not None) == [0, 1]


def test_run_refusal_cancels_the_other_choices():
    import asyncio
    from unmask.server.api.errors import APIError
    from unmask.server.api.run import GenerationRun
    from unmask.server.engine.async_engine import QueueFullError

    engine = _FakeEngine(delay=5, refuse={"b": QueueFullError("full")})

    async def go():
        run = GenerationRun(engine, _requests("a", "b"), retry_after=2)
        with pytest.raises(APIError) as e:
            await run.start()
        await asyncio.sleep(0.01)  # let the cancelled pump run its cleanup
        return e.value
    err = asyncio.run(go())
    assert err.status == 503 and err.code == "queue_full" and err.retry_after == 2
    assert "a" in engine.closed
