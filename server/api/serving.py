"""Serving core shared by completions and chat: submit a :class:`Prepared` request's choices to the
engine client, then answer with an SSE stream or one JSON body built from the same deltas.

Admission happens before the response starts, so refusals keep their HTTP status (400 never fits, 503
busy). A client that goes away aborts the request: for streams Starlette cancels the body iterator when it
sees the disconnect; for plain requests :func:`until_disconnect` watches the connection next to the work
(vLLM's ``with_cancellation``). Either way ``ChoiceStream.close()`` aborts the engine requests, which free
their slots at the next step boundary.

Streaming rules (SERVING.md §2.4): chat sends its role chunk together with a choice's first text (not
earlier: benchmarks take it as the first token); empty deltas are skipped; each choice gets exactly one
``finish_reason``; the usage chunk (``choices: []``) comes last, then ``[DONE]``.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Protocol

from starlette.requests import Request as HTTPRequest
from starlette.responses import Response, StreamingResponse

from unmask.server.api import streaming
from unmask.server.api.responder import Responder
from unmask.server.api.errors import APIError, JSONAnswer, engine_refusal
from unmask.server.engine.client import EngineClient, EngineDeadError, Request, StreamStalledError
from unmask.server.engine.params import DiffusionParams

log = logging.getLogger("unmask.api")
HEARTBEAT_S = 15.0


class Choice(Protocol):
    """What a response needs of one choice (an OutputProcessor, or :class:`EchoOnly`)."""
    text: str
    token_ids: list[int]
    finish_reason: str | None
    stop_reason: str | None
    nfe: int
    num_committed: int


@dataclasses.dataclass
class EchoOnly:
    """A choice with nothing to generate (completions ``echo`` with ``max_tokens: 0``)."""
    text: str = ""
    token_ids: list[int] = dataclasses.field(default_factory=list)
    finish_reason: str | None = "length"
    stop_reason: str | None = None
    nfe: int = 0
    num_committed: int = 0


class Shape(Protocol):
    """The wire shapes of one endpoint (serving_completion.CompletionShape, serving_chat.ChatShape,
    responses_shape.ResponseShape): the events of a stream and the one answer of a non-streaming request."""

    def head(self) -> list[bytes]:
        """Events that open a stream, before any text."""
    def chunk(self, index: int, text: str, finish_reason: str | None = None, stop_reason: str | None = None,
              usage_: dict | None = None, logprobs: list | None = None) -> dict | list[dict] | None:
        """A stream delta of choice ``index`` (the last one carries its finish reason); None: no event; a list:
        several events (the Responses API opens an output item with its first delta).
        ``logprobs``: (token id, entry) of the tokens it carries (api/logprobs.py), None when not asked for."""
    def role_chunk(self, index: int) -> dict | None:
        """Chat's first chunk of a choice, sent with its first text (None: no such chunk)."""
    def usage_chunk(self, usage_: dict | None) -> dict:
        """The shape a denoise event borrows (and, with include_usage, the usage chunk)."""
    def encode(self, event: dict | list[dict]) -> bytes:
        """One event (or the list a chunk returned) as SSE bytes."""
    def tail(self, choices: list[Choice], usage_: dict, include_usage: bool) -> list[bytes]:
        """Events that close a finished stream."""
    def error_events(self, body: dict) -> bytes:
        """An error after the stream started, and the stream's end."""
    def final(self, choices: list[Choice], usage_: dict, prefixes: list[str]) -> dict:
        """The non-streaming answer."""


@dataclasses.dataclass(frozen=True)
class StreamFlags:
    include_usage: bool = False
    continuous_usage: bool = False
    denoise: bool = False


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A validated request, ready to run: tokenized prompts and engine settings."""
    shape: Shape
    prompts: list[list[int]]
    echo: list[str]
    """Per prompt: the text to prepend to each of its choices ('' without echo)."""
    params: DiffusionParams | None
    """None when there is nothing to generate (echo with max_tokens=0)."""
    n: int
    stream: bool
    flags: StreamFlags
    t0: float
    prompt_param: str = "prompt"
    """The body field that holds the prompt ('prompt' or 'messages'), named in prompt errors."""
    suffix: tuple[int, ...] = ()
    """Infilling (completions ``suffix``): token ids after the generated middle, the same for every prompt."""
    constraint_param: str = "structured_outputs"
    """The body field the structured-output constraint came from, named when the engine cannot compile it."""

    def requests(self, ids: list[str]) -> list[Request]:
        """One engine Request per choice: prompt p, sample i -> choice p * n + i."""
        prompts = [tuple(p) for p in self.prompts]  # one tuple per prompt, shared by its n choices
        return [Request(ids[p * self.n + i], prompt, self.params.for_choice(i), stream_canvas=self.flags.denoise,
                        suffix_token_ids=self.suffix)
                for p, prompt in enumerate(prompts) for i in range(self.n)]


async def serve(state, prep: Prepared, http: HTTPRequest) -> Response:
    """Run ``prep`` on the engine client (``state.client``) and answer."""
    if prep.params is None:  # echo with max_tokens=0: the prompt is the whole answer
        return _echo_only(state, prep)
    client: EngineClient = state.client
    requests = prep.requests(state.new_ids(len(prep.prompts) * prep.n))
    try:
        stream = client.submit(requests, max_buffered=state.settings.max_stream_buffer)
    except Exception as exc:  # noqa: BLE001 - refusals map to 400/503, anything else is a bug
        err = engine_refusal(exc, state.settings.retry_after)
        if err is None:
            raise
        if err.param == "prompt":
            err.param = prep.prompt_param
        elif err.param == "structured_outputs":
            err.param = prep.constraint_param
        if err.status == 503:
            state.metrics.rejections.inc()
        raise err from None
    state.metrics.request_started(prep.n, prep.params.max_tokens)
    state.streams.add(stream)
    responder = Responder(state, prep, stream.processors)
    if prep.stream:
        return streaming.BoundedStreamingResponse(_stream(state, stream, responder),
                                                  state.settings.stream_write_timeout,
                                                  state.metrics.stalled_streams.inc)
    return await until_disconnect(http, _collect(state, stream, responder))


def _echo_only(state, prep: Prepared) -> Response:
    responder = Responder(state, prep, [EchoOnly() for _ in range(len(prep.prompts) * prep.n)])
    if not prep.stream:
        return JSONAnswer(responder.final())

    async def events():
        yield b"".join(responder.head())
        for i, c in enumerate(responder.choices):
            yield prep.shape.encode(prep.shape.chunk(i, responder.echo[i], c.finish_reason))
        yield b"".join(responder.tail())
    return StreamingResponse(events(), media_type=streaming.MEDIA_TYPE, headers=streaming.HEADERS)


def _error_event(exc: BaseException) -> APIError:
    """A choice's failure as the answer's error: engine gone -> 503; anything else -> 500 (details stay in
    the server log)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, EngineDeadError):
        return APIError(503, f"the engine stopped: {exc}", None, "engine_dead", retry_after=5)
    return APIError(500, "internal error while producing this request's output (see the server log)", None,
                    "internal_error")


async def _stream(state, stream, responder: Responder):
    shape = responder.prep.shape
    try:
        head = responder.head()
        if head:
            yield b"".join(head)
        async for index, item in stream.events(heartbeat=HEARTBEAT_S):
            if index is None:  # nothing for a while (queued, long step): keep proxies from timing out
                yield streaming.comment()
                continue
            if isinstance(item, StreamStalledError):  # the client stopped reading: nothing more can reach it
                state.metrics.stalled_streams.inc()
                responder.record_unfinished("abort")
                return
            try:
                if isinstance(item, BaseException):
                    responder.record_unfinished("error")
                    raise _error_event(item)
                chunks = responder.on_delta(index, item, stream=True)
            except APIError as exc:
                yield shape.error_events(exc.body())
                return
            except Exception as exc:  # noqa: BLE001 - one request's failure stays its own
                log.exception("stream failed")
                yield shape.error_events(_error_event(exc).body())
                return
            if chunks:
                yield b"".join(chunks)
        yield b"".join(responder.tail())
    finally:
        stream.close()
        responder.record_unfinished()
        state.streams.discard(stream)


async def _collect(state, stream, responder: Responder) -> Response:
    try:
        async for index, item in stream.events():
            if isinstance(item, BaseException):
                responder.record_unfinished("error")
                raise _error_event(item)
            responder.on_delta(index, item, stream=False)
    finally:
        stream.close()
        responder.record_unfinished()
        state.streams.discard(stream)
    return JSONAnswer(responder.final())


async def until_disconnect(http: HTTPRequest, work) -> Response:
    """Run ``work`` unless the client disconnects first; then cancel it (which aborts its requests)."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_wait_disconnect(http))
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, watch):
            if not t.done():
                t.cancel()
    if task in done:
        return task.result()
    log.info("client disconnected; request aborted")
    return Response(status_code=499)


async def _wait_disconnect(http: HTTPRequest) -> None:
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            return
