"""The unmask server as a Ray Serve deployment: each replica runs the whole FastAPI app of ``unmask serve``
(``create_app``: every route, SSE and denoise streams, /metrics, the playground) around its own engine,
and Serve's HTTP proxy routes requests between replicas.

    serve run deploy/ray/serve_config.yaml                 # Ray's CLI; import path IMPORT_PATH
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

from unmask.server.deploy.ray_metrics import RayMetricsMirror

log = logging.getLogger("unmask.deploy")

DEPLOYMENT_NAME = "unmask"
APP_NAME = "unmask"
IMPORT_PATH = "unmask.server.deploy.ray_serve:build_app"
LIGHT_ROUTE_HEADROOM = 8
"""Requests above the engine's cap one replica still accepts: /health, /metrics, /tokenize, 503 answers."""
ABORT_GRACE_S = 5.0
"""Seconds aborted streams get to send their last events (app.drain's grace)."""
LOAD_TIMEOUT_S = 1800.0
HEALTH_CHECK_PERIOD_S = 5.0


def serve_namespace(args: Mapping[str, Any] | argparse.Namespace | None) -> argparse.Namespace:
    """``unmask serve`` flags from a config's ``args`` mapping, through the CLI's own parser (types,
    defaults, validation). A Namespace (``unmask serve --replicas``) passes through."""
    if isinstance(args, argparse.Namespace):
        return args
    from unmask.server.cli import build_parser

    argv = ["serve"]
    for key, value in dict(args or {}).items():
        if key == "model":
            argv[1:1] = [] if value is None else [str(value)]
            continue
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed the reason
        raise ValueError(f"invalid unmask serve args {dict(args or {})}: {' '.join(argv)}") from exc


def gpus_per_replica(ns: argparse.Namespace) -> float:
    if ns.num_gpus_per_replica is not None:
        return ns.num_gpus_per_replica
    if ns.device.startswith("cuda"):
        return 1.0
    if ns.device == "auto":
        import ray
        return 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return 0.0


def deployment_options(ns: argparse.Namespace) -> dict[str, Any]:
    """Serve deployment options from the flags (see the module docstring)."""
    waiting = ns.max_queue if ns.max_queue is not None else ns.max_num_seqs
    opts: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": {"num_cpus": ns.num_cpus_per_replica, "num_gpus": gpus_per_replica(ns)},
        "max_ongoing_requests": ns.max_ongoing_requests or ns.max_num_seqs + waiting + LIGHT_ROUTE_HEADROOM,
        "graceful_shutdown_timeout_s": ns.drain_timeout + ABORT_GRACE_S,
        "graceful_shutdown_wait_loop_s": 0.5,
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        "health_check_timeout_s": 30.0,
    }
    if ns.max_queue is not None:  # requests waiting in each proxy for a replica; more get 503 + Retry-After
        opts["max_queued_requests"] = ns.max_queue
    if ns.max_replicas is not None:
        low = ns.min_replicas if ns.min_replicas is not None else 1
        if not 0 <= low <= ns.max_replicas:
            raise ValueError(f"--min-replicas {low} must be between 0 and --max-replicas {ns.max_replicas}")
        opts["autoscaling_config"] = {
            "min_replicas": low, "max_replicas": ns.max_replicas,
            "initial_replicas": min(max(ns.replicas or low, low), ns.max_replicas),
            "target_ongoing_requests": ns.target_ongoing_requests or float(ns.max_num_seqs)}
    else:
        opts["num_replicas"] = ns.replicas or 1
    return opts


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


def _engine_of(state):
    """The app's loaded engine (client), or None while loading."""
    return getattr(state, "client", None) or getattr(state, "engine", None)


async def _wait_loaded(state, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _engine_of(state) is None and state.load_error is None:
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
        if not ok and (state.load_error is not None or (_engine_of(state) is not None and not state.draining)):
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
