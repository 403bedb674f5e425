"""The sweep's Markdown table: one row per (preset, concurrency)."""
from __future__ import annotations

COLUMNS = (
    ("preset", "preset", "{}"), ("concurrency", "concurrency", "{}"), ("requests ok/failed", None, None),
    ("req/s", "request_throughput", "{:.2f}"), ("output tok/s", "output_throughput", "{:.1f}"),
    ("TTFT p50 / p99 (ms)", ("median_ttft_ms", "p99_ttft_ms"), "{:.0f} / {:.0f}"),
    ("TPOT p50 (ms)", "median_tpot_ms", "{:.1f}"),
    ("E2E p50 / p90 / p99 (ms)", ("median_e2el_ms", "p90_e2el_ms", "p99_e2el_ms"), "{:.0f} / {:.0f} / {:.0f}"),
    ("tokens/chunk", "mean_tokens_per_chunk", "{:.1f}"), ("NFE", "mean_nfe", "{:.1f}"),
    ("TPF", "mean_tpf", "{:.2f}"), ("batch", "server_mean_batch_size", "{:.1f}"), ("accuracy", "accuracy", "{:.0%}"),
)


def _cell(row: dict, key, fmt) -> str:
    if key is None:
        return f"{row['completed']}/{row['failed']}"
    keys = key if isinstance(key, tuple) else (key,)
    values = [row.get(k) for k in keys]
    if any(v is None for v in values):
        return "–"
    return fmt.format(*values)


def table(rows: list[dict]) -> str:
    """GitHub-flavoured Markdown, rows sorted by preset then concurrency."""
    head = "| " + " | ".join(c[0] for c in COLUMNS) + " |"
    rule = "|" + "|".join(" ---: " if i > 0 else " --- " for i in range(len(COLUMNS))) + "|"
    body = ["| " + " | ".join(_cell(r, key, fmt) for _, key, fmt in COLUMNS) + " |"
            for r in sorted(rows, key=lambda r: (r["preset"], r["concurrency"]))]
    return "\n".join([head, rule, *body])
