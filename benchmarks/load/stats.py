"""Aggregate per-request timings into ``vllm bench serve``'s result keys (SERVING.md §5.1), plus diffusion
fields.

Definitions (all over successful requests; ``duration`` = first dispatch to last completion):
TTFT, E2EL (= vLLM "latency"), TPOT = (E2EL − TTFT) / (output_tokens − 1) for requests with more than one
token, ITL = every gap between successive chunks pooled (per chunk: a diffusion server sends blocks, so
these are few and large), ``itl_per_token`` = each gap divided by that chunk's token count (SGLang's
split). Each metric gets mean / median / std and the chosen percentiles, in milliseconds; the per-request
lists (``ttfts``, ``itls``) stay in seconds, as vLLM saves them.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

from benchmarks.load.datasets import SampleRequest
from benchmarks.load.request import RequestOutput

METRICS = ("ttft", "tpot", "itl", "e2el")
SLO_KEYS = ("ttft", "tpot", "e2el")


def percentile_key(p: float) -> str:
    """vLLM's spelling: 99 -> 'p99', 99.9 -> 'p99.9'."""
    return f"p{int(p)}" if float(p).is_integer() else f"p{p}"


def describe(name: str, values_s: list[float], percentiles: list[float]) -> dict:
    """mean/median/std/pNN of ``values_s`` (seconds) as ``{stat}_{name}_ms``; zeros when empty (as vLLM)."""
    arr = np.asarray(values_s, dtype=float) * 1000.0
    out = {f"mean_{name}_ms": float(arr.mean()) if arr.size else 0.0,
           f"median_{name}_ms": float(np.median(arr)) if arr.size else 0.0,
           f"std_{name}_ms": float(arr.std()) if arr.size else 0.0}
    for p in percentiles:
        out[f"{percentile_key(p)}_{name}_ms"] = float(np.percentile(arr, p)) if arr.size else 0.0
    return out


def tpot(o: RequestOutput) -> float:
    return (o.latency - o.ttft) / (o.output_tokens - 1) if o.output_tokens > 1 else 0.0


def chunk_token_counts(o: RequestOutput) -> list[float]:
    """Tokens in each chunk: exact with continuous usage, else the request's average for every chunk."""
    if o.chunk_tokens:
        return [float(t) for t in o.chunk_tokens]
    n = len(o.chunk_times)
    return [o.output_tokens / n] * n if n else []


def is_good(o: RequestOutput, slos_ms: dict[str, float]) -> bool:
    got = {"ttft": o.ttft * 1000, "tpot": tpot(o) * 1000, "e2el": o.latency * 1000}
    return all(got[k] <= v for k, v in slos_ms.items())


def peaks(outputs: list[RequestOutput], t0: float) -> tuple[float, int]:
    """(max output tokens in any 1-s bucket since ``t0``, most requests in flight at once). Tokens are
    placed at their chunk's arrival; in-flight counts come from each request's [start, start + E2EL]."""
    tokens: Counter[int] = Counter()
    edges = []
    for o in outputs:
        if not o.success:
            continue
        for at, n in zip(o.chunk_times, chunk_token_counts(o)):
            tokens[int(o.start - t0 + at)] += n
        edges += [(o.start, 1), (o.start + o.latency, -1)]
    live = peak = 0
    for _, step in sorted(edges):  # ends sort before starts at the same instant
        live += step
        peak = max(peak, live)
    return float(max(tokens.values(), default=0)), peak


def per_token_itls(o: RequestOutput) -> list[float]:
    counts = chunk_token_counts(o)[1:]
    return [gap / n for gap, n in zip(o.itl, counts) if n > 0]


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def diffusion_fields(good: list[RequestOutput], percentiles: list[float]) -> dict:
    """Tokens per chunk, NFE and TPF (when the server reports them) and per-token-split ITL."""
    chunks = sum(len(o.chunk_times) for o in good)
    nfes = [o.nfe for o in good if o.nfe is not None]
    tpfs = [o.tpf for o in good if o.tpf is not None]
    return {"mean_tokens_per_chunk": sum(o.output_tokens for o in good) / chunks if chunks else 0.0,
            "mean_nfe": _mean(nfes), "mean_tpf": _mean(tpfs),
            **describe("itl_per_token", [x for o in good for x in per_token_itls(o)], percentiles)}


def accuracy_fields(samples: list[SampleRequest], outputs: list[RequestOutput]) -> dict:
    """Exact-match accuracy over requests whose sample has an answer (task suite, JSONL with answers)."""
    checked = [(s, o) for s, o in zip(samples, outputs) if s.answer is not None]
    correct = sum(1 for s, o in checked if o.success and " ".join(o.generated_text.split()) == s.answer)
    return {"num_checked": len(checked), "num_correct": correct,
            "accuracy": correct / len(checked) if checked else None}


def per_request_lists(samples: list[SampleRequest], outputs: list[RequestOutput], detailed: bool) -> dict:
    out = {"input_lens": [o.prompt_len if o.prompt_len is not None else s.prompt_len or 0
                          for s, o in zip(samples, outputs)],
           "output_lens": [o.output_tokens for o in outputs], "ttfts": [o.ttft for o in outputs],
           "itls": [o.itl for o in outputs], "errors": [o.error for o in outputs],
           "tokens_per_chunk": [o.output_tokens / len(o.chunk_times) if o.chunk_times else 0.0 for o in outputs],
           "nfes": [o.nfe for o in outputs], "tpfs": [o.tpf for o in outputs],
           "finish_reasons": [o.finish_reason for o in outputs]}
    if detailed:
        out["generated_texts"] = [o.generated_text for o in outputs]
    return out


def compute(samples: list[SampleRequest], outputs: list[RequestOutput], duration: float, t0: float,
            percentiles: list[float], slos_ms: dict[str, float] | None = None, detailed: bool = False) -> dict:
    """The full result dict (without run metadata)."""
    good = [o for o in outputs if o.success]
    duration = max(duration, 1e-9)
    lists = per_request_lists(samples, outputs, detailed)
    inputs = sum(n for n, o in zip(lists["input_lens"], outputs) if o.success)
    outputs_tok = sum(o.output_tokens for o in good)
    peak_tok, peak_conc = peaks(outputs, t0)
    res = {"duration": duration, "completed": len(good), "failed": len(outputs) - len(good),
           "total_input_tokens": inputs, "total_output_tokens": outputs_tok,
           "request_throughput": len(good) / duration,
           "request_goodput": (sum(is_good(o, slos_ms) for o in good) / duration) if slos_ms else None,
           "output_throughput": outputs_tok / duration, "total_token_throughput": (inputs + outputs_tok) / duration,
           "max_output_tokens_per_s": peak_tok, "max_concurrent_requests": peak_conc}
    values = {"ttft": [o.ttft for o in good], "tpot": [tpot(o) for o in good if o.output_tokens > 1],
              "itl": [x for o in good for x in o.itl], "e2el": [o.latency for o in good]}
    for name in METRICS:
        res.update(describe(name, values[name], percentiles))
    res.update(diffusion_fields(good, percentiles))
    res.update(accuracy_fields(samples, outputs))
    res.update(lists)
    return res


def parse_goodput(items: list[str] | None) -> dict[str, float] | None:
    """``["ttft:500", "tpot:50"]`` -> {"ttft": 500.0, "tpot": 50.0} (milliseconds)."""
    if not items:
        return None
    slos = {}
    for item in items:
        key, sep, value = item.partition(":")
        if not sep or key not in SLO_KEYS:
            raise ValueError(f"--goodput {item!r}: use NAME:MS with NAME in {', '.join(SLO_KEYS)}")
        ms = float(value)
        if not math.isfinite(ms) or ms < 0:
            raise ValueError(f"--goodput {item!r}: the limit must be a non-negative number of ms")
        slos[key] = ms
    return slos
