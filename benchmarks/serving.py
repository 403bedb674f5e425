"""HTTP load generator for any OpenAI-compatible server, following ``vllm bench serve`` (SERVING.md §5).

    python -m benchmarks.serving --base-url http://127.0.0.1:8000 --dataset tasks --num-prompts 200 \\
        --request-rate 8 --max-concurrency 16 --extra-body '{"preset": "fast"}' --save-result

Requests arrive with gamma-distributed gaps (``--burstiness`` 1 = Poisson; ``--request-rate inf`` sends
all at t=0), at most ``--max-concurrency`` in flight. Every response is streamed and timed (TTFT, TPOT,
ITL, E2EL: benchmarks/load/stats.py gives the definitions); the result file uses vLLM's keys plus
diffusion fields (tokens per chunk, NFE and TPF when the server reports them) and exact-match accuracy
for the task suite.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np

from benchmarks.load import datasets, report, stats
from benchmarks.load.request import RequestOutput, RequestSpec, send


def _target_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("server")
    g.add_argument("--base-url", default=None, help="server root, e.g. http://127.0.0.1:8000 (default: --host/--port)")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=8000)
    g.add_argument("--endpoint", default="chat", help="chat | completions, or a path such as /v1/completions")
    g.add_argument("--model", default=None, help="model name sent (default: the first of GET /v1/models)")
    g.add_argument("--header", action="append", default=[], metavar="K=V", help="extra request header")
    g.add_argument("--request-id-prefix", default="benchmark-serving")
    g.add_argument("--ready-check-timeout-sec", type=float, default=600,
                   help="retry the first request this long until it succeeds (0: no check)")
    g.add_argument("--timeout", type=float, default=6 * 3600, help="per-request timeout in seconds")


def _dataset_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prompts")
    g.add_argument("--dataset", "--dataset-name", dest="dataset", default="tasks", choices=["tasks", "random", "jsonl"])
    g.add_argument("--dataset-path", default=None, help="JSONL file for --dataset jsonl")
    g.add_argument("--tokenizer", default=None, help="tokenizer.json / checkpoint folder / built-in name "
                   "for client-side token counts (default: --model when it is one; else the server's usage)")
    g.add_argument("--output-len", type=int, default=64, help="max tokens for tasks / jsonl rows (default 64)")
    g.add_argument("--random-input-len", type=int, default=128)
    g.add_argument("--random-output-len", type=int, default=64)
    g.add_argument("--random-range-ratio", type=float, default=0.0)
    g.add_argument("--num-prompts", type=int, default=100)
    g.add_argument("--seed", type=int, default=0)


def _load_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("load and request body")
    g.add_argument("--request-rate", type=float, default=float("inf"), help="requests/s (default inf: all at once)")
    g.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of the gaps: 1 Poisson, <1 burstier")
    g.add_argument("--max-concurrency", type=int, default=None, help="most requests in flight")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--ignore-eos", action="store_true")
    g.add_argument("--extra-body", default=None, help='JSON merged into every body, e.g. \'{"preset": "fast"}\'')
    g.add_argument("--continuous-usage", action="store_true",
                   help="ask for usage on every chunk (vLLM continuous_usage_stats): exact tokens per chunk")


def _output_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("metrics and results")
    g.add_argument("--goodput", nargs="+", default=None, metavar="NAME:MS",
                   help="SLOs, e.g. ttft:500 tpot:50 e2el:2000")
    g.add_argument("--percentile-metrics", default="ttft,tpot,itl,e2el", help="metrics printed with percentiles")
    g.add_argument("--metric-percentiles", default="90,99", help="percentiles reported (default 90,99)")
    g.add_argument("--disable-tqdm", action="store_true")
    g.add_argument("--save-result", action="store_true")
    g.add_argument("--save-detailed", action="store_true", help="also save each generated text")
    g.add_argument("--append-result", action="store_true", help="append one JSON line to the result file")
    g.add_argument("--result-dir", default=None)
    g.add_argument("--result-filename", default=None)
    g.add_argument("--label", default=None, help="run label (default: the endpoint type)")
    g.add_argument("--metadata", nargs="*", default=[], metavar="K=V", help="extra key=value pairs for the result")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for add in (_target_args, _dataset_args, _load_args, _output_args):
        add(p)
    return p.parse_args(argv)


def arrival_times(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Dispatch offsets (s): first at 0, gamma(shape=burstiness, scale=1/(rate·burstiness)) gaps rescaled
    so the n gaps sum to n/rate exactly (vLLM 0.11); all zeros for an infinite rate."""
    if rate == float("inf"):
        return [0.0] * n
    if rate <= 0 or burstiness <= 0:
        raise ValueError("--request-rate and --burstiness must be positive")
    gaps = np.random.default_rng(seed).gamma(burstiness, 1.0 / (rate * burstiness), size=n)
    gaps *= (n / rate) / gaps.sum()
    return [0.0, *np.cumsum(gaps)[:-1].tolist()]


class Progress:
    """tqdm when installed, else a line every 10 %."""

    def __init__(self, total: int, disable: bool):
        self.total, self.done, self.bar = total, 0, None
        self.disable = disable
        if not disable:
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc="requests", unit="req")
            except ImportError:
                pass

    def update(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif not self.disable and (self.done == self.total or self.done % max(1, self.total // 10) == 0):
            print(f"  {self.done}/{self.total} requests", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def endpoint_url(base: str, endpoint: str) -> tuple[str, bool]:
    """(full URL, is_chat) for ``chat``, ``completions`` or an explicit path."""
    path = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}.get(endpoint, endpoint)
    return base.rstrip("/") + "/" + path.lstrip("/"), "chat" in path


async def ready_check(client: httpx.AsyncClient, spec: RequestSpec, sample, timeout: float, tok) -> None:
    """Send the first prompt until it succeeds (the server may still be loading)."""
    deadline = time.monotonic() + timeout
    while True:
        out = await send(client, spec, sample, "ready-check", tok)
        if out.success:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"server not ready after {timeout:.0f} s: {out.error}")
        await asyncio.sleep(1.0)


async def run_requests(client: httpx.AsyncClient, spec: RequestSpec, samples: list, times: list[float],
                       max_concurrency: int | None, prefix: str, tok, progress: Progress) -> tuple[list, float, float]:
    """Dispatch every sample at its arrival time; returns (outputs, duration, t0)."""
    sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async def one(i: int) -> RequestOutput:
        await asyncio.sleep(max(0.0, t0 + times[i] - time.perf_counter()))
        if sem is None:
            out = await send(client, spec, samples[i], f"{prefix}-{i}", tok)
        else:
            async with sem:
                out = await send(client, spec, samples[i], f"{prefix}-{i}", tok)
        progress.update()
        return out

    t0 = time.perf_counter()
    outputs = await asyncio.gather(*(one(i) for i in range(len(samples))))
    return list(outputs), time.perf_counter() - t0, t0


def load_samples(args: argparse.Namespace, tok) -> list:
    if args.dataset == "tasks":
        return datasets.task_requests(args.num_prompts, args.seed, args.output_len, tok)
    if args.dataset == "random":
        return datasets.random_requests(args.num_prompts, args.random_input_len, args.random_output_len,
                                        args.random_range_ratio, args.seed, tok)
    if not args.dataset_path:
        raise ValueError("--dataset jsonl needs --dataset-path")
    return datasets.jsonl_requests(args.dataset_path, args.num_prompts, args.output_len, args.seed, tok)


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep:
            raise ValueError(f"{what} {item!r}: use KEY=VALUE")
        out[k.strip()] = v.strip()
    return out


async def _served_model(client: httpx.AsyncClient, base: str, headers: dict) -> str:
    resp = await client.get(base.rstrip("/") + "/v1/models", headers=headers)
    resp.raise_for_status()
    return resp.json()["data"][0]["id"]


async def benchmark(args: argparse.Namespace) -> dict:
    """Run one benchmark; returns the result dict (also printed and optionally saved by :func:`main`)."""
    base = args.base_url or f"http://{args.host}:{args.port}"
    headers = _pairs(args.header, "--header")
    if os.environ.get("OPENAI_API_KEY"):
        headers.setdefault("Authorization", f"Bearer {os.environ['OPENAI_API_KEY']}")
    url, chat = endpoint_url(base, args.endpoint)
    percentiles = [float(p) for p in args.metric_percentiles.split(",") if p.strip()]
    slos = stats.parse_goodput(args.goodput)
    limits = httpx.Limits(max_connections=args.max_concurrency or args.num_prompts, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout, connect=30.0), limits=limits) as client:
        model = args.model or await _served_model(client, base, headers)
        tok = datasets.find_tokenizer(args.tokenizer, model)
        samples = load_samples(args, tok)
        spec = RequestSpec(url, model, chat, args.temperature, args.ignore_eos, args.continuous_usage,
                           json.loads(args.extra_body) if args.extra_body else {}, headers)
        if args.ready_check_timeout_sec > 0:
            await ready_check(client, spec, samples[0], args.ready_check_timeout_sec, tok)
        progress = Progress(len(samples), args.disable_tqdm)
        times = arrival_times(len(samples), args.request_rate, args.burstiness, args.seed)
        try:
            outputs, duration, t0 = await run_requests(client, spec, samples, times, args.max_concurrency,
                                                       args.request_id_prefix, tok, progress)
        finally:
            progress.close()
    res = {"date": datetime.now().strftime("%Y%m%d-%H%M%S"), "endpoint_type": "openai-chat" if chat else "openai",
           "backend": "openai-chat" if chat else "openai", "label": args.label or ("openai-chat" if chat else "openai"),
           "model_id": model, "tokenizer_id": str(tok.path) if tok else None, "base_url": base, "endpoint": url,
           "dataset": args.dataset, "num_prompts": len(samples),
           "request_rate": "inf" if args.request_rate == float("inf") else args.request_rate,
           "burstiness": args.burstiness, "max_concurrency": args.max_concurrency, "extra_body": spec.extra_body,
           "goodput_slos_ms": slos, **_pairs(args.metadata, "--metadata")}
    res.update(stats.compute(samples, outputs, duration, t0, percentiles, slos, args.save_detailed))
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = asyncio.run(benchmark(args))
    percentiles = [float(p) for p in args.metric_percentiles.split(",") if p.strip()]
    metrics = [m for m in args.percentile_metrics.split(",") if m in stats.METRICS]
    print(report.summary(res, percentiles, metrics))
    if args.save_result or args.append_result:
        path = report.save(res, args.result_dir, args.result_filename, args.append_result)
        print(f"result saved to {path}")
    return 0 if res["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
