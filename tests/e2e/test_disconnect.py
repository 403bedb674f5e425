"""A client that goes away (streaming or not) aborts its request: the running/waiting gauges return to
zero quickly and the server keeps answering."""
from __future__ import annotations

import time

import httpx
import pytest

LONG = {"prompt": "A", "max_tokens": 448, "block_length": 448, "steps": 448}


def _wait_idle(server, timeout: float = 15.0) -> float:
    """Seconds until no request runs or waits; fails after ``timeout``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        m = server.metrics()
        if m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0:
            return time.monotonic() - t0
        time.sleep(0.05)
    pytest.fail(f"requests still running after {timeout} s: {server.metrics()}")


def _wait_running(server, timeout: float = 5.0) -> None:
    t0 = time.monotonic()
    while server.metrics()["vllm:num_requests_running"] == 0:
        if time.monotonic() - t0 > timeout:
            pytest.fail("the request never started running")
        time.sleep(0.02)


def _aborts(server) -> float:
    return server.metrics().get("vllm:request_success_total{finished_reason=abort}", 0.0)


@pytest.mark.parametrize("route,body", [
    ("/v1/completions", LONG),
    ("/v1/chat/completions", {**{k: v for k, v in LONG.items() if k != "prompt"},
                              "messages": [{"role": "user", "content": "A"}]}),
])
def test_streaming_disconnect_aborts(server, route, body):
    _wait_idle(server)
    before = _aborts(server)
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        with c.stream("POST", route, json={**body, "stream": True}) as r:
            assert r.status_code == 200
            _wait_running(server)
    assert _wait_idle(server) < 5.0  # one engine step (ms here) plus /metrics polling on a busy CPU
    assert _aborts(server) == before + 1


def test_non_streaming_disconnect_aborts(server):
    _wait_idle(server)
    before = _aborts(server)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url_for("v1/completions"), json={**LONG, "n": 2}, timeout=0.5)
    assert _wait_idle(server) < 5.0
    assert _aborts(server) == before + 2


def test_many_timeouts_then_fresh_request(server, client):
    """vLLM's cancellation test, scaled down: every timed-out request is freed, a new one is fast."""
    import concurrent.futures as cf

    def fire(_):
        try:
            httpx.post(server.url_for("v1/completions"), json=LONG, timeout=0.3)
        except httpx.TimeoutException:
            return True
        return False

    with cf.ThreadPoolExecutor(8) as pool:
        assert all(pool.map(fire, range(24)))
    _wait_idle(server, timeout=20)
    t0 = time.monotonic()
    client.completions.create(model="tiny", prompt="A", max_tokens=4)
    assert time.monotonic() - t0 < 10
