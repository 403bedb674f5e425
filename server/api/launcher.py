"""uvicorn with a graceful drain: the first SIGTERM/SIGINT drains (see app.drain), a second one exits now.

uvicorn's own handler closes the listening socket at once (new clients see "connection refused", not a
503) and re-raises the signal after shutdown (exit status 143). Here the socket stays open during the
drain so new requests get 503 + Retry-After, and the process exits 0 once the drain is over.
"""
from __future__ import annotations

import asyncio
import logging

import uvicorn

from unmask.server.api.app import drain
from unmask.server.api.state import AppState

log = logging.getLogger("unmask.api")


class DrainingServer(uvicorn.Server):
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
        if self._loop is None or self._drain_task is not None or self.state.engine is None:
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
