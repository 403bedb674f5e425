"""Admission under a hostile client: a well-behaved client at a fixed rate next to a client flooding
requests the server must refuse, against ``unmask serve --max-queue 16``.

    python -m benchmarks.hostile_load --duration 20 --rate 4 --json benchmarks/results/cpu-amd-epyc-2c/hostile_load.json

The well-behaved client sends chat requests (task-suite prompts, ``max_tokens`` 32) open-loop at ``--rate``
per second; each must answer 200. The hostile client runs ``--hostile-workers`` connections that send, in a
loop and as fast as the server answers: ``n`` above what the queue can ever hold (400 ``too_many_choices``),
a 2 MB prompt (400 ``context_length_exceeded`` before tokenizing), an out-of-range token id and a string
``max_tokens`` (``n`` = 100 exceeds ``--max-num-seqs`` 64 + ``--max-queue`` 16). The run first measures
the well-behaved client alone (baseline), then with the flood, and reports success rate, latency
percentiles and the refused-request rate of each phase, plus the server's NFE counter (a refused request
must add nothing to it).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.load.launch import ServerProcess, scrape

HOSTILE_BODIES = (
    ("/v1/completions", {"prompt": "A", "max_tokens": 8, "n": 100}),
    ("/v1/completions", {"prompt": "hello world " * 180_000, "max_tokens": 8}),
    ("/v1/completions", {"prompt": [1, 10 ** 9], "max_tokens": 8}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "8"}),
)
GOOD_PROMPTS = ("What is 12 + 30?", "Write these letters backwards: i h p", "Put in order: 9 2 5",
                "What is 60 + 78?")


async def _good_client(base: str, rate: float, duration: float) -> list[tuple[int, float]]:
    """Open-loop: one request every 1/rate s for ``duration`` s -> (status, latency s) per request."""
    results: list[tuple[int, float]] = []
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        async def one(i: int) -> None:
            t0 = time.monotonic()
            body = {"messages": [{"role": "user", "content": GOOD_PROMPTS[i % len(GOOD_PROMPTS)]}], "max_tokens": 32}
            try:
                r = await client.post("/v1/chat/completions", json=body)
                results.append((r.status_code, time.monotonic() - t0))
            except httpx.HTTPError:
                results.append((0, time.monotonic() - t0))
        tasks, start, i = [], time.monotonic(), 0
        while time.monotonic() - start < duration:
            tasks.append(asyncio.create_task(one(i)))
            i += 1
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
        await asyncio.gather(*tasks)
    return results


async def _hostile_client(base: str, workers: int, stop: asyncio.Event) -> dict[int, int]:
    """Flood refused requests until ``stop``; -> status code -> count."""
    counts: dict[int, int] = {}
    bodies = [(path, json.dumps(body).encode()) for path, body in HOSTILE_BODIES]

    async def worker(k: int) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            j = k
            while not stop.is_set():
                path, body = bodies[j % len(bodies)]
                j += 1
                r = await client.post(path, content=body, headers={"content-type": "application/json"})
                counts[r.status_code] = counts.get(r.status_code, 0) + 1
    await asyncio.gather(*[worker(k) for k in range(workers)])
    return counts


def _summary(results: list[tuple[int, float]]) -> dict:
    ok = [lat for status, lat in results if status == 200]
    lat = sorted(ok) or [float("nan")]
    return {"requests": len(results), "success": len(ok) / len(results) if results else 0.0,
            "statuses": sorted({s for s, _ in results}), "p50_s": statistics.median(lat),
            "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))]}


async def _phase(base: str, args, hostile: bool) -> dict:
    stop = asyncio.Event()
    flood = asyncio.create_task(_hostile_client(base, args.hostile_workers, stop)) if hostile else None
    t0 = time.monotonic()
    good = await _good_client(base, args.rate, args.duration)
    elapsed = time.monotonic() - t0
    stop.set()
    counts = await flood if flood else {}
    out = {"good": _summary(good)}
    if hostile:
        out["hostile"] = {"statuses": counts, "per_s": sum(counts.values()) / elapsed}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="default: the embedded tiny-llada-instruct")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    ap.add_argument("--rate", type=float, default=4.0, help="well-behaved requests per second")
    ap.add_argument("--hostile-workers", type=int, default=4)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    flags = ["--max-queue", "16", "--max-num-seqs", "64", "--disable-access-log", "--log-level", "warning"]
    log = Path(tempfile.mkdtemp(prefix="unmask-hostile-")) / "server.log"
    with ServerProcess(args.model, flags, log) as srv:
        base = srv.base_url
        report = {"rate": args.rate, "duration_s": args.duration, "flags": flags}
        report["baseline"] = asyncio.run(_phase(base, args, hostile=False))
        nfe0 = scrape(base).get("unmask:nfe_total", 0.0)
        report["under_flood"] = asyncio.run(_phase(base, args, hostile=True))
        report["nfe_during_flood"] = scrape(base).get("unmask:nfe_total", 0.0) - nfe0
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
