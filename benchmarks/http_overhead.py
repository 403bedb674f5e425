"""HTTP overhead: output tokens/s through ``unmask serve`` at concurrency C vs the offline engine at the
same concurrency, in one run, on the same requests.

    python -m benchmarks.http_overhead --concurrency 32 --json benchmarks/results/http_overhead.json

Offline: one Engine with ``max_num_seqs=C`` and every request queued at once (C run, the rest wait: a
closed loop with instant refill), stepped on a worker thread like the server's engine loop. Server: a real ``unmask serve --max-num-seqs C`` subprocess and C
client workers (asyncio + httpx) that stream each request with ``include_usage``, as ``vllm bench serve``
does; tokens are ``usage.completion_tokens``. The two runs never overlap, and ``--repeat`` alternates
them so both see the same background load. Besides the wall-clock ratio (the figure asked for), the CPU
seconds per token of the engine alone vs the whole server process are compared: on a shared or small
machine (the client needs CPU too) that second ratio isolates the server's own overhead. Prompts are
token ids (no tokenizer differences); ``early_stop=false`` + ``logits_eos_inf`` make every request
denoise its whole canvas, so both sides do the same work. Default model: a random LLaDA-shaped checkpoint
(``--hidden``/``--layers``) large enough that the forward matters; ``--model`` picks another.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

from benchmarks.load.launch import free_port
from benchmarks.reference.checkpoints import write_checkpoint
from unmask.server.config import EngineConfig, SchedulerConfig
from unmask.server.engine.engine import Engine
from unmask.server.engine.params import DiffusionParams
from unmask.server.engine.client import Request


def model_path(args) -> str:
    """--model if given, else a random LLaDA-shaped checkpoint (--hidden/--layers): with random prompts
    its outputs fill the canvas, so both sides count the same, non-trivial number of tokens."""
    if args.model:
        return args.model
    d = Path(tempfile.mkdtemp(prefix="unmask-http-bench-"))
    write_checkpoint(d, "dense", seed=0, d=args.hidden, layers=args.layers, heads=max(args.hidden // 64, 1),
                     inter=int(args.hidden * 2.75), vocab=4096)
    return str(d)


def fields(args) -> dict:
    """The diffusion settings both sides use (HTTP body fields == DiffusionParams keywords)."""
    out = {"max_tokens": args.max_tokens, "block_length": args.block_length, "early_stop": False,
           "logits_eos_inf": True}
    if args.preset == "fast":
        out["preset"] = "fast"
    else:
        out["steps"] = args.steps or args.max_tokens
    return out


def make_prompts(args) -> list[list[int]]:
    gen = torch.Generator().manual_seed(args.seed)
    lens = torch.randint(args.prompt_len // 2, args.prompt_len * 3 // 2 + 1, (args.num_requests,), generator=gen)
    return [torch.randint(0, 60, (int(n),), generator=gen).tolist() for n in lens]


class Offline:
    """The engine without HTTP, in this process."""

    def __init__(self, args, model: str):
        cfg = EngineConfig(model=model, device=args.device, dtype=args.dtype,
                           scheduler=SchedulerConfig(max_num_seqs=args.concurrency))
        self.engine = Engine.from_config(cfg)
        self.params = DiffusionParams(**fields(args))
        self.runs = 0

    def _run(self, batch: list[list[int]]) -> tuple[float, int]:
        self.runs += 1
        for i, ids in enumerate(batch):
            self.engine.add_request(Request(f"run{self.runs}-{i}", tuple(ids), self.params))
        tokens, t0 = 0, time.perf_counter()
        while self.engine.has_unfinished():
            tokens += sum(len(o.new_token_ids) for o in self.engine.step())
        return time.perf_counter() - t0, tokens

    def measure(self, prompts: list[list[int]], warmup: int) -> dict:
        """Warm up, then one timed run, on a worker thread as the server's engine loop runs (torch's
        main-thread intra-op pool behaves differently, and badly on an oversubscribed CPU)."""
        out = []

        def work():
            self._run(prompts[:warmup])
            cpu0, st0 = time.process_time(), (self.engine.stats.nfe, self.engine.stats.iterations)
            wall, tokens = self._run(prompts)
            st = self.engine.stats
            out.append((wall, tokens, time.process_time() - cpu0, (st.nfe - st0[0]) / max(st.iterations - st0[1], 1)))
        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
        wall, tokens, cpu, batch = out[0]
        return {"wall_s": round(wall, 3), "output_tokens": tokens, "tokens_per_s": round(tokens / wall, 2),
                "engine_cpu_s": round(cpu, 2), "mean_batch": round(batch, 2)}


async def _one(client: httpx.AsyncClient, body: dict) -> tuple[int, float, float]:
    """One streamed request -> (completion tokens, ttft s, e2e s)."""
    t0, ttft, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and ttft is None:
                ttft = time.perf_counter() - t0
            if chunk.get("usage") and not chunk["choices"]:
                tokens = chunk["usage"]["completion_tokens"]
    return tokens, ttft or 0.0, time.perf_counter() - t0


async def _load(base: str, bodies: list[dict], concurrency: int) -> tuple[float, list]:
    queue: asyncio.Queue = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    results = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=3600, limits=limits) as client:
        async def worker():
            while not queue.empty():
                results.append(await _one(client, queue.get_nowait()))
        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        return time.perf_counter() - t0, results


def start_server(args, model: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "unmask.server", "serve", model, "--port", str(port), "--device", args.device,
           "--dtype", args.dtype, "--max-num-seqs", str(args.concurrency), "--disable-access-log",
           "--log-level", "warning", "--max-tokens-limit", str(max(4096, args.max_tokens))]
    proc = subprocess.Popen(cmd)
    base = f"http://127.0.0.1:{port}"
    from unmask.clients import Client
    with Client(base) as c:
        c.wait_ready(300)
    return proc, base


def cpu_seconds(pid: int) -> float:
    """user + system CPU time of a process (Linux /proc)."""
    fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields_[11]) + int(fields_[12])) / os.sysconf("SC_CLK_TCK")


def engine_counters(base: str) -> tuple[float, float]:
    """(NFE, engine iterations) from /metrics: their ratio is the mean batch occupancy."""
    from prometheus_client.parser import text_string_to_metric_families
    vals = {s.name: s.value for f in text_string_to_metric_families(httpx.get(base + "/metrics").text)
            for s in f.samples}
    return vals["unmask:nfe_total"], vals["unmask:engine_iterations_total"]


def served(args, proc: subprocess.Popen, base: str, prompts: list[list[int]]) -> dict:
    common = {**fields(args), "stream": True, "stream_options": {"include_usage": True}}
    bodies = [{"prompt": ids, **common} for ids in prompts]
    asyncio.run(_load(base, bodies[: args.concurrency], args.concurrency))  # warm-up
    server0, client0, m0 = cpu_seconds(proc.pid), time.process_time(), engine_counters(base)
    wall, res = asyncio.run(_load(base, bodies, args.concurrency))
    server_cpu, client_cpu, m1 = cpu_seconds(proc.pid) - server0, time.process_time() - client0, engine_counters(base)
    batch = (m1[0] - m0[0]) / max(m1[1] - m0[1], 1)
    tokens = sum(r[0] for r in res)
    return {"wall_s": round(wall, 3), "output_tokens": tokens, "tokens_per_s": round(tokens / wall, 2),
            "server_cpu_s": round(server_cpu, 2), "client_cpu_s": round(client_cpu, 2), "mean_batch": round(batch, 2),
            "mean_ttft_ms": round(1000 * statistics.mean(r[1] for r in res), 1),
            "mean_e2e_ms": round(1000 * statistics.mean(r[2] for r in res), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint or built-in name (default: a random-weight model, see --hidden)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--num-requests", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=32, help="mean prompt length (uniform ±50%%)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--steps", type=int, default=None, help="exact preset steps (default = max tokens)")
    ap.add_argument("--preset", choices=["exact", "fast"], default="exact")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--hidden", type=int, default=256, help="random model width (when no model is given)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1,
                    help="alternate offline/server runs this many times and compare medians (noisy machines)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    model = model_path(args)
    offs, srvs = compare(args, model, make_prompts(args))
    report(args, model, offs, srvs)


def compare(args, model: str, prompts: list[list[int]]) -> tuple[list[dict], list[dict]]:
    """Alternate offline and server runs ``--repeat`` times, so both see the same background load."""
    off_engine = Offline(args, model)
    proc, base = start_server(args, model)
    offs, srvs = [], []
    try:
        for _ in range(args.repeat):
            offs.append(off_engine.measure(prompts, args.concurrency))
            srvs.append(served(args, proc, base, prompts))
            print(f"offline : {offs[-1]}\nserver  : {srvs[-1]}")
    finally:
        proc.terminate()
        proc.wait(60)
    return offs, srvs


def report(args, model: str, offs: list[dict], srvs: list[dict]) -> None:
    off_tps = statistics.median(o["tokens_per_s"] for o in offs)
    srv_tps = statistics.median(s["tokens_per_s"] for s in srvs)
    ratio = srv_tps / off_tps
    # CPU seconds per token, engine alone vs the whole server process: robust to other load on the machine
    cpu_ratio = statistics.median(o["engine_cpu_s"] / o["output_tokens"] for o in offs) / statistics.median(
        s["server_cpu_s"] / s["output_tokens"] for s in srvs)
    res = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "benchmark": "http_overhead",
           "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
                      f"device {args.device}", "model": model, "settings": fields(args),
           "concurrency": args.concurrency, "num_requests": args.num_requests, "offline_runs": offs,
           "server_runs": srvs, "offline_tokens_per_s": off_tps, "server_tokens_per_s": srv_tps,
           "ratio": round(ratio, 3), "cpu_efficiency_ratio": round(cpu_ratio, 3)}
    print(f"median tokens/s offline={off_tps} server={srv_tps}; ratio server/offline = {ratio:.3f}; "
          f"CPU per token offline/server = {cpu_ratio:.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
