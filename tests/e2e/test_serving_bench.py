"""benchmarks/serving.py against a live ``unmask serve`` (the embedded model when shipped, else the random
test checkpoint): every vLLM result key is there, the counts add up, failures are counted, and the
diffusion fields are filled when the server reports NFE/TPF."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.remote import RemoteServer

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
PERCENTILES = ("90", "99")
VLLM_KEYS = ("date", "endpoint_type", "backend", "label", "model_id", "tokenizer_id", "num_prompts", "request_rate",
             "burstiness", "max_concurrency", "duration", "completed", "failed", "total_input_tokens",
             "total_output_tokens", "request_throughput", "request_goodput", "output_throughput",
             "total_token_throughput", "max_output_tokens_per_s", "max_concurrent_requests",
             "input_lens", "output_lens", "ttfts", "itls", "errors", "generated_texts")
STAT_KEYS = tuple(f"{stat}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el", "itl_per_token")
                  for stat in ("mean", "median", "std", *(f"p{p}" for p in PERCENTILES)))
DIFFUSION_KEYS = ("mean_tokens_per_chunk", "mean_nfe", "mean_tpf", "tokens_per_chunk", "nfes", "tpfs",
                  "num_checked", "num_correct", "accuracy")


@pytest.fixture(scope="module")
def bench_server(chat_ckpt, tmp_path_factory):
    from unmask.server.models.resolve import builtin_models

    model = "tiny-llada-instruct" if "tiny-llada-instruct" in builtin_models() else chat_ckpt
    log = tmp_path_factory.mktemp("bench") / "server.log"
    with RemoteServer(model, ("--max-num-seqs", "8", "--max-tokens-limit", "256"), log_path=log) as srv:
        yield srv


def _bench(srv, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "benchmarks.serving", "--base-url", srv.base_url, "--disable-tqdm", "--save-result",
           "--save-detailed", "--result-dir", str(tmp_path), "--result-filename", out.name,
           "--metric-percentiles", ",".join(PERCENTILES), "--ready-check-timeout-sec", "30", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.exists(), done.stdout + done.stderr
    assert "Serving Benchmark Result" in done.stdout
    return json.loads(out.read_text())


def test_task_suite_run_has_every_key_and_counts_add_up(bench_server, tmp_path):
    n = 12
    res = _bench(bench_server, tmp_path, "--dataset", "tasks", "--num-prompts", str(n), "--max-concurrency", "4",
                 "--request-rate", "40", "--burstiness", "0.5", "--output-len", "16", "--goodput", "ttft:60000",
                 "e2el:60000", "--extra-body", '{"block_length": 8}')
    missing = [k for k in (*VLLM_KEYS, *STAT_KEYS, *DIFFUSION_KEYS) if k not in res]
    assert not missing, missing
    assert res["completed"] + res["failed"] == n == res["num_prompts"]
    assert res["completed"] == n and res["errors"] == [""] * n
    assert res["endpoint_type"] == "openai-chat" and res["num_checked"] == n
    for key in ("input_lens", "output_lens", "ttfts", "itls", "tokens_per_chunk", "generated_texts"):
        assert len(res[key]) == n, key
    assert 0 < res["total_output_tokens"] == sum(res["output_lens"]) <= 16 * n
    assert res["total_input_tokens"] == sum(res["input_lens"]) > 0
    assert res["request_goodput"] == pytest.approx(res["request_throughput"])  # generous SLOs: all good
    assert 1 <= res["max_concurrent_requests"] <= 4
    assert 0 < res["mean_ttft_ms"] <= res["mean_e2el_ms"] and res["median_e2el_ms"] <= res["p99_e2el_ms"]
    assert res["request_throughput"] == pytest.approx(n / res["duration"])
    assert res["mean_tokens_per_chunk"] >= 1


def test_failures_are_counted_and_diffusion_fields_filled(bench_server, tmp_path):
    rows = tmp_path / "prompts.jsonl"
    rows.write_text("\n".join(json.dumps(r) for r in (
        {"prompt": "HELLO", "output_len": 8}, {"prompt": "HI", "output_len": 100000},  # over the limit: 400
        {"messages": [{"role": "user", "content": "ABC"}], "output_len": 8})) + "\n")
    res = _bench(bench_server, tmp_path, "--dataset", "jsonl", "--dataset-path", str(rows), "--num-prompts", "6",
                 "--endpoint", "completions", "--ready-check-timeout-sec", "0", "--continuous-usage",
                 "--extra-body", '{"block_length": 8, "stream_options": {"denoise": true}}')
    assert res["completed"] + res["failed"] == 6 and res["failed"] == 2
    assert sum("HTTP 400" in e for e in res["errors"]) == 2
    assert res["endpoint_type"] == "openai"
    ok = [i for i, e in enumerate(res["errors"]) if not e]
    assert all(res["nfes"][i] >= 1 and res["tpfs"][i] > 0 for i in ok)
    assert res["mean_nfe"] >= 1 and res["mean_tpf"] > 0
