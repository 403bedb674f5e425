"""The whole block step of ``step_table`` with quantized weights (fp8 / int8 / int4 at load-time format), next to
the quantized floors: KERNELS.md §4's bf16 floor with the quantized layers' bytes replaced by their quantized
size (codes + fp32 scales) at the same bandwidth. Embeddings, norms, routers and the LM head stay bf16.

    python -m benchmarks.quant_step_table --formats int8,int4 --batches 1,8 --json out.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks import step_table
from unmask.kernels.quant import int4_group
from unmask.server.models import quantize as Q
from unmask.server.models.registry import build_model

HBM_PEAK = 3.35e12  # H100 SXM bytes/s, the bandwidth of KERNELS.md §4's "floor @peak"


def quantized_build(fmt: str):
    """``build_model`` whose block linears and experts are then quantized in place (the loader's targets)."""
    def build(cfg, **kw):
        model = build_model(cfg, **kw)
        for name in sorted(Q.targets(model, quantize_lm_head=False)):
            owner, _, leaf = name.rpartition(".")
            Q.set_weight(model, name, Q.quantize(getattr(model.get_submodule(owner), leaf), fmt))
        return model
    return build


def bytes_per_weight(fmt: str, k: int) -> float:
    """Stored bytes per weight: codes plus the fp32 scale of its row (fp8, int8) or group (int4)."""
    return 0.5 + 4 / int4_group(k) if fmt == "int4" else 1 + 4 / k


def saved_ms(shape: str, fmt: str) -> float:
    """Milliseconds of bf16 weight streaming that quantization removes from the full-depth step at peak."""
    raw, key, layers = step_table.SHAPES[shape]
    cfg = step_table.from_dict({**raw, key: layers}, {})
    model = build_model(cfg, device="meta", init_std=None)
    saved = 0.0
    for name, p in model.named_parameters():
        if name in Q.targets(model, False):
            saved += p.numel() * (2 - bytes_per_weight(fmt, p.shape[-1]))
    return 1000 * saved / HBM_PEAK


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--formats", default="fp8,int8,int4")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--depths", default="2,4")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--shapes", default="llada-8b,llada-moe")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    a, b = (int(d) for d in args.depths.split(","))
    rows, original = [], step_table.build_model
    try:
        for fmt in args.formats.split(","):
            step_table.build_model = quantized_build(fmt)
            for shape in args.shapes.split(","):
                full = step_table.SHAPES[shape][2]
                ta = step_table.time_step(shape, a, batches, True, args.iters)
                tb = step_table.time_step(shape, b, batches, True, args.iters)
                for bs in batches:
                    ms = ta[bs] + (tb[bs] - ta[bs]) / (b - a) * (full - a)
                    floor = step_table.FLOORS.get((shape, bs), (float("nan"),))[0] - saved_ms(shape, fmt)
                    rows.append({"format": fmt, "shape": shape, "batch": bs, "ms": round(ms, 3),
                                 "floor_ms": round(floor, 3), "pct_of_floor": round(100 * floor / ms, 1)})
                    print(rows[-1], flush=True)
    finally:
        step_table.build_model = original
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
