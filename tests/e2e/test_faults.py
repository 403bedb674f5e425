"""Engine faults seen through HTTP (in-process uvicorn, so the test can wrap the engine's model runner):
a failing step fails only its requests with a clear error; a dead engine loop turns /health and new
requests into 503 instead of hanging."""
from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
import uvicorn

from tests.e2e.remote import free_port
from unmask.server.api.app import create_app
from unmask.server.api.settings import ServerSettings
from unmask.server.config import EngineConfig
from unmask.server.engine.async_engine import AsyncEngine
from unmask.server.engine.engine import Engine

POISON = 7  # prompt token id that makes the injected fault fire


class _Die(BaseException):
    """Escapes Engine.step's per-step isolation: kills the loop."""


@pytest.fixture
def inproc(chat_ckpt):
    holder = {}

    def factory():
        holder["engine"] = Engine.from_config(EngineConfig(model=str(chat_ckpt), device="cpu", dtype="float32",
                                                           kv_cache_memory=8 << 20))
        return AsyncEngine(holder["engine"])

    app = create_app(ServerSettings(served_model_name="tiny"), factory, 64)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.config.port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    yield base, holder["engine"]
    server.should_exit = True
    thread.join(15)


def _inject(engine, exc_type) -> None:
    """Make every engine step that holds a POISON prompt raise ``exc_type`` (wraps the runner, as a fault in
    the forward would)."""
    run = engine.runner.run

    def faulty(batch):
        if any(s.request.prompt_token_ids[0] == POISON for s in batch.seqs):
            raise exc_type("injected fault")
        return run(batch)
    engine.runner.run = faulty


def test_failed_step_fails_only_its_request(inproc):
    base, engine = inproc
    _inject(engine, RuntimeError)
    r = httpx.post(base + "/v1/completions", json={"prompt": [POISON, 1], "max_tokens": 4}, timeout=30)
    assert r.status_code == 500 and r.json()["error"]["code"] == "engine_error"
    assert "injected fault" in r.json()["error"]["message"]
    with httpx.stream("POST", base + "/v1/completions", timeout=30,
                      json={"prompt": [POISON, 1], "max_tokens": 4, "stream": True}) as s:
        assert s.status_code == 200
        lines = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
    assert json.loads(lines[-2][6:])["error"]["code"] == "engine_error" and lines[-1] == "data: [DONE]"
    ok = httpx.post(base + "/v1/completions", json={"prompt": [1, 2], "max_tokens": 4}, timeout=30)
    assert ok.status_code == 200 and httpx.get(base + "/health").status_code == 200


def test_dead_engine_is_503(inproc):
    base, engine = inproc
    _inject(engine, _Die)
    r = httpx.post(base + "/v1/completions", json={"prompt": [POISON, 1], "max_tokens": 4}, timeout=30)
    assert r.status_code == 503 and r.json()["error"]["code"] == "engine_dead"
    assert httpx.get(base + "/health").status_code == 503
    r = httpx.post(base + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "A"}]}, timeout=30)
    assert r.status_code == 503 and r.headers["retry-after"]
    metrics = httpx.get(base + "/metrics").text
    assert 'unmask:engine_dead{model_name="tiny"} 1.0' in metrics
