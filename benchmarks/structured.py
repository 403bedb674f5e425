"""Structured outputs: what a JSON-schema constraint costs and saves on the fast preset, in one run.

    python -m benchmarks.structured --concurrency 16 --rounds 3 --baseline-rev ebae480~1 --json out.json

Part 1: the same task-suite prompts (embedded model, chat template) answered with a JSON-heavy schema and without
one, C at a time, A/B rounds alternating the order: answer tokens per forward (committed answer tokens / NFE),
tokens/s (answer tokens / wall time and / process CPU time, which moves less with other jobs' load), the share of
answer tokens the grammar forced (committed with no forward), and grammar time per step (host critical path:
forcing, waiting for the masks, verifying runs; and the mask worker's time, which overlaps the forward).

Part 2 (``--baseline-rev``): unconstrained throughput with the feature present vs absent: the same unconstrained
workload in subprocesses on exports (``git archive``; nothing in the repository changes) of ``--present-rev``
(default HEAD) and of ``--baseline-rev``, alternated, medians of committed tokens per process CPU second (fast preset
without early stop, so every block is decoded).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.offline import add_workload_args
from recipes.tasks import heldout_set
from unmask import LLM, DiffusionParams

SCHEMA = {"type": "object", "properties": {
    "task": {"enum": ["arithmetic", "reverse", "sort", "uppercase", "capital", "country", "poem"]},
    "answer": {"type": "string", "pattern": "^[A-Za-z0-9 ]{1,12}$"},
    "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
    "verified": {"type": "boolean"},
    "tags": {"type": "array", "items": {"enum": ["easy", "hard", "math", "text"]}, "maxItems": 2}},
    "required": ["task", "answer", "confidence", "verified", "tags"], "additionalProperties": False}
"""A JSON-heavy answer: fixed keys, enums, a bounded string, number, boolean and array."""


def prompts_of(llm: LLM, n: int, seed: int, per_task: int = 8) -> list[list[int]]:
    """The first n held-out task-suite prompts, rendered with the chat template."""
    return [llm.tokenizer.encode_chat([{"role": "user", "content": e.prompt}])
            for e in heldout_set(per_task, seed)[:n]]


def timed(llm: LLM, prompts: list[list[int]], params: DiffusionParams) -> dict:
    """One engine run of all prompts: wall and process CPU seconds, answer tokens, NFE, iterations."""
    st0 = dict(vars(llm.engine.stats))
    t0, c0 = time.perf_counter(), time.process_time()
    outs = llm.generate(prompts, params)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"wall_s": wall, "cpu_s": cpu, "tokens": sum(len(o.token_ids) for o in outs),
            "nfe": sum(o.nfe for o in outs), "iterations": llm.engine.stats.iterations - st0["iterations"],
            "texts": [o.text for o in outs], "finish": [o.finish_reason for o in outs]}


def constrained_part(args) -> dict:
    llm = LLM(args.model, device=args.device, dtype=args.dtype, max_num_seqs=args.concurrency)
    prompts = prompts_of(llm, args.concurrency, args.seed)
    free = DiffusionParams(max_tokens=args.max_tokens, block_length=args.block_length, preset="fast")
    json_p = dataclasses.replace(free, structured_outputs={"json": SCHEMA})
    timed(llm, prompts[:2], json_p), timed(llm, prompts[:2], free)  # compile and warm up outside the timing
    runs: dict[str, list[dict]] = {"json": [], "free": []}
    grammar = llm.engine.grammars.stats
    g0 = dict(vars(grammar))
    for r in range(args.rounds):
        for name in (("json", "free") if r % 2 == 0 else ("free", "json")):
            runs[name].append(timed(llm, prompts, json_p if name == "json" else free))
    g = {k: v - g0[k] for k, v in vars(grammar).items()}
    valid = sum(_valid(t) for run in runs["json"] for t in run["texts"])

    def summary(rs: list[dict]) -> dict:
        tok = rs[0]["tokens"]
        return {"answer_tokens": tok, "nfe": rs[0]["nfe"], "iterations": rs[0]["iterations"],
                "tokens_per_forward": round(tok / max(rs[0]["nfe"], 1), 3),
                "tokens_per_s_wall": round(statistics.median(tok / r["wall_s"] for r in rs), 1),
                "tokens_per_cpu_s": round(statistics.median(tok / r["cpu_s"] for r in rs), 1),
                "finish": {f: rs[0]["finish"].count(f) for f in set(rs[0]["finish"])}}

    answer = g["forced_tokens"] + g["sampled_tokens"]
    return {"constrained": summary(runs["json"]), "unconstrained": summary(runs["free"]),
            "valid_json": f"{valid}/{len(prompts) * args.rounds}",
            "forced_share": round(g["forced_tokens"] / max(answer, 1), 3),
            "runs_cut_by_a_refused_proposal": round(g["rejected_proposals"] / max(g["sequence_steps"], 1), 3),
            "grammar_host_ms_per_step": round(1000 * g["host_s"] / max(g["steps"], 1), 3),
            "mask_worker_ms_per_step": round(1000 * g["mask_s"] / max(g["steps"], 1), 3),
            "constrained_steps": g["steps"], "sample": runs["json"][0]["texts"][:3]}


def _valid(text: str) -> bool:
    try:
        import jsonschema
        jsonschema.validate(json.loads(text), SCHEMA)
        return True
    except Exception:  # noqa: BLE001 - any failure means not valid
        return False


def free_only(args) -> dict:
    """The unconstrained workload alone (what part 2 runs in each subprocess): fast preset without early stop, so
    every block of every request is decoded (a workload of many steps); throughput in committed tokens."""
    llm = LLM(args.model, device=args.device, dtype=args.dtype, max_num_seqs=args.concurrency)
    prompts = prompts_of(llm, args.concurrency, args.seed)
    p = DiffusionParams(max_tokens=args.max_tokens, block_length=args.block_length, preset="fast", early_stop=False)
    timed(llm, prompts[:2], p)
    c0 = time.process_time()
    outs = llm.generate(prompts, p)
    return {"cpu_s": time.process_time() - c0, "tokens": sum(o.num_committed for o in outs),
            "nfe": sum(o.nfe for o in outs), "texts": [o.text for o in outs]}


def baseline_part(args) -> dict:
    """Unconstrained fast runs on this checkout vs an export of ``--baseline-rev``, alternated subprocesses."""
    root = Path(__file__).resolve().parent.parent
    trees = {name: Path(tempfile.mkdtemp(prefix=f"unmask-{name}-")) for name in ("present", "absent")}
    for name, rev in (("present", args.present_rev), ("absent", args.baseline_rev)):
        archive = subprocess.run(["git", "-C", str(root), "archive", rev], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(trees[name])], input=archive.stdout, check=True)
        shutil.copy(Path(__file__), trees[name] / "benchmarks" / "structured.py")  # this script on both
    flags = ["--free-only", "--concurrency", str(args.concurrency), "--max-tokens", str(args.max_tokens),
             "--block-length", str(args.block_length),
             "--seed", str(args.seed), "--dtype", args.dtype, "--device", args.device]
    if args.model:
        flags += ["--model", args.model]
    if args.threads:
        flags += ["--threads", str(args.threads)]
    sides: dict[str, list[dict]] = {"present": [], "absent": []}
    try:
        for r in range(args.rounds):
            for name in (("present", "absent") if r % 2 == 0 else ("absent", "present")):
                out = subprocess.run([sys.executable, "-m", "benchmarks.structured", *flags], cwd=trees[name], check=True,
                                     capture_output=True, text=True)
                sides[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        for tree in trees.values():
            shutil.rmtree(tree, ignore_errors=True)
    med = {k: statistics.median(s["tokens"] / s["cpu_s"] for s in v) for k, v in sides.items()}
    same = sides["present"][0]["texts"] == sides["absent"][0]["texts"]
    return {"present_rev": args.present_rev, "baseline_rev": args.baseline_rev, "tokens_per_cpu_s": {k: round(v, 1) for k, v in med.items()},
            "ratio_present_vs_absent": round(med["present"] / med["absent"], 3), "identical_outputs": same,
            "runs": {k: [round(s["tokens"] / s["cpu_s"], 1) for s in v] for k, v in sides.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    add_workload_args(ap)
    ap.set_defaults(max_tokens=96)  # room for the JSON answer (up to three blocks)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--baseline-rev", default=None, help="also compare unconstrained throughput with this revision")
    ap.add_argument("--present-rev", default="HEAD", help="the revision with the feature (part 2)")
    ap.add_argument("--baseline-only", action="store_true", help="run part 2 alone")
    ap.add_argument("--free-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.free_only:
        print(json.dumps(free_only(args)))
        return
    if args.baseline_only:
        print(json.dumps(baseline_part(args), indent=1))
        return
    out = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                      f"{torch.get_num_threads()} threads", "concurrency": args.concurrency,
           "max_tokens": args.max_tokens, "rounds": args.rounds, "part1": constrained_part(args)}
    if args.baseline_rev:
        out["part2"] = baseline_part(args)
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
