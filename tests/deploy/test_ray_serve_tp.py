"""A tensor-parallel replica under Ray Serve (local Ray cluster, 2 CPUs, gloo): one replica with
``tensor_parallel_size: 2`` (rank 0 in the replica, rank 1 a process it spawns beside it) answers, through Serve's HTTP proxy,
exactly what a single-device ``unmask serve`` answers at temperature 0 (plain and streamed, chat and
completions); shutting Serve down leaves no rank process behind."""
from __future__ import annotations

import os
import time

import pytest

from tests.deploy import load
from tests.deploy.conftest import HAVE_RAY, RAY_MISSING
from tests.e2e.remote import RemoteServer, free_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300), pytest.mark.skipif(not HAVE_RAY, reason=RAY_MISSING)]

SERVE_ARGS = {"device": "cpu", "dtype": "float32", "kv_cache_memory": "32M", "max_num_seqs": 32,
              "disable_access_log": True, "replicas": 1, "tensor_parallel_size": 2, "num_cpus_per_replica": 1}


def _rank_pids() -> set[int]:
    """PIDs of live processes started by multiprocessing's spawn (the worker ranks are; Ray's workers are not)."""
    out = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"spawn_main" in cmd and state != "Z":
            out.add(int(pid))
    return out


def test_a_two_rank_replica_answers_as_one_device():
    import ray
    from ray import serve

    from unmask.server.deploy.options import APP_NAME
    from unmask.server.deploy.ray_serve import build_app

    with RemoteServer("tiny-llada-instruct", ("--max-num-seqs", "32")) as srv:
        expected = load.expected_texts(srv.base_url)
    before = _rank_pids()
    http_port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": http_port})
        serve.run(build_app(SERVE_ARGS), name=APP_NAME, route_prefix="/")
        assert len(_rank_pids() - before) == 1  # rank 1 runs as a process of its own beside the replica
        got = load.expected_texts(f"http://127.0.0.1:{http_port}")
        assert got == expected
    finally:
        serve.shutdown()
        ray.shutdown()
    deadline = time.monotonic() + 30
    while _rank_pids() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _rank_pids() - before, "rank processes outlived the Serve application"
