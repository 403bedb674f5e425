"""The app and its lifecycle: shared state, ``create_app`` (middleware, error handlers, lifespan), the
graceful drain and the uvicorn server that runs it.

The lifespan loads the engine in a worker thread *after* the server is listening, so ``/health``
answers 503 while the model loads (and a SIGTERM during loading still exits cleanly). ``drain()`` is
the graceful-shutdown half: refuse new work with 503, let in-flight requests finish up to a timeout,
then abort the rest (their streams end with ``finish_reason: "abort"``). :class:`DrainingServer` wires
it to signals: the first SIGTERM/SIGINT drains, a second one exits now. (uvicorn's own handler closes
the listening socket at once, so new clients would see "connection refused" rather than a 503, and
re-raises the signal after shutdown, exit status 143; here the socket stays open during the drain and
the process exits 0.)
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from typing import Callable

import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles

from unmask.server.api.errors import APIError, install_handlers, unavailable
from unmask.server.api.metrics import Metrics
from unmask.server.api.middleware import GuardMiddleware
from unmask.server.api.routes import STATIC, router
from unmask.server.api.settings import ServerSettings
from unmask.server.api.streaming import TokenStrings
from unmask.server.engine.client import ChoiceStream, EngineClient
from unmask.server.engine.generation_config import GenerationDefaults, with_server_defaults

log = logging.getLogger("unmask.api")


class AppState:
    """What the routes share: the engine client (once loaded), settings, metrics, in-flight streams, and
    the server's phase (loading → ready → draining; or failed / engine dead)."""

    def __init__(self, settings: ServerSettings, max_num_seqs: int):
        self.settings = settings
        self.client: EngineClient | None = None
        self.load_error: str | None = None
        self.draining = False
        self.streams: set[ChoiceStream] = set()
        self.metrics = Metrics(settings.served_model_name, lambda: self.client, max_num_seqs)
        self.strings: TokenStrings | None = None
        self.defaults = GenerationDefaults()
        """Generation defaults in force: the engine's (override > checkpoint) over this server's."""
        self._ids = itertools.count()

    def set_client(self, client: EngineClient) -> None:
        self.client = client
        self.strings = TokenStrings(client.tokenizer)
        self.defaults = with_server_defaults(client.model_info.generation_defaults,
                                             {"preset": self.settings.default_preset})
        log.info("generation defaults: %s", self.defaults.describe())

    def health(self) -> tuple[bool, str]:
        """(ready, reason): ready only when the engine is loaded, alive and the server is not draining."""
        if self.load_error is not None:
            return False, f"model failed to load: {self.load_error}"
        if self.client is None:
            return False, "model is loading"
        dead = self.client.health()
        if dead is not None:
            return False, dead
        if self.draining:
            return False, "server is shutting down"
        return True, "ok"

    def ready_client(self) -> EngineClient:
        """The engine client, or 503 + Retry-After (loading, shutting down, or engine dead)."""
        ok, reason = self.health()
        if not ok:
            code = "shutting_down" if self.draining else ("engine_dead" if self.client is not None else "not_ready")
            self.metrics.rejections.inc()
            raise unavailable(f"the server cannot take requests now: {reason}", code, self.settings.retry_after)
        return self.client

    def check_model(self, model: str | None) -> None:
        """404 unless ``model`` is absent/empty or a served name (vLLM: model is optional)."""
        if model and model != self.settings.served_model_name and model not in self.settings.served_model_aliases:
            raise APIError(404, f"The model `{model}` does not exist. This server serves "
                                f"`{self.settings.served_model_name}`.", "model", "model_not_found")

    def new_ids(self, count: int) -> list[str]:
        """Engine request ids: unique even when clients reuse an X-Request-Id."""
        base = f"{uuid.uuid4().hex[:12]}{next(self._ids)}"
        return [f"{base}-{i}" for i in range(count)]


def create_app(settings: ServerSettings, client_factory: Callable[[], EngineClient], max_num_seqs: int,
               on_load_error: Callable[[BaseException], None] | None = None,
               allowed_origins: tuple[str, ...] = ("*",)) -> FastAPI:
    """``client_factory`` builds (but does not start) the engine client; it runs in a worker thread."""
    state = AppState(settings, max_num_seqs)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(_load(state, client_factory, on_load_error))
        try:
            yield
        finally:
            task.cancel()
            if state.client is not None:
                await asyncio.to_thread(state.client.stop)

    app = FastAPI(title="unmask", version=_version(), lifespan=lifespan)
    app.state.unmask = state
    app.include_router(router)
    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    install_handlers(app)
    app.add_middleware(GuardMiddleware, settings=settings)
    app.add_middleware(CORSMiddleware, allow_origins=list(allowed_origins), allow_methods=["*"],
                       allow_headers=["*"], expose_headers=["x-request-id", "retry-after"])
    return app


def _version() -> str:
    import unmask
    return unmask.__version__


async def _load(state: AppState, factory: Callable[[], EngineClient], on_error) -> None:
    t0 = time.monotonic()
    try:
        client = await asyncio.to_thread(factory)
        client.start()
    except Exception as exc:  # noqa: BLE001 - reported through /health and the launcher
        log.exception("model failed to load")
        state.load_error = f"{type(exc).__name__}: {exc}"
        if on_error is not None:
            on_error(exc)
        return
    state.set_client(client)
    log.info("model ready in %.1f s; serving %s", time.monotonic() - t0, state.settings.served_model_name)


async def drain(state: AppState, timeout: float, grace: float = 5.0) -> bool:
    """Stop taking requests (503), wait for in-flight ones up to ``timeout`` s, then abort the rest and
    give their streams ``grace`` s to send their last events. True if everything finished in time."""
    state.draining = True
    deadline = time.monotonic() + timeout
    while state.streams and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    clean = not state.streams
    if not clean:
        log.warning("drain timeout (%.1f s): aborting %d in-flight request(s)", timeout, len(state.streams))
        for stream in list(state.streams):
            stream.abort_in_engine()
        deadline = time.monotonic() + grace
        while state.streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    return clean


class DrainingServer(uvicorn.Server):
    """uvicorn with the graceful drain above on the first signal (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, state: AppState, drain_timeout: float):
        super().__init__(config)
        self.state, self.drain_timeout = state, drain_timeout
        self.exit_code = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task | None = None

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig, frame) -> None:
        """Signal handler (main thread). Deliberately does not record the signal for re-raising."""
        if self._loop is None or self._drain_task is not None or self.state.client is None:
            if self._drain_task is not None:
                log.warning("second signal: exiting without waiting for the drain")
                self.force_exit = True
            self.should_exit = True
            return
        self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        if self._drain_task is None:
            log.info("shutdown requested: draining in-flight requests (up to %.1f s)", self.drain_timeout)
            self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            await drain(self.state, self.drain_timeout)
        finally:
            self.should_exit = True

    def fail(self, exc: BaseException) -> None:
        """The model failed to load: stop serving with a non-zero exit status."""
        self.exit_code = 1
        self.should_exit = True

    def exit_after_fault(self, reason: str, linger_s: float = 1.0, limit_s: float = 10.0) -> None:
        """The engine died for good (e.g. a tensor-parallel rank failed; any thread may call this): keep answering
        /health (503, with the reason) for ``linger_s`` and until the failed streams have sent their errors (at
        most ``limit_s``), then exit with status 1."""
        log.error("engine failed: %s; exiting", reason)

        async def wait_then_exit() -> None:
            deadline = time.monotonic() + limit_s
            await asyncio.sleep(linger_s)
            while self.state.streams and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            self.exit_code = 1
            self.should_exit = True

        if self._loop is None:
            self.exit_code, self.should_exit = 1, True
        else:
            self._loop.call_soon_threadsafe(lambda: asyncio.ensure_future(wait_then_exit()))
