"""A server with an API key and tight limits: 401, open paths, 413, 503 + Retry-After on a full queue,
and service resuming afterwards."""
from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.e2e.remote import RemoteServer

KEY = "sk-test-key"
LONG = {"prompt": "A", "max_tokens": 448, "block_length": 448, "steps": 448, "stream": True}


@pytest.fixture(scope="module")
def limited(chat_ckpt, tmp_path_factory):
    log = tmp_path_factory.mktemp("limits") / "server.log"
    args = ("--api-key", KEY, "--max-num-seqs", "1", "--max-queue", "1", "--max-body-bytes", "65536",
            "--max-tokens-limit", "448", "--max-steps", "1000", "--served-model-name", "tiny")
    with RemoteServer(chat_ckpt, args, log_path=log, api_key=KEY) as srv:
        yield srv


def test_api_key_required_on_v1(limited):
    url = limited.url_for("v1/models")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Basic " + KEY}):
        r = httpx.get(url, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert KEY not in r.text
    assert httpx.get(url, headers={"Authorization": f"bearer {KEY}"}).status_code == 200
    assert httpx.post(limited.url_for("tokenize"), json={"prompt": "A"}).status_code == 401
    for path in ("health", "metrics", "version", "", "static/app.js"):
        assert httpx.get(limited.url_for(path)).status_code == 200, path
    assert httpx.get(limited.url_for("static/../routes.py")).status_code in (401, 404)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=limited.url_for("v1"), api_key="wrong", max_retries=0).models.list()
    assert limited.openai().models.list().data[0].id == "tiny"


def test_oversized_body_is_413(limited):
    big = {"prompt": "A" * 70000}
    with limited.http() as c:
        r = c.post("/v1/completions", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

        def chunks():  # no Content-Length: the cap applies while the body streams in
            for _ in range(20):
                yield b"x" * 8192
        r = c.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413


def test_limits_are_400(limited):
    with limited.http() as c:
        r = c.post("/v1/completions", json={"prompt": "A", "max_tokens": 449})
        assert r.status_code == 400 and "--max-tokens-limit" in r.json()["error"]["message"]
        r = c.post("/v1/completions", json={"prompt": "A", "steps": 1001})
        assert r.status_code == 400 and r.json()["error"]["param"] == "steps"


def _wait(limited, running: int, waiting: int, timeout: float = 5.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        m = limited.metrics()
        if m["vllm:num_requests_running"] == running and m["vllm:num_requests_waiting"] == waiting:
            return
        time.sleep(0.02)
    pytest.fail(f"expected running={running} waiting={waiting}: {limited.metrics()}")


def test_queue_full_is_503_then_service_resumes(limited):
    before = limited.metrics().get("vllm:admission_rejections_total", 0)
    with limited.http() as a, limited.http() as b, limited.http() as c:
        with a.stream("POST", "/v1/completions", json=LONG) as ra:
            assert ra.status_code == 200
            _wait(limited, 1, 0)
            with b.stream("POST", "/v1/completions", json=LONG) as rb:
                assert rb.status_code == 200
                _wait(limited, 1, 1)
                r = c.post("/v1/completions", json={"prompt": "A", "max_tokens": 2})
                assert r.status_code == 503 and r.headers["retry-after"] == "1"
                assert r.json()["error"]["code"] == "queue_full"
                rs = c.post("/v1/completions", json={**LONG, "max_tokens": 2})
                assert rs.status_code == 503  # streaming requests are refused before the stream starts
            _wait(limited, 1, 0)  # the queued client left: its request is gone from the queue
    _wait(limited, 0, 0)
    assert limited.metrics()["vllm:admission_rejections_total"] == before + 2
    out = limited.openai().completions.create(model="tiny", prompt="A", max_tokens=4)
    assert out.choices[0].finish_reason in ("stop", "length")
