"""``unmask serve --replicas 2``: starts a private Ray cluster (2 CPUs) with Serve, answers, and on SIGTERM lets
the in-flight stream finish, exits 0 and leaves no Ray process behind."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.deploy import load
from tests.deploy.conftest import HAVE_RAY, RAY_MISSING, alive, process_tree
from tests.e2e.remote import free_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180), pytest.mark.skipif(not HAVE_RAY, reason=RAY_MISSING)]

START_TIMEOUT_S = 90.0
EXIT_TIMEOUT_S = 45.0


def _wait_healthy(proc: subprocess.Popen, url: str, log) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"unmask serve --replicas exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"not healthy after {START_TIMEOUT_S} s: {log.read_text()[-3000:]}")


def test_replicas_flag_serves_and_stops_cleanly_on_sigterm(tmp_path):
    port, log = free_port(), tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "unmask.server", "serve", "--replicas", "2", "--ray-num-cpus", "2",
           "--port", str(port), "--device", "cpu", "--dtype", "float32", "--kv-cache-memory", "32M",
           "--disable-access-log", "--drain-timeout", "10"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    tree: set[int] = set()
    try:
        _wait_healthy(proc, url, log)
        results = load.run_many(url, [job for _, job in load.mixed_jobs(16)])
        assert all(isinstance(r, load.Result) and r.status == 200 and r.finished for r in results), results
        tree = process_tree(proc.pid)
        assert len(tree) > 3, tree  # raylet, GCS, Serve controller, proxy, replicas

        async def stream_during_sigterm():
            path, body = load.request("chat-stream", "sort: 9 8 7 6 5 4 3 2 1", max_tokens=64, block_length=2,
                                      steps=64, early_stop=False, stream_options={"denoise": True})
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                task = asyncio.create_task(load.send(client, path, body))
                await asyncio.sleep(0.05)
                proc.send_signal(signal.SIGTERM)
                return await task

        res = asyncio.run(stream_during_sigterm())
        assert res.status == 200 and res.finished and res.error is None, res  # drained, not cut
        assert proc.wait(EXIT_TIMEOUT_S) == 0, log.read_text()[-3000:]
        deadline = time.monotonic() + 10
        while alive(tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(tree), f"processes left behind: {sorted(alive(tree))}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in alive(tree):
            os.kill(pid, signal.SIGKILL)
