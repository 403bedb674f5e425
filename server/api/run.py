"""GenerationRun: the engine side of one HTTP request (one engine Request per choice, run concurrently).

``start()`` admits every choice and raises an :class:`APIError` (400/503) before any byte is sent;
``events()`` yields ``(choice index, StepOutput | Exception)`` in arrival order; ``close()`` cancels the
choices still running, which aborts them in the engine (``AsyncEngine.generate`` aborts when its
iterator is closed early), so a slot is freed at the next step boundary. ``close()`` never awaits: it
is safe inside a cancelled task (client disconnect).
"""
from __future__ import annotations

import asyncio
import time

from unmask.server.api.errors import APIError, bad_request, unavailable
from unmask.server.engine.async_engine import AsyncEngine, EngineDeadError, QueueFullError
from unmask.server.engine.batch import StepOutput
from unmask.server.engine.sequence import Request


def admission_error(exc: BaseException, retry_after: int) -> APIError | None:
    """Map the AsyncEngine's refusals to HTTP answers (None: not an admission error)."""
    if isinstance(exc, QueueFullError):
        return unavailable(f"the request queue is full: {exc}", "queue_full", retry_after)
    if isinstance(exc, EngineDeadError):
        return unavailable(f"the engine is not running: {exc}", "engine_dead", retry_after)
    if isinstance(exc, ValueError):
        return bad_request(str(exc), None, "invalid_prompt")
    return None


class GenerationRun:
    def __init__(self, engine: AsyncEngine, requests: list[Request], retry_after: int = 1):
        self.engine, self.requests, self.retry_after = engine, requests, retry_after
        self._queue: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._early: list[tuple[int, StepOutput | BaseException]] = []

    async def start(self) -> None:
        """Hand every choice to the engine; raise APIError (and leave nothing running) if any is refused."""
        self._tasks = [asyncio.ensure_future(self._pump(i, r)) for i, r in enumerate(self.requests)]
        # One loop turn runs each pump up to its first wait: by then generate() has validated and queued
        # the request, or raised its refusal into our queue.
        await asyncio.sleep(0)
        refusal = None
        while not self._queue.empty():
            item = self._queue.get_nowait()
            err = admission_error(item[1], self.retry_after) if isinstance(item[1], BaseException) else None
            refusal = refusal or err
            self._early.append(item)
        if refusal is not None:
            self.close()
            raise refusal

    async def _pump(self, index: int, request: Request) -> None:
        try:
            async for out in self.engine.generate(request):
                self._queue.put_nowait((index, out))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported to the consumer as this choice's failure
            self._queue.put_nowait((index, exc))

    async def events(self, heartbeat: float | None = None):
        """Yield (index, StepOutput | Exception) until the consumer stops iterating; with ``heartbeat``,
        also (None, None) whenever that many seconds pass without output (a timer, not a timeout per
        get, so no output can be lost and the hot path stays one queue get)."""
        while self._early:
            yield self._early.pop(0)
        loop, timer, last = asyncio.get_running_loop(), None, time.monotonic()

        def tick():
            nonlocal timer
            if time.monotonic() - last >= heartbeat:
                self._queue.put_nowait((None, None))
            timer = loop.call_later(heartbeat, tick)

        if heartbeat is not None:
            timer = loop.call_later(heartbeat, tick)
        try:
            while True:
                item = await self._queue.get()
                last = time.monotonic()
                yield item
        finally:
            if timer is not None:
                timer.cancel()

    def finish_choice(self, index: int) -> None:
        """The client has all it wants from this choice (budget or stop string): abort it in the engine."""
        task = self._tasks[index]
        if not task.done():
            task.cancel()

    def close(self) -> None:
        """Cancel every choice still running (each aborts its engine request). Never awaits."""
        for task in self._tasks:
            if not task.done():
                task.cancel()

    def abort_in_engine(self) -> None:
        """Shutdown: abort the requests in the engine; their streams end with finish_reason 'abort'."""
        for req in self.requests:
            self.engine.abort(req.request_id)
