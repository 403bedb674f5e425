"""CI-sized runs of the reliability benchmarks against the shared tiny server (16 slots):
benchmarks/load_test.py (mixed load, every answer checked, streamed == non-streamed) and
benchmarks/disconnect_storm.py (clients vanishing at random points, server back to clean idle)."""
from __future__ import annotations

import asyncio

from benchmarks.disconnect_storm import run_storm
from benchmarks.load_test import make_cases, run_load


def test_mixed_load_no_lost_no_duplicated_streamed_equals_full(server):
    result = asyncio.run(run_load(server.base_url, requests=120, concurrency=16, seed=3, timeout=120))
    assert result["error_samples"] == [] and result["mismatch_samples"] == []
    assert result["requests"] == result["answered"] == 120
    assert (result["lost"], result["duplicated"], result["ok"]) == (0, 0, True)


def test_load_cases_are_mixed():
    cases = make_cases(60, seed=3)
    assert {c["route"] for c in cases} == {"/v1/completions", "/v1/chat/completions"}
    assert {c["body"].get("preset") for c in cases} == {None, "exact", "fast"}
    assert len({c["body"]["max_tokens"] for c in cases}) > 3 and any("block_length" in c["body"] for c in cases)


def test_disconnect_storm_leaves_server_clean(server):
    result = run_storm(server.base_url, clients=60, seed=1, parallel=32, idle_timeout=20)
    assert result["client_errors"] == 0, result["by_mode"]
    assert result["disconnects"] >= 40
    vanished_modes = {k.split("/")[0] for k in result["by_mode"] if k.endswith("/vanished")}
    assert {"before_first_byte", "queued", "mid_stream", "non_stream_timeout"} <= vanished_modes
    assert result["peak_gauges"]["vllm:num_requests_running"] > 0
    assert result["after_gauges"]["vllm:num_requests_running"] == 0
    assert result["after_gauges"]["vllm:num_requests_waiting"] == 0
    assert result["after_gauges"]["vllm:kv_cache_usage_perc"] <= result["idle_gauges"]["vllm:kv_cache_usage_perc"]
    assert result["reference_unchanged"] and result["ok"]
