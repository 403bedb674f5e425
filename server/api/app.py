"""create_app: the FastAPI app, its middleware, error handlers and lifespan.

The lifespan loads the engine in a worker thread *after* the server is listening, so ``/health``
answers 503 while the model loads (and a SIGTERM during loading still exits cleanly). ``drain()`` is
the graceful-shutdown half: refuse new work with 503, let in-flight requests finish up to a timeout,
then abort the rest (their streams end with ``finish_reason: "abort"``).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Callable

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles

from unmask.server.api.errors import install_handlers
from unmask.server.api.middleware import GuardMiddleware
from unmask.server.api.routes import STATIC, router
from unmask.server.api.settings import ServerSettings
from unmask.server.api.state import AppState
from unmask.server.engine.async_engine import AsyncEngine

log = logging.getLogger("unmask.api")


def create_app(settings: ServerSettings, engine_factory: Callable[[], AsyncEngine], max_num_seqs: int,
               on_load_error: Callable[[BaseException], None] | None = None,
               allowed_origins: tuple[str, ...] = ("*",)) -> FastAPI:
    """``engine_factory`` builds (but does not start) the AsyncEngine; it runs in a worker thread."""
    state = AppState(settings, max_num_seqs)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(_load(state, engine_factory, on_load_error))
        try:
            yield
        finally:
            task.cancel()
            if state.engine is not None:
                await asyncio.to_thread(state.engine.stop)

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


async def _load(state: AppState, factory: Callable[[], AsyncEngine], on_error) -> None:
    t0 = time.monotonic()
    try:
        engine = await asyncio.to_thread(factory)
        engine.start()
    except Exception as exc:  # noqa: BLE001 - reported through /health and the launcher
        log.exception("model failed to load")
        state.load_error = f"{type(exc).__name__}: {exc}"
        if on_error is not None:
            on_error(exc)
        return
    state.set_engine(engine)
    log.info("model ready in %.1f s; serving %s", time.monotonic() - t0, state.settings.served_model_name)


async def drain(state: AppState, timeout: float, grace: float = 5.0) -> bool:
    """Stop taking requests (503), wait for in-flight ones up to ``timeout`` s, then abort the rest and
    give their streams ``grace`` s to send their last events. True if everything finished in time."""
    state.draining = True
    if state.engine is not None:
        state.engine.accepting = False
    deadline = time.monotonic() + timeout
    while state.runs and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    clean = not state.runs
    if not clean:
        log.warning("drain timeout (%.1f s): aborting %d in-flight request(s)", timeout, len(state.runs))
        for run in list(state.runs):
            run.abort_in_engine()
        deadline = time.monotonic() + grace
        while state.runs and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    return clean
