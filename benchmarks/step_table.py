"""Whole block-step time on a GPU for LLaDA-8B- and LLaDA-MoE-shaped random-weight models, next to the
roofline floors of KERNELS.md §4.

    python -m benchmarks.step_table --json out.json --markdown out.md

The step is the dual-cache block step the engine runs (block of 32 queries per sequence over a 544-token
canvas: 512 cached + 32 new; LM head on the block rows; remask), captured in a CUDA graph and replayed.
Real layer dimensions, fewer layers: each shape is timed at two depths and the per-layer cost is
extrapolated linearly to the full depth (t_full = t_a + (t_b − t_a)/(b − a)·(L_full − a)).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from unmask.kernels import options
from unmask.server.config import from_dict
from unmask.server.engine.commit_policy import LogitRules, propose
from unmask.server.engine.cuda_graph import GraphedBlockStep
from unmask.server.engine.kv_cache import KVCacheManager
from unmask.server.models.attention_meta import AttentionMetadata
from unmask.server.models.registry import build_model

SHAPES = {
    "llada-8b": ({"architectures": ["LLaDAModelLM"], "d_model": 4096, "n_heads": 32, "n_kv_heads": 32,
                  "mlp_hidden_size": 12288, "vocab_size": 126464, "embedding_size": 126464, "rope_theta": 500000.0,
                  "max_sequence_length": 4096, "mask_token_id": 126336, "eos_token_id": 126081}, "n_layers", 32),
    "llada-moe": ({"architectures": ["LLaDAMoEModelLM"], "hidden_size": 2048, "num_attention_heads": 16,
                   "num_key_value_heads": 16, "num_experts": 64, "num_experts_per_tok": 8,
                   "expert_intermediate_size": 1024, "vocab_size": 157184, "rope_theta": 50000.0,
                   "max_position_embeddings": 8192, "mask_token_id": 156895, "eos_token_id": 156892,
                   "qk_layernorm": True}, "num_hidden_layers", 16),
}
# KERNELS.md §4, "floor @peak ms" and "floor @measured ms" (H100 SXM), block 32, 512-token cached prefix.
FLOORS = {("llada-8b", 1): (4.57, 5.10), ("llada-8b", 8): (5.23, 5.85), ("llada-8b", 32): (18.6, 22.6),
          ("llada-8b", 64): (37.1, 45.3), ("llada-moe", 1): (4.18, 4.67), ("llada-moe", 8): (4.47, 4.99),
          ("llada-moe", 32): (5.27, 5.88), ("llada-moe", 64): (7.92, 9.55)}
PREFIX, BLOCK = 512, 32


def _timed(fn, iters: int, dev: torch.device) -> float:
    """Mean ms per call (CUDA events on a GPU, wall clock elsewhere)."""
    if dev.type != "cuda":
        import time
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return 1000 * (time.perf_counter() - t0) / iters
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def time_step(shape: str, layers: int, batches: list[int], graphs: bool, iters: int) -> dict[int, float]:
    """ms per block step at each batch size for a model of ``layers`` layers."""
    raw, key, _ = SHAPES[shape]
    cfg = from_dict({**raw, key: layers}, {})
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg, device=dev, dtype=torch.bfloat16, init_std=0.02).eval().requires_grad_(False)
    canvas = PREFIX + BLOCK
    kv = KVCacheManager(cfg, max(batches) * canvas * 2 * layers * cfg.hidden_size * 2 + (1 << 26), dev, torch.bfloat16)
    for k, v in kv.layers:
        k.normal_(0, 1), v.normal_(0, 1)

    def head(logits, rules):  # the engine's: its logit rules and proposals after the LM head
        return (logits, *propose(logits, rules, cfg.mask_token_id, cfg.eos_token_id))

    step = GraphedBlockStep(model, kv.layers, kv.pages_for(canvas), head, capture=graphs and dev.type == "cuda")
    out = {}
    with options.use(options.resolve()):  # resolved once, as an engine runs its steps (no per-op reads)
        for b in batches:
            out[b] = _time_batch(step, kv, cfg, b, iters, dev)
    del model, kv, step
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return out


def _time_batch(step: GraphedBlockStep, kv: KVCacheManager, cfg, b: int, iters: int, dev) -> float:
    """ms per block step of ``b`` sequences (a PREFIX-token cached prefix each) through ``step``."""
    canvas = PREFIX + BLOCK
    pages = [kv.allocate(canvas) for _ in range(b)]
    table = torch.tensor(pages, dtype=torch.int32, device=dev)
    ids = torch.randint(0, min(1000, cfg.vocab_size - 2), (b * BLOCK,), device=dev)
    pos = torch.arange(PREFIX, canvas, device=dev).repeat(b)
    meta = AttentionMetadata(cu_seqlens_q=torch.arange(0, b * BLOCK + 1, BLOCK, dtype=torch.int32, device=dev),
                             max_seqlen_q=BLOCK, block_table=table, kv_caches=kv.layers,
                             kv_lens=torch.full((b,), canvas, dtype=torch.int32, device=dev),
                             new_offsets=torch.full((b,), PREFIX, dtype=torch.int32, device=dev))
    zf, zi = torch.zeros(b * BLOCK, device=dev), torch.arange(b * BLOCK, device=dev)
    args = (ids, pos, meta, LogitRules(zf, zi, zf, zf), BLOCK)
    for _ in range(3):
        step.run(*args)
    ms = _timed(lambda: step.run(*args), iters, dev)
    for p in pages:
        kv.free(p)
    return ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--depths", default="2,4", help="two layer counts to time (extrapolated to the full depth)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--shapes", default="llada-8b,llada-moe")
    ap.add_argument("--graphs", choices=["both", "on", "off"], default="both", help="CUDA-graph and/or eager rows")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    a, b = (int(x) for x in args.depths.split(","))
    rows = []
    for shape in args.shapes.split(","):
        full = SHAPES[shape][2]
        for graphs in {"both": (True, False), "on": (True,), "off": (False,)}[args.graphs]:
            ta = time_step(shape, a, batches, graphs, args.iters)
            tb = time_step(shape, b, batches, graphs, args.iters)
            for bs in batches:
                per_layer = (tb[bs] - ta[bs]) / (b - a)
                est = ta[bs] + per_layer * (full - a)
                peak, measured = FLOORS.get((shape, bs), (None, None))
                rows.append({"shape": shape, "batch": bs, "cuda_graph": graphs, f"ms_{a}_layers": round(ta[bs], 3),
                             f"ms_{b}_layers": round(tb[bs], 3), "ms_per_layer": round(per_layer, 4),
                             "ms_full_depth_est": round(est, 3), "floor_peak_ms": peak, "floor_measured_ms": measured,
                             "x_floor_peak": round(est / peak, 2) if peak else None})
                print(rows[-1], flush=True)
    kernels = options.resolve()  # the defaults with the environment overrides gpu_check.sh sets

    res = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
           "prefix": PREFIX, "block": BLOCK, "attn_loop": kernels.attn_loop,
           "gemm": kernels.gemm, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    if args.markdown:
        head = "| shape | batch | CUDA graph | ms (full depth, est.) | floor @peak | × floor | ms per layer |\n|---|---|---|---|---|---|---|\n"
        body = "".join(f"| {r['shape']} | {r['batch']} | {r['cuda_graph']} | {r['ms_full_depth_est']} | {r['floor_peak_ms']} "
                       f"| {r['x_floor_peak']} | {r['ms_per_layer']} |\n" for r in rows)
        Path(args.markdown).write_text(f"# Block step on {res['device']}\n\n{head}{body}")


if __name__ == "__main__":
    main()
