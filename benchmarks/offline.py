"""Offline throughput: the reference port one request at a time vs the engine at concurrency C, in one run.
The reference is the model family's own loop: LLaDA's ``generate`` (LLaDA, LLaDA-MoE), LLaDA2's block-causal
``generate`` without a cache (LLaDA2, with the threshold and steps the engine's request uses).

    python -m benchmarks.offline --model tiny-llada-instruct --preset exact --concurrency 32 --json out.json

Part 1 (embedded model, task-suite prompts through the chat template): useful tokens/s (generated tokens
before the first EOS/EoT), NFE, TPF, per-step latency and held-out accuracy for both; the ratio
engine / reference. Part 2 (``compute_bound``): a larger random-weight LLaDA-shaped model where the
forward dominates, random prompts, fixed steps, no early stop. Part 3 (``padded``, with ``--padded-rounds N``;
``--padded-only`` runs it alone): the engine's exact preset without early stop vs the padded-batch baseline
(``benchmarks/padded_baseline.py``, LLaDA's generate over left-padded batches of C prompts) on the same
prompts at equal work, N interleaved A/B rounds (the order alternates), medians and the ratio. Prints a table
and writes JSON whose top level holds ``ratio_vs_reference``, ``accuracy``, ``compute_bound`` and ``padded``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.padded_baseline import padded_run
from benchmarks.reference.checkpoints import write_checkpoint
from benchmarks.reference import llada2_generate
from benchmarks.reference.llada_generate import generate as reference_generate
from recipes.tasks import check, heldout_set
from unmask import LLM, DiffusionParams
from unmask.kernels import options
from unmask.server.models.attention_meta import AttentionMetadata, packed_positions


def reference_run(llm: LLM, prompts: list[list[int]], p: DiffusionParams) -> dict:
    """The family's reference generate() one request at a time, uncached; outputs cut at the first stop token."""
    model, cfg = llm.engine.model, llm.model_config
    calls = [0]  # forwards run (LLaDA's loop: exactly ``steps`` per request; LLaDA2's stops blocks early)

    def forward(x, attn_block=None):
        """x [B, L] -> logits [B, L, V]; ``attn_block``: block-causal attention with blocks of that size."""
        calls[0] += 1
        b, length = x.shape
        lens = [length] * b
        meta = AttentionMetadata.packed(lens, x.device)
        if attn_block is not None:
            meta.attn_blocks = torch.full((b,), attn_block, dtype=torch.int32, device=x.device)
        h = model(x.reshape(-1), packed_positions(lens, x.device), meta)
        return model.compute_logits(h).view(b, length, -1)

    def generate(prompt):
        """prompt [1, P] -> the reference's canvas [1, L]."""
        if cfg.family == "llada2":
            return llada2_generate.generate(forward, prompt, gen_length=p.max_tokens, block_length=p.block_length,
                                            steps=p.steps_per_block, threshold=llm.engine.family_rules.threshold(p),
                                            eos_early_stop=p.early_stop, mask_id=cfg.mask_token_id,
                                            eos_id=cfg.eos_token_id)
        return reference_generate(forward, prompt, steps=p.steps, gen_length=p.max_tokens,
                                  block_length=p.block_length, mask_id=cfg.mask_token_id, eos_id=cfg.eos_token_id,
                                  eot_id=cfg.eot_token_id or cfg.eos_token_id)

    outs, committed, t0 = [], 0, time.perf_counter()
    with torch.inference_mode(), options.use(llm.engine.runner.kernels):  # the engine's kernels, resolved once
        for ids in prompts:
            x = generate(torch.tensor([ids], device=llm.engine.device))  # [1, P] -> [1, L]
            gen = x[0, len(ids):len(ids) + p.max_tokens].tolist()
            committed += sum(t != cfg.mask_token_id for t in gen)  # an early stop leaves masks
            cut = next((i for i, t in enumerate(gen) if t in cfg.stop_token_ids), len(gen))
            outs.append(gen[:cut])
    wall = time.perf_counter() - t0
    nfe = calls[0]
    return {"wall_s": wall, "outputs": outs, "nfe": nfe, "steps": nfe, "committed": committed}


def engine_run(llm: LLM, prompts: list[list[int]], p: DiffusionParams) -> dict:
    st0 = dict(vars(llm.engine.stats))
    t0 = time.perf_counter()
    res = llm.generate(prompts, p)
    wall = time.perf_counter() - t0
    st = {k: v - st0[k] for k, v in vars(llm.engine.stats).items() if isinstance(v, int)}
    return {"wall_s": wall, "outputs": [r.token_ids for r in res], "texts": [r.text for r in res],
            "nfe": sum(r.nfe for r in res), "committed": sum(r.num_committed for r in res),
            "steps": st["iterations"]}


def summarise(name: str, run: dict) -> dict:
    toks = sum(len(o) for o in run["outputs"])
    out = {"name": name, "requests": len(run["outputs"]), "useful_tokens": toks, "wall_s": round(run["wall_s"], 3),
           "tokens_per_s": round(toks / run["wall_s"], 2), "nfe": run["nfe"],
           "tpf": round(run.get("committed", toks) / max(run["nfe"], 1), 3),
           "step_latency_ms": round(1000 * run["wall_s"] / max(run["steps"], 1), 3)}
    return out


def embedded_part(args) -> dict:
    llm = LLM(args.model, device=args.device, dtype=args.dtype, max_num_seqs=args.concurrency)
    examples = heldout_set(args.n_per_task, seed=args.seed)[: args.num_prompts]
    prompts = [llm.tokenizer.encode_chat([{"role": "user", "content": e.prompt}]) for e in examples]
    exact = DiffusionParams(max_tokens=args.max_tokens, block_length=args.block_length, steps=args.max_tokens)
    params = exact if args.preset == "exact" else DiffusionParams(max_tokens=args.max_tokens,
                                                                  block_length=args.block_length, preset="fast")
    for _ in range(args.warmup_runs):  # kernel compilation and allocator growth stay out of the timed runs
        reference_run(llm, prompts[:2], exact)
        engine_run(llm, prompts, params)
    ref = reference_run(llm, prompts, exact)
    eng = engine_run(llm, prompts, params)
    ref_acc = sum(check(e, llm.tokenizer.decode(o)) for e, o in zip(examples, ref["outputs"])) / len(examples)
    eng_acc = sum(check(e, t) for e, t in zip(examples, eng["texts"])) / len(examples)
    same = sum(a == b for a, b in zip(ref["outputs"], eng["outputs"]))
    r, e = summarise("reference (batch 1)", ref), summarise(f"engine ({args.preset}, C={args.concurrency})", eng)
    return {"reference": r, "engine": e, "identical_outputs": same, "accuracy": {"reference": ref_acc, "engine": eng_acc},
            "ratio_vs_reference": round(e["tokens_per_s"] / max(r["tokens_per_s"], 1e-9), 2)}


def compute_bound_part(args) -> dict:
    """A random-weight LLaDA-shaped model large enough that the forward dominates (CPU-sized)."""
    d = Path(tempfile.mkdtemp(prefix="unmask-bench-"))
    write_checkpoint(d, "dense", seed=0, d=args.cb_hidden, layers=args.cb_layers, heads=args.cb_hidden // 64,
                     inter=int(args.cb_hidden * 2.75), vocab=4096)
    llm = LLM(str(d), device=args.device, dtype="float32", max_num_seqs=args.concurrency)
    gen = torch.Generator().manual_seed(args.seed)
    prompts = [torch.randint(0, 60, (int(n),), generator=gen).tolist()
               for n in torch.randint(16, 48, (args.cb_prompts,), generator=gen)]
    p = DiffusionParams(max_tokens=32, block_length=32, steps=16, early_stop=False, logits_eos_inf=True)
    for _ in range(args.warmup_runs):
        reference_run(llm, prompts[:2], p)
        engine_run(llm, prompts, p)
    ref, eng = reference_run(llm, prompts, p), engine_run(llm, prompts, p)
    r, e = summarise("reference (batch 1)", ref), summarise(f"engine exact C={args.concurrency}", eng)
    same = sum(a == b for a, b in zip(ref["outputs"], eng["outputs"]))
    out = {"model": {"hidden": args.cb_hidden, "layers": args.cb_layers, "vocab": 4096}, "reference": r, "engine": e,
           "identical_outputs": same, "ratio_vs_reference": round(e["tokens_per_s"] / max(r["tokens_per_s"], 1e-9), 2)}
    if args.quantization:  # the same prompts through the same engine with quantized weights, in this run
        qllm = LLM(str(d), device=args.device, dtype="float32", max_num_seqs=args.concurrency,
                   quantization=args.quantization)
        for _ in range(args.warmup_runs):
            engine_run(qllm, prompts, p)
        q = summarise(f"engine exact C={args.concurrency} {args.quantization}", engine_run(qllm, prompts, p))
        out["quantized"] = {**q, "ratio_vs_unquantized": round(q["tokens_per_s"] / max(e["tokens_per_s"], 1e-9), 2)}
    return out


def padded_part(args) -> dict:
    """Engine (exact, every step, no early stop) vs the padded-batch baseline at batch C: interleaved rounds."""
    llm = LLM(args.model, device=args.device, dtype=args.dtype, max_num_seqs=args.concurrency)
    examples = heldout_set(args.n_per_task, seed=args.seed)[: args.num_prompts]
    prompts = [llm.tokenizer.encode_chat([{"role": "user", "content": e.prompt}]) for e in examples]
    p = DiffusionParams(max_tokens=args.max_tokens, block_length=args.block_length, steps=args.max_tokens,
                        early_stop=False)
    sides = {"padded": lambda: padded_run(llm, prompts, p, args.concurrency), "engine": lambda: engine_run(llm, prompts, p)}
    cpu: dict[str, list[float]] = {"padded": [], "engine": []}
    for _ in range(args.warmup_runs):  # one full batch each: allocator growth at batch C stays out of the rounds
        padded_run(llm, prompts[:args.concurrency], p, args.concurrency), engine_run(llm, prompts[:args.concurrency], p)
    runs: dict[str, list[dict]] = {"padded": [], "engine": []}
    for r in range(args.padded_rounds):  # A/B, then B/A: drift of the shared machine hits both sides alike
        for name in (("padded", "engine") if r % 2 == 0 else ("engine", "padded")):
            c0 = time.process_time()
            runs[name].append(sides[name]())
            cpu[name].append(time.process_time() - c0)
    same = sum(a == b for a, b in zip(runs["padded"][0]["outputs"], runs["engine"][0]["outputs"]))
    tps = {k: [sum(map(len, run["outputs"])) / run["wall_s"] for run in v] for k, v in runs.items()}  # unrounded
    ratios = [e / max(b, 1e-9) for e, b in zip(tps["engine"], tps["padded"])]
    return {"concurrency": args.concurrency, "rounds": args.padded_rounds, "identical_outputs": same,
            "requests": len(prompts), "tokens_per_s": {k: [round(x, 3) for x in v] for k, v in tps.items()},
            "median_tokens_per_s": {k: round(statistics.median(v), 3) for k, v in tps.items()},
            "ratio_per_round": [round(x, 3) for x in ratios], "ratio_median": round(statistics.median(ratios), 3),
            "cpu_s": {k: [round(x, 3) for x in v] for k, v in cpu.items()},
            "cpu_ratio_median": round(statistics.median(b / e for b, e in zip(cpu["padded"], cpu["engine"])), 3)}


def add_workload_args(ap) -> None:
    """The workload flags the offline benchmarks share (task prompts per task, generation shape, device, seed)."""
    ap.add_argument("--n-per-task", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--seed", type=int, default=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--preset", choices=["exact", "fast"], default="exact")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--num-prompts", type=int, default=64)
    add_workload_args(ap)
    ap.add_argument("--cb-hidden", type=int, default=512)
    ap.add_argument("--cb-layers", type=int, default=6)
    ap.add_argument("--cb-prompts", type=int, default=16)
    ap.add_argument("--skip-compute-bound", action="store_true")
    ap.add_argument("--quantization", default=None, choices=["fp8", "int8", "int4"],
                    help="also run the compute-bound model's engine with weights quantized at load time (same run)")
    ap.add_argument("--warmup-runs", type=int, default=None,
                    help="untimed runs of both sides before the timed ones (default: 1 on CUDA, 0 on CPU)")
    ap.add_argument("--padded-rounds", type=int, default=0,
                    help="interleaved rounds of the engine (exact, no early stop) vs the padded-batch baseline")
    ap.add_argument("--padded-only", action="store_true", help="run only the padded-baseline comparison")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warmup_runs is None:
        args.warmup_runs = 1 if args.device.startswith("cuda") else 0
    torch.manual_seed(args.seed)
    machine = f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}"
    if args.device.startswith("cuda"):
        machine += f", {torch.cuda.get_device_name(args.device)}"
    res = {"machine": machine, "warmup_runs": args.warmup_runs,
           "preset": args.preset, "concurrency": args.concurrency}
    if args.padded_only:
        args.padded_rounds = args.padded_rounds or 3
        return report_padded(res, padded_part(args), args.json)
    res.update(embedded_part(args))
    if not args.skip_compute_bound:
        res["compute_bound"] = compute_bound_part(args)
    for part in (res, res.get("compute_bound")):
        if part:
            for key in ("reference", "engine"):
                print(" | ".join(f"{k}={v}" for k, v in part[key].items()))
            print(f"ratio engine/reference = {part['ratio_vs_reference']}x, identical outputs "
                  f"{part['identical_outputs']}/{part['reference']['requests']}")
    print(f"accuracy reference={res['accuracy']['reference']:.3f} engine={res['accuracy']['engine']:.3f}")
    quantized = res.get("compute_bound", {}).get("quantized")
    if quantized:
        print(" | ".join(f"{k}={v}" for k, v in quantized.items()))
    if args.padded_rounds:
        res["padded"] = padded_part(args)
    report_padded(res, res.get("padded"), args.json)


def report_padded(res: dict, padded: dict | None, path: str | None) -> None:
    if padded:
        res["padded"] = padded
        m = padded["median_tokens_per_s"]
        print(f"padded baseline (batch {padded['concurrency']}) {m['padded']} tok/s | engine exact C={padded['concurrency']} "
              f"{m['engine']} tok/s | ratio engine/padded median {padded['ratio_median']}x "
              f"(rounds {padded['ratio_per_round']}), CPU-time ratio padded/engine median {padded['cpu_ratio_median']}x, "
              f"identical outputs {padded['identical_outputs']}/{padded['requests']}")
    if path:
        Path(path).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
