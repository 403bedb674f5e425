"""The end-of-run summary table (laid out like ``vllm bench serve``'s) and the result file."""
from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

from benchmarks.load.stats import METRICS, percentile_key

_TITLES = {"ttft": "Time to First Token", "tpot": "Time per Output Token (excl. 1st token)",
           "itl": "Inter-chunk Latency (vLLM ITL)", "e2el": "End-to-end Latency",
           "itl_per_token": "ITL split per token (SGLang)"}
WIDTH = 54


def _row(label: str, value) -> str:
    if value is None:
        text = "n/a"
    elif isinstance(value, float):
        text = f"{value:.2f}"
    else:
        text = str(value)
    return f"{label:<40}{text:>14}"


def _section(title: str) -> str:
    return f"{'-' * ((WIDTH - len(title) - 2) // 2)} {title} ".ljust(WIDTH, "-")


def summary(res: dict, percentiles: list[float], metrics: list[str] = list(METRICS)) -> str:
    """A plain-text table of the headline numbers."""
    lines = [" Serving Benchmark Result ".center(WIDTH, "="),
             _row("Successful requests:", res["completed"]), _row("Failed requests:", res["failed"]),
             _row("Maximum request concurrency:", res.get("max_concurrency")),
             _row("Benchmark duration (s):", res["duration"]),
             _row("Total input tokens:", res["total_input_tokens"]),
             _row("Total generated tokens:", res["total_output_tokens"]),
             _row("Request throughput (req/s):", res["request_throughput"])]
    if res.get("request_goodput") is not None:
        lines.append(_row("Request goodput (req/s):", res["request_goodput"]))
    lines += [_row("Output token throughput (tok/s):", res["output_throughput"]),
              _row("Peak output token throughput (tok/s):", res["max_output_tokens_per_s"]),
              _row("Peak concurrent requests:", res["max_concurrent_requests"]),
              _row("Total token throughput (tok/s):", res["total_token_throughput"]),
              _section("Diffusion"), _row("Mean tokens per chunk:", res["mean_tokens_per_chunk"]),
              _row("Mean NFE per request:", res["mean_nfe"]), _row("Mean TPF (tokens/forward):", res["mean_tpf"])]
    if res.get("accuracy") is not None:
        lines.append(_row(f"Exact-match accuracy ({res['num_checked']} checked):", res["accuracy"]))
    for name in [*metrics, "itl_per_token"]:
        lines += [_section(_TITLES[name]), _row(f"Mean {name.upper()} (ms):", res[f"mean_{name}_ms"]),
                  _row(f"Median {name.upper()} (ms):", res[f"median_{name}_ms"])]
        lines += [_row(f"P{percentile_key(p)[1:]} {name.upper()} (ms):", res[f"{percentile_key(p)}_{name}_ms"])
                  for p in percentiles]
    lines.append("=" * WIDTH)
    errors = sorted({e for e in res.get("errors", []) if e})
    if errors:
        lines.append(f"{len(errors)} distinct error(s), first: {errors[0][:200]}")
    return "\n".join(lines)


def default_filename(res: dict) -> str:
    """vLLM's ``{label}-{rate}qps[-concurrency{N}]-{model}-{YYYYmmdd-HHMMSS}.json``."""
    rate = res["request_rate"]
    conc = f"-concurrency{res['max_concurrency']}" if res.get("max_concurrency") else ""
    model = re.sub(r"[^A-Za-z0-9._-]+", "_", str(res["model_id"]).split("/")[-1])
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{res['label']}-{rate}qps{conc}-{model}-{stamp}.json"


def save(res: dict, result_dir: str | None, filename: str | None, append: bool = False) -> Path:
    """Write (or append as one JSON line) the result; returns the path."""
    path = Path(result_dir or ".") / (filename or default_filename(res))
    path.parent.mkdir(parents=True, exist_ok=True)
    if append:
        with path.open("a") as f:
            f.write(json.dumps(res) + "\n")
    else:
        path.write_text(json.dumps(res, indent=1) + "\n")
    return path
