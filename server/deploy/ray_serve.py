"""The unmask server as a Ray Serve deployment: each replica runs the whole FastAPI app of ``unmask serve``
(``create_app``: every route, SSE and denoise streams, /metrics, the playground) around its own engine,
and Serve's HTTP proxy routes requests between replicas.

    serve run deploy/ray/serve_config.yaml                 # Ray's CLI; import path options.IMPORT_PATH
    unmask serve --replicas 2                              # the same application, started by unmask

``build_app(args)`` is a Serve application builder: ``args`` holds ``unmask serve`` flags, underscored
(``{"model": ..., "max_num_seqs": 32, "replicas": 2, ...}``) and parsed by the real CLI parser, so a config
file means what the same flags mean on the command line. What the flags set on the deployment:

- resources: ``num_cpus``/``num_gpus`` per replica (``--num-cpus-per-replica``, ``--num-gpus-per-replica``);
- ``max_ongoing_requests``: the engine's own cap (``--max-num-seqs`` running + ``--max-queue`` waiting) plus
  headroom for light routes (/health, /metrics), so overload reaches the engine and is answered with its
  OpenAI-shaped 503 + Retry-After; ``--max-ongoing-requests`` overrides it. With ``--max-queue``, each
  proxy also holds at most that many requests waiting for a replica (``max_queued_requests``); more get
  Serve's 503, which proxy.py gives the same OpenAI shape and Retry-After;
- ``graceful_shutdown_timeout_s``: ``--drain-timeout`` plus the grace the server gives aborted streams;
- ``--replicas N`` (fixed), or autoscaling on ongoing requests with ``--max-replicas`` (``--min-replicas``,
  ``--target-ongoing-requests``, default a full batch per replica).

A replica is ready (gets traffic) only once its model has loaded; ``check_health`` fails when the model
failed to load or the engine loop died, so Serve replaces the replica.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from typing import Any, Mapping

from ray import serve

from unmask.server.deploy.options import ABORT_GRACE_S, deployment_options, serve_namespace
from unmask.server.deploy.ray_metrics import RayMetricsMirror

log = logging.getLogger("unmask.deploy")

LOAD_TIMEOUT_S = 1800.0


def build_replica_app(ns: argparse.Namespace):
    """The app of one replica: ``unmask serve``'s app, whose startup also waits for the model and starts
    the Ray metrics export, and whose shutdown aborts what the drain left (streams end with "abort")."""
    from unmask.server.api.app import create_app, drain
    from unmask.server.serve_args import build_configs

    engine_config, settings = build_configs(ns)

    def factory():
        from unmask.server.engine.async_engine import AsyncEngine
        from unmask.server.engine.engine import Engine
        return AsyncEngine(Engine.from_config(engine_config), max_queue=ns.max_queue)

    app = create_app(settings, factory, ns.max_num_seqs, None, tuple(ns.allowed_origins))
    state, inner = app.state.unmask, app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a):
        async with inner(a) as value:
            await _wait_loaded(state, LOAD_TIMEOUT_S)
            mirror = RayMetricsMirror.for_replica(getattr(state.metrics, "registry", None))
            try:
                yield value
            finally:
                if mirror is not None:
                    mirror.stop()
                await drain(state, 0.0, grace=ABORT_GRACE_S)

    app.router.lifespan_context = lifespan
    return app


async def _wait_loaded(state, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while state.client is None and state.load_error is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"model not loaded after {timeout:.0f} s")
        await asyncio.sleep(0.05)
    if state.load_error is not None:
        raise RuntimeError(f"model failed to load: {state.load_error}")


class UnmaskReplica:
    """One replica. Serve builds its app (``build_replica_app``) inside the replica, after ``__init__``."""

    def _unmask_state(self):
        return self.app.state.unmask  # ASGIAppReplicaWrapper.app: the app built for this replica

    async def check_health(self) -> None:
        """Raise (Serve replaces the replica) when the engine is dead or the model failed to load;
        loading and draining are healthy states of a live replica."""
        state = self._unmask_state()
        ok, reason = state.health()
        if not ok and (state.load_error is not None or (state.client is not None and not state.draining)):
            raise RuntimeError(reason)

    async def replica_info(self) -> dict[str, Any]:
        """This replica's Ray actor name (namespace ``serve``), Serve id and pid: for operators and tests."""
        import os
        rid = serve.get_replica_context().replica_id
        return {"actor_name": rid.to_full_id_str(), "replica": rid.unique_id, "pid": os.getpid()}

    async def sync_metrics(self) -> int:
        """Export the metrics now (tests, or a scrape that cannot wait for the next period)."""
        mirror = RayMetricsMirror.current
        return mirror.sync() if mirror is not None else 0


def _ingress(ns: argparse.Namespace):
    def build():  # evaluated in the replica (Serve's ingress builder function)
        return build_replica_app(ns)
    return serve.ingress(build)(UnmaskReplica)


def build_app(args: Mapping[str, Any] | argparse.Namespace | None = None) -> serve.Application:
    """Serve application builder (``import_path: unmask.server.deploy.ray_serve:build_app``)."""
    ns = serve_namespace(args)
    opts = deployment_options(ns)
    return serve.deployment(_ingress(ns), **opts).bind()
