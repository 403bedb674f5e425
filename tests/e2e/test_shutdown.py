"""SIGTERM: new requests get 503 at once, in-flight ones finish within --drain-timeout, the rest end with
finish_reason "abort", and the process exits 0."""
from __future__ import annotations

import json
import signal
import threading
import time

import httpx

from tests.e2e.remote import RemoteServer

SHORT = {"prompt": "A", "max_tokens": 24, "block_length": 24, "steps": 8, "stream": True}
LONG = {"prompt": "A", "max_tokens": 448, "block_length": 448, "steps": 448, "stream": True}
LONGS = 3
DRAIN_S = 0.75
"""Between the two: SHORT's 8 steps fit in it up to ~90 ms per step (a loaded 2-core machine), while the
~400 steps the LONG requests still have at SIGTERM outlast it down to ~2 ms per step. One LONG alone takes
~1 s on an idle 2-core CPU (2.2 ms per step); three running together take ~3× as long per step."""


def _consume(url: str, body: dict, out: dict, key: str) -> None:
    reasons, done = [], False
    with httpx.stream("POST", url, json=body, timeout=60) as r:
        out[key + "_status"] = r.status_code
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                for c in json.loads(line[6:]).get("choices", []):
                    if c["finish_reason"] is not None:
                        reasons.append(c["finish_reason"])
    out[key] = (reasons, done)


def _running(srv) -> float:
    return srv.metrics()["vllm:num_requests_running"]


def test_sigterm_drains_then_aborts(chat_ckpt, tmp_path):
    srv = RemoteServer(chat_ckpt, ("--drain-timeout", str(DRAIN_S)), log_path=tmp_path / "server.log")
    try:
        url, out = srv.url_for("v1/completions"), {}
        long_ts = [threading.Thread(target=_consume, args=(url, LONG, out, f"long{i}")) for i in range(LONGS)]
        for t in long_ts:
            t.start()
        deadline = time.monotonic() + 10
        while _running(srv) < LONGS and time.monotonic() < deadline:
            time.sleep(0.02)
        short_t = threading.Thread(target=_consume, args=(url, SHORT, out, "short"))
        short_t.start()
        while _running(srv) < LONGS + 1 and "short" not in out and time.monotonic() < deadline:
            time.sleep(0.01)
        srv.signal(signal.SIGTERM)
        time.sleep(0.3)
        r = httpx.post(url, json={"prompt": "A", "max_tokens": 2}, timeout=10)
        assert r.status_code == 503 and r.headers["retry-after"]
        assert r.json()["error"]["code"] == "shutting_down"
        assert httpx.get(srv.url_for("health"), timeout=10).status_code == 503
        short_t.join(30)
        for t in long_ts:
            t.join(30)
        assert out["short"][0] in (["length"], ["stop"]) and out["short"][1]
        assert [out[f"long{i}"] for i in range(LONGS)] == [(["abort"], True)] * LONGS
        assert srv.proc.wait(30) == 0
    finally:
        srv.stop()
    assert "Traceback" not in srv.log_tail(100000)
