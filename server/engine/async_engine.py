"""AsyncEngine: the engine loop on a background thread, with per-request asyncio queues.

``generate()`` validates on the caller's side (errors surface before any byte is streamed), hands the
request to the loop through a thread-safe inbox and yields StepOutputs as they come. Closing the
iterator early (client gone) aborts the request, which frees its slot at the next step boundary.
If the loop itself dies, every pending request receives an error output and ``is_dead`` turns true.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import sys
import threading
import time
from typing import AsyncIterator

from unmask.server.engine.batch import StepOutput
from unmask.server.engine.engine import Engine
from unmask.server.engine.sequence import Request

log = logging.getLogger("unmask.async_engine")

GIL_SWITCH_INTERVAL_S = 0.0005
"""sys.setswitchinterval applied when the loop starts (see AsyncEngine.start)."""


class EngineDeadError(RuntimeError):
    """The engine loop stopped; no request can be served."""


class QueueFullError(RuntimeError):
    """More requests are waiting than ``max_queue`` allows."""


def _put_all(items: list[tuple[asyncio.Queue, StepOutput | BaseException]]) -> None:
    for q, out in items:
        q.put_nowait(out)


class AsyncEngine:
    def __init__(self, engine: Engine, max_queue: int | None = None):
        self.engine = engine
        self.max_queue = max_queue
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dead_reason: str | None = None
        self.accepting = True

    # ----- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        # The loop thread alternates short torch ops (GIL released) with Python between them. While the
        # event-loop thread holds the GIL (streaming responses), every re-acquisition can wait a whole
        # switch interval (5 ms by default): a shorter one keeps the engine from stalling behind the
        # HTTP side. Process-wide; a smaller interval already set is kept.
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        self._thread = threading.Thread(target=self._loop, name="unmask-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def is_dead(self) -> bool:
        return self.dead_reason is not None or (self._thread is not None and not self._thread.is_alive()
                                                and not self._stop.is_set())

    @property
    def num_unfinished(self) -> int:
        with self._lock:
            return len(self._queues)

    def num_running(self) -> int:
        return len(self.engine.scheduler.running)

    def num_waiting(self) -> int:
        return len(self.engine.scheduler.waiting) + self._inbox.qsize()

    # ----- requests --------------------------------------------------------------------------------
    async def generate(self, request: Request) -> AsyncIterator[StepOutput]:
        """Yield the request's StepOutputs until the finished one. Raises ValueError (bad request),
        QueueFullError or EngineDeadError before anything is yielded."""
        if self.is_dead:
            raise EngineDeadError(self.dead_reason or "the engine loop is not running")
        self.engine.validate(request)
        loop, q = asyncio.get_running_loop(), asyncio.Queue()
        with self._lock:
            if request.request_id in self._queues:
                raise ValueError(f"request id {request.request_id!r} is already in use")
            limit = self.max_queue
            if limit is not None and self.num_waiting() >= limit:
                raise QueueFullError(f"{self.num_waiting()} requests are already waiting (max_queue={limit})")
            self._queues[request.request_id] = (loop, q)
        self._inbox.put(("add", request))
        self._wake.set()
        finished = False
        try:
            while True:
                out = await q.get()
                if isinstance(out, BaseException):
                    finished = True
                    raise out
                finished = out.finished
                yield out
                if finished:
                    return
        finally:
            if not finished:
                self.abort(request.request_id)
            with self._lock:
                self._queues.pop(request.request_id, None)

    def abort(self, request_id: str) -> None:
        """Abort a request (no-op if unknown or finished); its slot frees at the next step boundary."""
        self._inbox.put(("abort", request_id))
        self._wake.set()

    # ----- loop thread -----------------------------------------------------------------------------
    def _deliver(self, out: StepOutput | BaseException, request_id: str) -> None:
        self._deliver_all([(request_id, out)])

    def _deliver_all(self, items: list[tuple[str, StepOutput | BaseException]]) -> None:
        """Hand (request id, output) pairs to their callers: one wake-up per event loop, not per output
        (a step's outputs arrive together). Unknown ids (finished or gone) are dropped."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, StepOutput | BaseException]]] = {}
        with self._lock:
            for request_id, out in items:
                target = self._queues.get(request_id)
                if target is not None:
                    by_loop.setdefault(target[0], []).append((target[1], out))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, batch)
            except RuntimeError:  # the caller's event loop is closed
                pass

    def _drain_inbox(self) -> None:
        while True:
            try:
                kind, item = self._inbox.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                try:
                    self.engine.add_request(item)
                except ValueError as exc:
                    self._deliver(exc, item.request_id)
            else:
                out = self.engine.abort(item)
                if out is not None:
                    self._deliver(out, item)

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._drain_inbox()
                if not self.engine.has_unfinished():
                    self._wake.wait(0.05)
                    self._wake.clear()
                    continue
                self._deliver_all([(out.request_id, out) for out in self.engine.step()])
        except BaseException as exc:  # noqa: BLE001 - the loop must report any death
            log.exception("engine loop died")
            self.dead_reason = f"{type(exc).__name__}: {exc}"
            with self._lock:
                ids = list(self._queues)
            self._deliver_all([(rid, EngineDeadError(self.dead_reason)) for rid in ids])

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is unfinished (graceful drain); False on timeout."""
        deadline = time.monotonic() + timeout
        while self.num_unfinished and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.num_unfinished == 0
