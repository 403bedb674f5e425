"""Run a Job on the engine and answer: a StreamingResponse of SSE events, or one JSON body.

Admission happens before the response starts, so refusals keep their HTTP status. A client that goes
away aborts the request: for streams Starlette cancels the body iterator when it sees the disconnect;
for plain requests :func:`until_disconnect` watches the connection next to the work (vLLM's
``with_cancellation``). Either way ``GenerationRun.close()`` aborts the engine requests, which free their
slots at the next step boundary.
"""
from __future__ import annotations

import asyncio
import logging

from starlette.requests import Request as HTTPRequest
from starlette.responses import Response, StreamingResponse

from unmask.server.api import sse
from unmask.server.api.builder import DenoiseInfo, ResponseBuilder, StreamFlags
from unmask.server.api.choice import ChoiceState
from unmask.server.api.errors import APIError
from unmask.server.api.jobs import Job
from unmask.server.api.jsonio import JSONAnswer
from unmask.server.api.run import GenerationRun
from unmask.server.api.state import AppState
from unmask.server.engine.async_engine import AsyncEngine

log = logging.getLogger("unmask.api")
HEARTBEAT_S = 15.0


def _builder(state: AppState, job: Job) -> ResponseBuilder:
    body, n = job.body, job.n
    opts = body.stream_options
    flags = StreamFlags(include_usage=bool(opts and opts.include_usage),
                        continuous_usage=bool(opts and opts.continuous_usage_stats), denoise=bool(opts and opts.denoise))
    budget = job.plan.max_tokens if job.plan else 0
    choices = [ChoiceState(i, state.tokenizer, budget, body.stop_list(), body.include_stop_str_in_output,
                           body.skip_special_tokens) for i in range(len(job.prompts) * n)]
    denoise = None
    if flags.denoise and job.plan is not None:
        denoise = DenoiseInfo(state.engine.engine.model_config.mask_token_id, job.plan.params.block_length,
                              state.strings)
    return ResponseBuilder(job.shape, choices, [len(p) for p in job.prompts for _ in range(n)],
                           [e for e in job.echo for _ in range(n)], flags, state.metrics, job.t0, n, denoise)


async def execute(state: AppState, engine: AsyncEngine, job: Job, http: HTTPRequest) -> Response:
    builder = _builder(state, job)
    if job.plan is None:  # echo with max_tokens=0: the prompt is the whole answer
        for c in builder.choices:
            c.fail("length")
        return _echo_only(job, builder)
    run = GenerationRun(engine, job.requests(state.new_ids(len(builder.choices))), state.settings.retry_after)
    try:
        await run.start()
    except APIError as exc:
        if exc.status == 503:
            state.metrics.rejections.inc()
        raise
    state.metrics.request_started(job.n, job.plan.max_tokens)
    state.runs.add(run)
    if job.body.stream:
        return StreamingResponse(_stream(state, run, builder), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)
    return await until_disconnect(http, _collect(state, run, builder))


def _echo_only(job: Job, builder: ResponseBuilder) -> Response:
    if not job.body.stream:
        return JSONAnswer(builder.final())

    async def events():
        for i, c in enumerate(builder.choices):
            yield sse.data(job.shape.chunk(i, builder.echo[i], c.finish_reason))
        yield b"".join(builder.tail())
    return StreamingResponse(events(), media_type=sse.MEDIA_TYPE, headers=sse.HEADERS)


async def _stream(state: AppState, run: GenerationRun, builder: ResponseBuilder):
    try:
        async for index, item in run.events(heartbeat=HEARTBEAT_S):
            if item is None:  # nothing for a while (queued, long step): keep proxies from timing out
                yield sse.comment()
                continue
            try:
                chunks = builder.on_item(index, item, stream=True)
            except APIError as exc:
                yield sse.error(exc.body()) + sse.DONE
                return
            except Exception as exc:  # noqa: BLE001 - one request's failure (e.g. detokenizer) stays its own
                log.exception("stream failed")
                yield sse.error(APIError(500, f"internal error: {type(exc).__name__}", None,
                                         "internal_error").body()) + sse.DONE
                return
            if chunks:
                yield b"".join(chunks)
            for i in builder.finished_choices:
                run.finish_choice(i)
            if builder.done:
                break
        yield b"".join(builder.tail())
    finally:
        run.close()
        builder.record_unfinished()
        state.runs.discard(run)


async def _collect(state: AppState, run: GenerationRun, builder: ResponseBuilder) -> Response:
    try:
        async for index, item in run.events():
            builder.on_item(index, item, stream=False)
            for i in builder.finished_choices:
                run.finish_choice(i)
            if builder.done:
                break
    finally:
        run.close()
        builder.record_unfinished()
        state.runs.discard(run)
    return JSONAnswer(builder.final())


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
