"""Shared plumbing for the kernel benchmarks: timing, roofline columns, table and JSON output.

Each ``bench_<op>.py`` compares ``torch_ref`` (and, where one exists, the off-the-shelf torch path a
user would reach for) with ``triton_ops`` on CUDA, at LLaDA-8B and LLaDA-MoE shapes. Memory-bound ops
are judged in GB/s against the H100 SXM HBM3 peak (3.35 TB/s); GEMM-like ones also in TFLOP/s.
Always state the GPU next to any number quoted from these tables.
"""
import argparse
import functools
import json

import torch

H100_HBM_GBPS = 3350.0  # H100 SXM HBM3 peak, GB/s

LLADA_8B = dict(name="llada-8b", heads=32, kv_heads=32, head_dim=128, hidden=4096, vocab=126464, inter_dense=12288)
LLADA_MOE = dict(name="llada-moe", heads=16, kv_heads=16, head_dim=128, hidden=2048, vocab=157184,
                 experts=64, top_k=8, inter=1024)
BATCHES = (1, 8, 32, 64)
BLOCK = 32  # diffusion block length (new tokens per sequence in a cached step)
PREFIX = 512  # cached prefix length


def parse_args(doc: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH (rewritten after each row)")
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    return p.parse_args()


def time_ms(fn, quick: bool = False) -> float:
    """Median milliseconds per call; Triton's do_bench flushes L2 between calls (imported here, not at import).
    Short budgets (the one-shot GPU check gives each bench under a minute, compiles included)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=3 if quick else 10, rep=10 if quick else 40, return_mode="median")


def _capture(calls, reps: int) -> "torch.cuda.CUDAGraph":
    """One CUDA graph replaying ``calls`` (in order) ``reps`` times."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            for call in calls:
                call()
    return graph


def _replay_ms(graph, trials: int) -> float:
    """Median wall milliseconds of one replay of ``graph`` over ``trials`` replays."""
    times = []
    for _ in range(trials):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


@functools.lru_cache(maxsize=None)
def _l2_flush(reps: int, trials: int):
    """(flush call, ms of a graph of ``reps`` flushes alone): a 256 MB memset evicts the 50 MB L2. Built and
    timed once per process; every ``time_graph_ms`` subtracts the same baseline."""
    buf = torch.empty(64 * 2 ** 20, dtype=torch.int32, device="cuda")
    flush = buf.zero_
    return flush, _replay_ms(_capture((flush,), reps), trials)


def time_graph_ms(fn, quick: bool = False) -> float:
    """GPU milliseconds per call with the host's launch cost removed: ``reps`` calls captured in one CUDA
    graph, each preceded by an L2 flush inside the graph, minus the graph of flushes alone. This is how a
    step runs in the engine (CUDA graphs), so it is the figure to hold against the roofline where
    ``time_ms`` is dominated by Python launch overhead (small batches). NaN, with the error printed, if
    ``fn`` cannot be captured."""
    reps, trials = (5, 3) if quick else (20, 7)
    try:
        flush, flush_ms = _l2_flush(reps, trials)
        side = torch.cuda.Stream()  # warm up (compiles, allocator, cuBLAS workspaces) off the capture stream
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        return max(0.0, (_replay_ms(_capture((flush, fn), reps), trials) - flush_ms) / reps)
    except RuntimeError as exc:  # e.g. a host sync inside fn
        print(f"# graph capture failed: {type(exc).__name__}: {exc}", flush=True)
        return float("nan")


def row(bench: str, shape: str, provider: str, ms: float, nbytes: float = 0.0, flops: float = 0.0) -> dict:
    gbps = nbytes / ms / 1e6 if nbytes else 0.0
    return dict(bench=bench, shape=shape, provider=provider, ms=round(ms, 5), gbps=round(gbps, 1),
                pct_hbm=round(100 * gbps / H100_HBM_GBPS, 1), tflops=round(flops / ms / 1e9, 2) if flops else 0.0)


COLS = (("bench", 16), ("shape", 44), ("provider", 22), ("ms", 10), ("gbps", 8), ("pct_hbm", 8), ("tflops", 8))


class Report:
    """Prints each row as it is measured and keeps the JSON file current, so a run cut short by a timeout
    still leaves every finished measurement behind."""

    def __init__(self, json_path: str | None):
        self.json_path, self.rows = json_path, []
        self.device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        print(f"# device: {self.device}; % HBM is of {H100_HBM_GBPS:.0f} GB/s", flush=True)
        print("  ".join(c.ljust(w) for c, w in COLS), flush=True)

    def add(self, rows: list) -> None:
        for r in rows:
            self.rows.append(r)
            print("  ".join(str(r[c]).ljust(w) for c, w in COLS), flush=True)
        if self.json_path:
            with open(self.json_path, "w") as f:
                json.dump({"device": self.device, "rows": self.rows}, f, indent=1)


def require_cuda() -> torch.device:
    if not torch.cuda.is_available():
        raise SystemExit("kernel benchmarks need a CUDA device")
    return torch.device("cuda")


def run_models(doc: str, *benches, batch_ok=lambda batch: True) -> None:
    """A bench script's main: parse the common flags, then for LLaDA-8B and LLaDA-MoE and every batch passing
    ``batch_ok``, add the rows of each ``bench(model, batch, device, quick)``."""
    args = parse_args(doc)
    dev = require_cuda()
    out = Report(args.json)
    for model in (LLADA_8B, LLADA_MOE):
        for batch in filter(batch_ok, args.batches):
            for bench in benches:
                out.add(bench(model, batch, dev, args.quick))
