"""/health, /version, /v1/models, /tokenize, /detokenize, /load and /metrics."""
from __future__ import annotations

import time

import unmask


def test_health_version_models(server, http, client):
    assert http.get("/health").status_code == 200
    assert http.get("/ping").status_code == 200
    assert http.get("/version").json() == {"version": unmask.__version__}
    (model,) = client.models.list().data
    assert model.id == "tiny" and model.object == "model"
    assert model.model_extra["max_model_len"] == 512
    assert http.get("/load").json()["server_load"] >= 0


def test_tokenize_detokenize_roundtrip(http):
    r = http.post("/tokenize", json={"prompt": "HELLO", "return_token_strs": True}).json()
    assert r["count"] == len(r["tokens"]) == 5 and r["max_model_len"] == 512
    assert "".join(r["token_strs"]) == "HELLO"
    assert http.post("/detokenize", json={"tokens": r["tokens"]}).json() == {"prompt": "HELLO"}
    chat = http.post("/tokenize", json={"messages": [{"role": "user", "content": "HI"}]}).json()
    assert chat["count"] > 5
    assert http.post("/detokenize", json={"tokens": [10 ** 9]}).status_code == 400
    assert http.post("/tokenize", json={}).status_code == 400
    assert http.post("/tokenize", json={"prompt": "A", "model": "other"}).status_code == 404


def _settled_metrics(server):
    """/metrics once no request runs (counters are updated when a choice finishes)."""
    for _ in range(100):
        m = server.metrics()
        if m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0:
            return m
        time.sleep(0.05)
    return m


def test_metrics_count_exactly(server, client):
    before = _settled_metrics(server)
    n_req, prompt = 3, "HELLO"
    outs = [client.completions.create(model="tiny", prompt=prompt, max_tokens=8) for _ in range(n_req)]
    after = _settled_metrics(server)

    def delta(name):
        return after.get(name, 0.0) - before.get(name, 0.0)

    gen = sum(o.usage.completion_tokens for o in outs)
    reasons = [o.choices[0].finish_reason for o in outs]
    assert delta("vllm:prompt_tokens_total") == n_req * outs[0].usage.prompt_tokens
    assert delta("vllm:generation_tokens_total") == gen
    for reason in set(reasons):
        assert delta(f"vllm:request_success_total{{finished_reason={reason}}}") == reasons.count(reason)
    assert delta("vllm:e2e_request_latency_seconds_count") == n_req
    assert delta("vllm:request_generation_tokens_sum") == gen
    assert delta("vllm:request_params_max_tokens_sum") == 8 * n_req
    assert delta("unmask:nfe_total") > 0 and delta("unmask:committed_tokens_total") >= gen
    assert delta("unmask:refresh_steps_total") == delta("unmask:nfe_total")  # exact mode: no cached steps
    for name in ("vllm:kv_cache_usage_perc", "unmask:batch_occupancy", "unmask:tokens_per_forward",
                 "unmask:mean_batch_size", "unmask:engine_dead"):
        assert name in after
    assert after["unmask:engine_dead"] == 0


def test_metrics_fast_mode_uses_block_steps(server, client):
    before = _settled_metrics(server)
    client.completions.create(model="tiny", prompt="HELLO", max_tokens=16, extra_body={"preset": "fast"})
    after = _settled_metrics(server)
    assert after["unmask:block_steps_total"] >= before["unmask:block_steps_total"]
    assert after["unmask:nfe_total"] > before["unmask:nfe_total"]
