"""AsyncEngine: the :class:`EngineClient` for one process and one device. The engine loop runs on a
background thread; callers on event loops submit requests and read their outputs.

``submit()`` validates and admits all of a request's choices together on the caller's side (errors surface
before any byte is streamed; a refusal queues nothing), hands them to the loop through a thread-safe inbox
and returns a :class:`ChoiceStream`. Each step's outputs reach a stream with one wake-up per event loop;
the stream runs the :class:`OutputProcessor` of each choice and aborts a choice in the engine as soon as its
caller has all it wants (budget, stop string) or goes away. If the loop dies or a tensor-parallel rank fails
(``workers.RankGroup``), every pending choice receives an :class:`EngineDeadError`, ``health()`` reports why.
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
from unmask.server.engine.client import (EngineDeadError, EngineSnapshot, ModelInfo, QueueFullError, Request,
                                         RequestRejected, StreamStalledError)
from unmask.server.engine.engine import Engine
from unmask.server.engine.output_processor import Delta, OutputProcessor
from unmask.server.engine.stats import ITERATION_TOKEN_BUCKETS

log = logging.getLogger("unmask.async_engine")

GIL_SWITCH_INTERVAL_S = 0.0005
"""sys.setswitchinterval applied when the loop starts (see AsyncEngine.start)."""

Item = tuple[int, StepOutput | BaseException]
Event = Delta | BaseException | None


def _push_all(items: list[tuple["ChoiceStream", Item]]) -> None:
    for stream, item in items:
        stream.push(item)


class AsyncEngine:
    """Implements :class:`~unmask.server.engine.client.EngineClient` over an :class:`Engine`."""

    def __init__(self, engine: Engine, max_queue: int | None = None):
        self.engine = engine
        self.max_queue = max_queue
        self.tokenizer = engine.tokenizer
        self.model_info: ModelInfo = engine.model_info
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._pending_adds = 0  # requests handed to the inbox and not yet queued in the scheduler
        self._routes: dict[str, tuple[asyncio.AbstractEventLoop, ChoiceStream, int]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dead_reason: str | None = None
        self.on_dead: list = []  # callables run once with the reason when the engine dies

    # ----- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        # The loop thread alternates short torch ops (GIL released) with Python between them. While the
        # event-loop thread holds the GIL (streaming responses), every re-acquisition can wait a whole
        # switch interval (5 ms by default): a shorter one keeps the engine from stalling behind the
        # HTTP side. Process-wide; a smaller interval already set is kept.
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        if self.engine.ranks is not None:
            self.engine.ranks.listeners.append(self._die)
        self._thread = threading.Thread(target=self._loop, name="unmask-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.engine.close()

    def health(self) -> str | None:
        if self.dead_reason is not None:
            return f"engine died: {self.dead_reason}"
        if self._thread is not None and not self._thread.is_alive() and not self._stop.is_set():
            return "engine died: loop stopped"
        return None

    def snapshot(self) -> EngineSnapshot:
        eng, kv = self.engine, self.engine.kv
        usage = (kv.num_pages - kv.num_free) / kv.num_pages if kv is not None and kv.num_pages else 0.0
        stats = eng.stats
        counters = {name: value for name, value in vars(stats).items() if isinstance(value, int)}
        bounds = (*ITERATION_TOKEN_BUCKETS, float("inf"))
        return EngineSnapshot(running=len(eng.scheduler.running), waiting=self._num_waiting(), kv_cache_usage=usage,
                              dead=self.health() is not None, counters=counters,
                              iteration_tokens=tuple(zip(bounds, list(stats.iteration_tokens))))

    def _num_waiting(self, extra: int = 0) -> int:
        """Requests that would wait with ``extra`` more: those queued beyond the free running slots (the
        rest are admitted at the next step)."""
        sched = self.engine.scheduler
        free = max(sched.config.max_num_seqs - len(sched.running), 0)
        return max(len(sched.waiting) + self._pending_adds + extra - free, 0)

    # ----- requests --------------------------------------------------------------------------------
    def validate(self, prompt_token_ids, params) -> None:
        self.engine.validate(Request("validate", tuple(prompt_token_ids), params))

    def submit(self, requests: list[Request], max_buffered: int | None = None) -> "ChoiceStream":
        if self.health() is not None:
            raise EngineDeadError(self.health())
        seen: set[tuple] = set()
        for r in requests:  # once per prompt: the n choices of a prompt share its tuple and settings
            key = (id(r.prompt_token_ids), r.params.canvas_length, r.params.cache)
            if key not in seen:
                seen.add(key)
                self.engine.validate(r)
        limit, slots = self.max_queue, self.engine.scheduler.config.max_num_seqs
        if limit is not None and len(requests) > slots + limit:
            raise RequestRejected(f"this request has {len(requests)} choices; at most {slots} run and {limit} wait "
                                  f"at once (--max-num-seqs, --max-queue), so it can never be admitted", "n",
                                  "too_many_choices")
        loop = asyncio.get_running_loop()
        stream = ChoiceStream(self, requests, max_buffered)
        with self._lock:
            if any(r.request_id in self._routes for r in requests):
                raise RequestRejected("a request id is already in use", None, "duplicate_id")
            if limit is not None and self._num_waiting(len(requests)) > limit:
                raise QueueFullError(f"{self._num_waiting()} requests are already waiting; {len(requests)} more "
                                     f"would exceed max_queue={limit}")
            for i, r in enumerate(requests):
                self._routes[r.request_id] = (loop, stream, i)
            self._pending_adds += len(requests)
        self._inbox.put(("add", requests))
        self._wake.set()
        return stream

    def abort(self, request_id: str) -> None:
        """Abort a request (no-op if unknown or finished); its slot frees at the next step boundary."""
        self._inbox.put(("abort", request_id))
        self._wake.set()

    def _release(self, request_id: str) -> None:
        with self._lock:
            self._routes.pop(request_id, None)

    # ----- loop thread -----------------------------------------------------------------------------
    def _deliver_all(self, items: list[tuple[str, StepOutput | BaseException]]) -> None:
        """Hand (request id, output) pairs to their streams: one wake-up per event loop, not per output
        (a step's outputs arrive together). Unknown ids (finished or gone) are dropped."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[ChoiceStream, Item]]] = {}
        with self._lock:
            for request_id, out in items:
                route = self._routes.get(request_id)
                if route is not None:
                    by_loop.setdefault(route[0], []).append((route[1], (route[2], out)))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_push_all, batch)
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
                    self.engine.enqueue(item)
                except ValueError as exc:  # validated on submit; only a race on ids lands here
                    self._deliver_all([(r.request_id, exc) for r in item])
                finally:
                    with self._lock:
                        self._pending_adds -= len(item)
            else:
                out = self.engine.abort(item)
                if out is not None:
                    self._deliver_all([(item, out)])

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
            self._die(f"{type(exc).__name__}: {exc}")

    def _die(self, reason: str) -> None:
        """Mark the engine dead (once): fail every routed choice with EngineDeadError, run ``on_dead``."""
        with self._lock:
            if self.dead_reason is not None:
                return
            self.dead_reason = reason
            ids = list(self._routes)
        self._deliver_all([(rid, EngineDeadError(reason)) for rid in ids])
        for callback in list(self.on_dead):
            callback(reason)


class ChoiceStream:
    """The live choices of one submitted request (see :class:`~unmask.server.engine.client.ChoiceStream`)."""

    def __init__(self, engine: AsyncEngine, requests: list[Request], max_buffered: int | None = None):
        self.engine, self.requests, self.max_buffered = engine, requests, max_buffered
        self._queue: asyncio.Queue = asyncio.Queue()
        self.stalled = False
        """The caller stopped reading and the stream gave up (see :meth:`push`)."""
        self.processors = [OutputProcessor(engine.tokenizer, r.params, r.request_id, r.prompt_token_ids)
                           for r in requests]
        self._open = [True] * len(requests)  # still routed to this stream

    @property
    def finished(self) -> bool:
        return not any(self._open)

    def push(self, item: Item) -> None:
        """Queue one engine output (event-loop thread). Past ``max_buffered`` unread outputs the caller has
        stopped reading: every choice is aborted in the engine and the reader gets StreamStalledError."""
        if self.stalled:
            return
        if self.max_buffered is not None and self._queue.qsize() >= self.max_buffered:
            self.stalled = True
            log.warning("a stream stopped reading (%d outputs unread): aborting its request", self._queue.qsize())
            self.close()
            while not self._queue.empty():  # free what the reader will never take
                self._queue.get_nowait()
            self._queue.put_nowait((item[0], StreamStalledError(f"more than {self.max_buffered} outputs unread")))
            return
        self._queue.put_nowait(item)

    async def events(self, heartbeat: float | None = None) -> AsyncIterator[tuple[int | None, Event]]:
        """(index, Delta | exception) until every choice has finished; with ``heartbeat``, also (None, None)
        whenever that many seconds pass without output (a timer, not a timeout per get, so no output can
        be lost and the hot path stays one queue get)."""
        loop, timer, last = asyncio.get_running_loop(), None, time.monotonic()

        def tick():
            nonlocal timer
            if time.monotonic() - last >= heartbeat:
                self._queue.put_nowait((None, None))
            timer = loop.call_later(heartbeat, tick)

        if heartbeat is not None:
            timer = loop.call_later(heartbeat, tick)
        try:
            while not self.finished or self.stalled:
                index, item = await self._queue.get()
                if isinstance(item, StreamStalledError):
                    yield index, item
                    return
                last = time.monotonic()
                if index is None:
                    yield None, None
                    continue
                if not self._open[index]:
                    continue  # output that raced with an early finish
                if isinstance(item, BaseException):
                    self._end(index, abort=False)
                    self.processors[index].fail("error")
                    yield index, item
                    continue
                try:
                    delta = self.processors[index].process(item)
                except Exception as exc:  # noqa: BLE001 - e.g. a detokenizer bug: fails this choice only
                    log.exception("output processing failed for %s", self.requests[index].request_id)
                    self._end(index, abort=not item.finished)
                    self.processors[index].fail("error")
                    yield index, exc
                    continue
                if delta.finished:
                    self._end(index, abort=not item.finished)
                yield index, delta
        finally:
            if timer is not None:
                timer.cancel()

    def _end(self, index: int, abort: bool) -> None:
        self._open[index] = False
        rid = self.requests[index].request_id
        self.engine._release(rid)
        if abort:  # the caller has all it wants: free the engine slot
            self.engine.abort(rid)

    def close(self) -> None:
        """Abort every unfinished choice in the engine. Never awaits."""
        for i, is_open in enumerate(self._open):
            if is_open:
                self._end(i, abort=True)
                self.processors[i].fail("abort")

    def abort_in_engine(self) -> None:
        """Shutdown: abort in the engine; the choices then end with finish_reason 'abort' on this stream."""
        for i, is_open in enumerate(self._open):
            if is_open:
                self.engine.abort(self.requests[i].request_id)
