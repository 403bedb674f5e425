"""Ray Serve deployment options from ``unmask serve`` flags (no Ray import here, so configs and manifests can be
checked without the [ray] extra). See ray_serve.py for what each option means for a replica."""
from __future__ import annotations

import argparse
from typing import Any, Mapping

DEPLOYMENT_NAME = "unmask"
APP_NAME = "unmask"
IMPORT_PATH = "unmask.server.deploy.ray_serve:build_app"
LIGHT_ROUTE_HEADROOM = 8
"""Requests above the engine's cap one replica still accepts: /health, /metrics, /tokenize, 503 answers."""
ABORT_GRACE_S = 5.0
"""Seconds aborted streams get to send their last events (app.drain's grace)."""
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
    """GPUs Ray reserves for one replica: the flag, else one per tensor-parallel rank on CUDA (the replica spawns
    its ranks as local processes, so they share its node), else none."""
    if ns.num_gpus_per_replica is not None:
        return ns.num_gpus_per_replica
    ranks = float(getattr(ns, "tensor_parallel_size", 1))
    if ns.device.startswith("cuda"):
        return ranks
    if ns.device == "auto":  # GPUs if the cluster this runs on has any
        try:
            import ray
        except ImportError:
            return 0.0
        return ranks if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0 else 0.0
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
