"""``unmask serve --replicas N``: the Ray Serve application of ray_serve.py on a Ray cluster, in the foreground.

``--ray-address local`` (the default) starts a private Ray cluster on this machine (``--ray-num-cpus``) and
stops it on exit; ``auto`` or an address joins a running cluster and leaves it (and Serve) running,
deleting only this application. Serve's HTTP proxy listens on ``--host``/``--port``. SIGTERM or SIGINT
deletes the application (each replica drains its in-flight requests, up to ``--drain-timeout``), stops
what this command started and exits 0; a second signal exits at once (still stopping a local cluster).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from unmask.server.deploy.options import ABORT_GRACE_S, APP_NAME
from unmask.server.deploy.proxy import CALLBACK_ENV, CALLBACK_PATH

log = logging.getLogger("unmask.deploy")


def _stop_on_signals(stop: threading.Event) -> None:
    def handler(signum, frame):
        if stop.is_set():
            log.warning("second signal: exiting without waiting for the drain")
            raise SystemExit(1)
        log.info("shutdown requested (%s): deleting the Serve application", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _bounded(fn, timeout: float) -> bool:
    """Run ``fn`` in a thread for at most ``timeout`` s (a lost Ray node must not hang the exit); True if
    it returned in time."""
    finished, ok = threading.Event(), []

    def target():
        try:
            fn()
            ok.append(True)
        except Exception:  # noqa: BLE001 - reported; the caller still stops the cluster
            log.exception("Ray Serve shutdown step failed")
        finally:
            finished.set()

    threading.Thread(target=target, daemon=True).start()
    if not finished.wait(timeout):
        log.warning("Ray Serve shutdown step still running after %.0f s; stopping anyway", timeout)
    return bool(ok)


def run_replicas(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import ray
        from ray import serve

        from unmask.server.deploy.ray_serve import build_app
    except ImportError as exc:
        print(f"unmask: error: --replicas needs Ray Serve ({exc}); install it with: pip install -e \".[ray]\"",
              file=sys.stderr)
        return 2
    local = args.ray_address == "local"
    # Proxies of a cluster started here inherit this (joined clusters set it on their nodes: see proxy.py).
    os.environ.setdefault(CALLBACK_ENV, CALLBACK_PATH)
    init = {"address": args.ray_address, "include_dashboard": False, "log_to_driver": True}
    if local and args.ray_num_cpus is not None:
        init["num_cpus"] = args.ray_num_cpus
    ray.init(**init)
    stop = threading.Event()
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        app = build_app(args)
        _stop_on_signals(stop)
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        log.info("serving %s on http://%s:%d through Ray Serve (%s)", APP_NAME, args.host, args.port,
                 "local Ray cluster" if local else f"Ray cluster {args.ray_address}")
        for node in ray.nodes():  # where Prometheus finds every replica's metrics (ray_vllm_*, ray_serve_*)
            if node.get("Alive"):
                log.info("Ray metrics: http://%s:%s/metrics", node.get("NodeManagerAddress"),
                         node.get("MetricsExportPort"))
        while not stop.wait(0.5):
            pass
        budget = args.drain_timeout + ABORT_GRACE_S + 15.0
        clean = _bounded(lambda: serve.delete(APP_NAME), budget)
        if local:
            clean &= _bounded(serve.shutdown, 30.0)
        return 0 if clean else 1
    except Exception:  # noqa: BLE001 - reported, then the cluster is stopped
        log.exception("the Ray Serve application failed")
        return 1
    finally:
        ray.shutdown()
