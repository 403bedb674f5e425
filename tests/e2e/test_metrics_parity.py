"""vLLM's metric names where they carry over (queue / inference time, inter-token latency, tokens per
iteration), parsed with prometheus-client's parser after a known request sequence."""
from __future__ import annotations

import json

import pytest

from tests.e2e.remote import RemoteServer


@pytest.fixture(scope="module")
def srv(chat_ckpt, tmp_path_factory):
    log = tmp_path_factory.mktemp("metrics") / "server.log"
    with RemoteServer(chat_ckpt, ("--served-model-name", "tiny"), log_path=log) as server:
        yield server


def test_new_metrics_follow_a_known_sequence(srv):
    body = {"prompt": "A", "max_tokens": 16, "block_length": 4, "logits_eos_inf": True, "early_stop": False}
    with srv.http() as http:
        for _ in range(3):
            assert http.post("/v1/completions", json=body).status_code == 200
        chunks = 0
        with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                    chunks += 1
    m = srv.metrics()
    assert m["vllm:request_queue_time_seconds_count"] == 4 and m["vllm:request_inference_time_seconds_count"] == 4
    assert 0 <= m["vllm:request_queue_time_seconds_sum"] <= m["vllm:e2e_request_latency_seconds_sum"]
    assert 0 < m["vllm:request_inference_time_seconds_sum"] <= m["vllm:e2e_request_latency_seconds_sum"]
    assert chunks >= 2 and m["vllm:inter_token_latency_seconds_count"] == chunks - 1
    assert m["vllm:iteration_tokens_total_count"] == m["unmask:engine_iterations_total"] > 0
    assert m["vllm:iteration_tokens_total_sum"] == m["unmask:forward_tokens_total"]
    assert m["vllm:iteration_tokens_total_bucket{le=+Inf}"] == m["unmask:engine_iterations_total"]
