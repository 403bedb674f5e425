"""Step profile: where one engine iteration's time goes, per model, preset and concurrency.

    python -m benchmarks.step_profile --concurrency 1 8 32 64 --preset exact fast --json out.json

Phases (exclusive wall time, milliseconds per iteration): ``schedule`` (Scheduler.schedule), ``pack``
(forward_inputs.build_inputs), ``forward`` (the model and its LM head, attention excluded), ``attention``
(ops.attention inside the forward), ``commit`` (commit_policy.propose + select), ``update``
(Scheduler.update), ``output`` (OutputProcessor.process, detokenization excluded), ``detok`` (the
incremental detokenizer) and ``other`` (the rest of the ``LLM.generate`` loop: step bookkeeping, stats).
The engine is not edited: the phases are timers wrapped around those functions for the run. ``host`` is
everything but forward + attention, as a share of the iteration. On CUDA every phase ends with a device
synchronize, so device time is charged to the phase that queued it. ``--clock cpu`` times with the process's
CPU time instead of wall time: with ``--threads 1`` it barely moves with other jobs' load on a shared machine.

Work per request: ``exact`` = LLaDA's fixed schedule, steps = max_tokens, no early stop (every step runs
its forward); ``fast`` = the fast preset (prefix cache, threshold 0.9, early stop). Prompts: the task
suite's held-out prompts through the chat template, ``max(C, --min-prompts)`` per level, all queued at once.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path

import torch
from unmask.kernels import ops
from unmask.server.engine import commit_policy, model_runner
from unmask.server.engine.output_processor import OutputProcessor
from unmask.server.engine.scheduler import Scheduler
from unmask.server.tokenizer import IncrementalDetokenizer

from benchmarks.offline import add_workload_args
from recipes.tasks import heldout_set
from unmask import LLM, DiffusionParams

PHASES = ("schedule", "pack", "forward", "attention", "commit", "update", "output", "detok", "other")


class PhaseTimer:
    """Exclusive wall time per phase: a nested timed call's time is charged to it, not to its caller."""

    def __init__(self, sync, clock=time.perf_counter):
        self.sync, self.clock, self.acc, self.stack = sync, clock, dict.fromkeys(PHASES, 0.0), []

    def wrap(self, phase: str, fn):
        def timed(*args, **kwargs):
            self.sync()
            self.stack.append(0.0)
            t0 = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                dt = self.clock() - t0
                child = self.stack.pop()
                self.acc[phase] += dt - child
                if self.stack:
                    self.stack[-1] += dt
        return timed


@contextlib.contextmanager
def patched(timer: PhaseTimer, model):
    """Wrap the phase functions for the duration of the block; restore them after."""
    targets = [(Scheduler, "schedule", "schedule"), (Scheduler, "update", "update"),
               (model_runner, "build_inputs", "pack"), (ops, "attention", "attention"),
               (commit_policy, "propose", "commit"), (commit_policy, "select", "commit"),
               (OutputProcessor, "process", "output"), (IncrementalDetokenizer, "add", "detok"),
               (IncrementalDetokenizer, "flush", "detok")]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in targets]
    for obj, name, phase in targets:
        setattr(obj, name, timer.wrap(phase, getattr(obj, name)))
    model.forward = timer.wrap("forward", model.forward)  # instance attributes: nn.Module.__call__ finds them
    model.compute_logits = timer.wrap("forward", model.compute_logits)
    try:
        yield
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)
        del model.forward, model.compute_logits


def params_for(preset: str, max_tokens: int, block_length: int) -> DiffusionParams:
    if preset == "exact":
        return DiffusionParams(max_tokens=max_tokens, block_length=block_length, steps=max_tokens, early_stop=False)
    return DiffusionParams(max_tokens=max_tokens, block_length=block_length, preset="fast")


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def profile_level(llm: LLM, prompts: list[list[int]], p: DiffusionParams, device: str, clock: str = "wall") -> dict:
    """One closed-loop run of every prompt (all queued at once) under the phase timers."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    timer = PhaseTimer(sync, CLOCKS[clock])
    it0, tok0 = llm.engine.stats.iterations, llm.engine.stats.forward_tokens
    with patched(timer, llm.engine.model):
        sync()
        t0 = timer.clock()
        res = llm.generate(prompts, p)
        sync()
        wall = timer.clock() - t0
    iters = llm.engine.stats.iterations - it0
    timer.acc["other"] = wall - sum(timer.acc.values())
    ms = {k: round(1000 * v / iters, 3) for k, v in timer.acc.items()}
    it_ms = 1000 * wall / iters
    host = it_ms - ms["forward"] - ms["attention"]
    return {"iterations": iters, "iteration_ms": round(it_ms, 3), "phases_ms": ms,
            "host_share": round(host / it_ms, 3), "wall_s": round(wall, 3),
            "tokens_per_iteration": round((llm.engine.stats.forward_tokens - tok0) / iters, 1),
            "output_tokens_per_s": round(sum(len(r.token_ids) for r in res) / wall, 2)}


def run(args) -> dict:
    rows = []
    for model in args.models:
        for c in args.concurrency:
            llm = LLM(model, device=args.device, dtype=args.dtype, max_num_seqs=c)
            examples = heldout_set(args.n_per_task, seed=args.seed)
            n = max(c, args.min_prompts)
            prompts = [llm.tokenizer.encode_chat([{"role": "user", "content": e.prompt}])
                       for e in (examples * (n // len(examples) + 1))[:n]]
            for preset in args.preset:
                p = params_for(preset, args.max_tokens, args.block_length)
                llm.generate(prompts[:min(n, 2)], p)  # warm-up: allocator growth, lazy imports
                row = {"model": model, "preset": preset, "concurrency": c, "prompts": n,
                       **profile_level(llm, prompts, p, args.device, args.clock)}
                rows.append(row)
                print(table_row(row), flush=True)
    return {"machine": machine(args.device), "device": args.device, "clock": args.clock, "max_tokens": args.max_tokens,
            "block_length": args.block_length, "rows": rows}


def machine(device: str) -> str:
    m = f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads, torch {torch.__version__}"
    if device.startswith("cuda"):
        m += f", {torch.cuda.get_device_name(device)}"
    return m


HEADER = ("| model | preset | C | iter ms | " + " | ".join(PHASES) + " | host share | tok/iter | out tok/s |\n"
          "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in PHASES) + " | ---: | ---: | ---: |")


def table_row(r: dict) -> str:
    cells = [r["model"], r["preset"], str(r["concurrency"]), f"{r['iteration_ms']:.2f}"]
    cells += [f"{r['phases_ms'][k]:.2f}" for k in PHASES]
    cells += [f"{100 * r['host_share']:.0f}%", str(r["tokens_per_iteration"]), str(r["output_tokens_per_s"])]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["tiny-llada-instruct", "tiny-llada-moe-instruct"])
    ap.add_argument("--preset", nargs="+", choices=["exact", "fast"], default=["exact", "fast"])
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32, 64])
    ap.add_argument("--min-prompts", type=int, default=8, help="prompts per level: max(C, this)")
    add_workload_args(ap)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="wall time, or the process's CPU time")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    print(HEADER, flush=True)
    res = run(args)
    print(f"machine: {res['machine']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
