"""Disconnect storm: hundreds of clients vanish at random points; the server must come back clean.

    python -m benchmarks.disconnect_storm --spawn --clients 400 --max-num-seqs 4 --json out.json
    python -m benchmarks.disconnect_storm --base-url http://127.0.0.1:8000 --clients 200

Each client sends a long generation (prefix cache on, so cache pages are really taken) and then goes
away in one of four ways: before the first byte (cancelled right after sending), while queued (a small
``--max-num-seqs`` keeps most requests waiting), mid-stream (after a few SSE chunks), or a non-streamed
request cut by a client timeout. A few clients stay to the end. Afterwards ``/metrics`` must show
running = waiting = 0 and ``vllm:kv_cache_usage_perc`` back at its idle level, and a reference request
must get the same answer as before the storm.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.load.report import save

MODES = ("before_first_byte", "queued", "mid_stream", "non_stream_timeout", "complete")
LONG = {"max_tokens": 96, "block_length": 8, "steps": 96, "cache": "prefix", "temperature": 0}
REFERENCE = {"prompt": "ALPHA BETA", "max_tokens": 16, "temperature": 0}
GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")


def gauges(base_url: str) -> dict[str, float]:
    """The running/waiting/KV-usage gauges of ``/metrics`` (summed over label sets)."""
    from prometheus_client.parser import text_string_to_metric_families
    text = httpx.get(base_url.rstrip("/") + "/metrics", timeout=10).text
    out = dict.fromkeys(GAUGES, 0.0)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in out:
                out[s.name] += s.value
    return out


def reference_answer(base_url: str, headers: dict) -> str:
    r = httpx.post(base_url.rstrip("/") + "/v1/completions", json=REFERENCE, headers=headers, timeout=120)
    r.raise_for_status()
    return r.json()["choices"][0]["text"]


async def _client(client: httpx.AsyncClient, mode: str, rng: random.Random, i: int) -> str:
    """One client; returns what actually happened ('vanished' or 'completed')."""
    body = {**LONG, "prompt": f"CLIENT {i} " + "SEA " * rng.randint(1, 8), "stream": mode != "non_stream_timeout"}
    if mode in ("before_first_byte", "queued"):
        delay = rng.uniform(0.0, 0.02) if mode == "before_first_byte" else rng.uniform(0.05, 1.0)
        try:
            await asyncio.wait_for(_drain(client, body), delay)
            return "completed"
        except asyncio.TimeoutError:
            return "vanished"
    if mode == "non_stream_timeout":
        try:
            await client.post("/v1/completions", json=body, timeout=rng.uniform(0.05, 1.0))
            return "completed"
        except httpx.TimeoutException:
            return "vanished"
    chunks = rng.randint(1, 4) if mode == "mid_stream" else None
    return await _drain(client, body, chunks)


async def _drain(client: httpx.AsyncClient, body: dict, chunks: int | None = None) -> str:
    """Stream a completion; leave after ``chunks`` data events (None = read to the end)."""
    seen = 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                seen += 1
                if chunks is not None and seen >= chunks and line != "data: [DONE]":
                    return "vanished"  # leaving the block closes the connection mid-stream
    return "completed"


async def storm(base_url: str, clients: int, seed: int, headers: dict, parallel: int) -> tuple[dict, dict]:
    """Run the storm; returns counts per mode/outcome and the peak gauges seen meanwhile."""
    rng = random.Random(seed)
    sem = asyncio.Semaphore(parallel)
    counts: dict[str, int] = {}
    limits = httpx.Limits(max_connections=parallel, max_keepalive_connections=0)

    async def one(client: httpx.AsyncClient, i: int) -> None:
        mode = rng.choice(MODES[:-1]) if rng.random() > 0.05 else "complete"
        crng = random.Random(rng.random())
        async with sem:
            try:
                outcome = await _client(client, mode, crng, i)
            except Exception as exc:  # noqa: BLE001 - a client-side failure is recorded, not fatal
                outcome = "error:" + type(exc).__name__
        key = f"{mode}/{outcome}"
        counts[key] = counts.get(key, 0) + 1

    peak = dict.fromkeys(GAUGES, 0.0)
    done = asyncio.Event()

    async def sample() -> None:  # peaks prove the storm really queued requests and took cache pages
        while not done.is_set():
            for k, v in (await asyncio.to_thread(gauges, base_url)).items():
                peak[k] = max(peak[k], v)
            await asyncio.sleep(0.1)

    async with httpx.AsyncClient(base_url=base_url, timeout=120, headers=headers, limits=limits) as client:
        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(one(client, i) for i in range(clients)))
        done.set()
        await sampler
    return counts, peak


def wait_idle(base_url: str, idle_kv: float, timeout: float) -> tuple[dict[str, float], float]:
    """Poll until running = waiting = 0 and KV usage <= its idle level; returns (gauges, seconds)."""
    t0 = time.monotonic()
    while True:
        g = gauges(base_url)
        clean = (g["vllm:num_requests_running"] == 0 and g["vllm:num_requests_waiting"] == 0
                 and g["vllm:kv_cache_usage_perc"] <= idle_kv + 1e-9)
        if clean or time.monotonic() - t0 > timeout:
            return g, time.monotonic() - t0
        time.sleep(0.05)


def run_storm(base_url: str, clients: int, seed: int = 0, api_key: str | None = None,
              parallel: int = 64, idle_timeout: float = 30.0) -> dict:
    """Reference answer, idle gauges, storm, recovery checks: the summary dict (``ok`` says pass)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    before_text = reference_answer(base_url, headers)
    idle = gauges(base_url)
    t0 = time.perf_counter()
    counts, peak = asyncio.run(storm(base_url, clients, seed, headers, parallel))
    storm_s = time.perf_counter() - t0
    after, settle_s = wait_idle(base_url, idle["vllm:kv_cache_usage_perc"], idle_timeout)
    after_text = reference_answer(base_url, headers)
    vanished = sum(v for k, v in counts.items() if k.endswith("/vanished"))
    errors = sum(v for k, v in counts.items() if "/error:" in k)
    ok = (after["vllm:num_requests_running"] == 0 and after["vllm:num_requests_waiting"] == 0
          and after["vllm:kv_cache_usage_perc"] <= idle["vllm:kv_cache_usage_perc"] + 1e-9
          and after_text == before_text and errors == 0)
    return {"clients": clients, "seed": seed, "parallel": parallel, "disconnects": vanished,
            "completed": sum(v for k, v in counts.items() if k.endswith("/completed")), "client_errors": errors,
            "by_mode": dict(sorted(counts.items())), "storm_s": round(storm_s, 2),
            "settle_s": round(settle_s, 2), "peak_gauges": peak, "idle_gauges": idle, "after_gauges": after,
            "reference_unchanged": after_text == before_text, "ok": ok}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--base-url")
    g.add_argument("--spawn", nargs="?", const="", metavar="MODEL", help="start a server (default: tiny random)")
    p.add_argument("--clients", type=int, default=400)
    p.add_argument("--parallel", type=int, default=64, help="clients connected at once")
    p.add_argument("--max-num-seqs", type=int, default=4, help="spawned server's slots (small = queueing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--api-key")
    p.add_argument("--server-args", default="--device cpu --dtype float32 --kv-cache-memory 32M")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.base_url:
        result = run_storm(args.base_url, args.clients, args.seed, args.api_key, args.parallel)
    else:
        from benchmarks.load.launch import ServerProcess
        from benchmarks.load_test import tiny_checkpoint
        with tempfile.TemporaryDirectory() as tmp:
            model = args.spawn or str(tiny_checkpoint(Path(tmp)))
            flags = [*args.server_args.split(), "--max-num-seqs", str(args.max_num_seqs), "--disable-access-log"]
            with ServerProcess(model, flags, Path(tmp) / "server.log") as srv:
                result = run_storm(srv.base_url, args.clients, args.seed, None, args.parallel)
                if "Traceback" in srv.log_path.read_text(errors="replace"):
                    result["ok"], result["server_traceback"] = False, srv.log_tail()
        result["max_num_seqs"] = args.max_num_seqs
    print(json.dumps(result, indent=1))
    if args.json:
        save(result, str(args.json.parent), args.json.name)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
