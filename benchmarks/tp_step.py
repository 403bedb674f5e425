"""Engine step time over N tensor-parallel ranks against one device, on a random checkpoint with LLaDA-8B or
LLaDA-MoE layer dimensions (fewer layers), and whether the ranks give one device's tokens.

    python -m benchmarks.tp_step --shape llada-8b --layers 4 --sizes 1,2,4,8 --batches 1,8 --json out.json
    python -m benchmarks.tp_step --shape tiny --device cpu --sizes 1,2      # smoke test of the script (gloo)

Each size serves B requests of a 512-token prompt and a 32-token canvas with the dual cache and a fixed schedule
(32 steps: one refresh step, then 31 block steps, the step of ``benchmarks.step_table``) through
``LLM.generate``, after one warm-up run (every step runs: no early stop); the figure is wall time per engine
iteration (the whole step: packing, the ranks' forward with its all-reduces, the remask reduction, the commit).
On CUDA every rank replays its own captured graph of the block step (greedy rows on the reduce path), as one device
does, so the TP = 1 row is the engine's graphed step. Sizes beyond the GPUs present are skipped.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.reference.checkpoints import MOE_SPECIALS, SPECIALS, dense_config, write_tokenizer
from benchmarks.step_table import BLOCK, PREFIX, SHAPES
from unmask import LLM, DiffusionParams
from unmask.server.config import ModelConfig
from unmask.server.models.export import save_hf_checkpoint
from unmask.server.models.registry import build_model


def write_random_checkpoint(out: Path, shape: str, layers: int) -> Path:
    """A random bf16 checkpoint (HF format, 2 GB shards) with ``shape``'s dimensions and ``layers`` layers."""
    if shape == "tiny":
        raw = {**dense_config(d=64, layers=layers, heads=8, inter=128, vocab=512), "max_sequence_length": 1024}
    else:
        base, key, _ = SHAPES[shape]
        raw = {**base, key: layers}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(raw))
    write_tokenizer(out, MOE_SPECIALS if "MoE" in raw["architectures"][0] else SPECIALS)
    cfg = ModelConfig.from_pretrained(out)
    model = build_model(cfg, "cpu", torch.bfloat16, init_std=0.02)
    return save_hf_checkpoint(model, cfg, raw, out, torch.bfloat16, shard_bytes=2 << 30)


def time_size(path: Path, size: int, batches: list[int], args) -> dict:
    """ms per engine iteration and the tokens generated, per batch size, for ``size`` ranks."""
    params = DiffusionParams(max_tokens=BLOCK, block_length=BLOCK, steps=BLOCK, cache="dual", early_stop=False)
    out = {}
    with LLM(str(path), device=args.device, dtype=args.dtype, tensor_parallel_size=size,
             enable_expert_parallel=args.expert_parallel and size > 1, kv_cache_memory=args.kv_cache_memory) as llm:
        gen = torch.Generator().manual_seed(0)
        for b in batches:
            prompts = [torch.randint(0, 90, (PREFIX,), generator=gen).tolist() for _ in range(b)]
            llm.generate(prompts, params)  # warm-up: kernels compiled, caches allocated
            stats = llm.engine.stats
            steps0, t0 = stats.iterations, time.perf_counter()
            outs = llm.generate(prompts, params)
            ms = 1000 * (time.perf_counter() - t0) / (stats.iterations - steps0)
            out[b] = {"ms_per_step": round(ms, 3), "tokens": [o.token_ids for o in outs]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", choices=[*SHAPES, "tiny"], default="llada-8b")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--sizes", default="1,2,4,8")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--expert-parallel", action="store_true", help="MoE: whole experts per rank")
    ap.add_argument("--kv-cache-memory", type=int, default=4 << 30)
    ap.add_argument("--checkpoint", default=None, help="reuse this checkpoint directory (default: write one)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    gpus = torch.cuda.device_count() if args.device.startswith("cuda") else 1 << 10
    sizes = [n for n in (int(s) for s in args.sizes.split(",")) if n <= gpus]
    with tempfile.TemporaryDirectory(prefix="unmask-tp-bench-") as tmp:
        path = Path(args.checkpoint) if args.checkpoint else write_random_checkpoint(Path(tmp), args.shape,
                                                                                     args.layers)
        rows = {n: time_size(path, n, batches, args) for n in sizes}
    base = rows.get(1)
    report = {"shape": args.shape, "layers": args.layers, "device": args.device, "dtype": args.dtype,
              "expert_parallel": args.expert_parallel, "skipped_sizes": [int(s) for s in args.sizes.split(",")
                                                                         if int(s) not in sizes], "rows": []}
    print(f"{args.shape}, {args.layers} layers, {args.device} {args.dtype}: ms per engine step")
    for n, per_batch in rows.items():
        for b, r in per_batch.items():
            same = None if base is None else sum(x == y for x, y in zip(r["tokens"], base[b]["tokens"])) / b
            speedup = None if base is None else round(base[b]["ms_per_step"] / r["ms_per_step"], 2)
            report["rows"].append({"tp": n, "batch": b, "ms_per_step": r["ms_per_step"], "speedup": speedup,
                                   "answers_equal_to_tp1": same})
            print(f"TP={n} B={b}: {r['ms_per_step']:.2f} ms/step, speed-up {speedup}, answers equal to TP=1: {same}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
