"""MoE benchmark at LLaDA-MoE shapes (D=2048, E=64, K=8, I=1024), T = 32·B tokens (one block per sequence):
the per-expert torch loop (torch_ref), routing + Triton fused MoE, and the alignment alone (``@graph`` rows
for its four-kernel and, up to 256 assignments, one-program paths).

Legend: T tokens, D hidden, E experts, I expert width, K experts per token.
Bytes = weights of the experts actually hit (3·D·I each) + x, out; FLOPs = 2·T·K·3·D·I.
From T = 256 on, ``triton_fused[cfg]@graph`` rows time the candidate tile configs of ``CANDIDATES`` beside the
table's own pick (rows per expert grow with T: taller M tiles read each expert's weights fewer times).
"""
import torch

from bench_common import BLOCK, LLADA_MOE, Report, parse_args, require_cuda, row, time_graph_ms, time_ms
from unmask.kernels.torch_ref import moe as ref
from unmask.kernels.triton_ops import moe as tri
from unmask.kernels.triton_ops.moe_align import ONE_PROGRAM_MAX, moe_align


CANDIDATES = [  # (BM, BN gate/up, BN down, BK, warps, stages); each compiles for sm_90 without spills
    (64, 64, 64, 64, 4, 4), (64, 128, 128, 64, 8, 3), (128, 64, 64, 64, 8, 3), (128, 128, 128, 64, 8, 3)]


def candidate_rows(shape, fused, nbytes, flops, quick):
    """@graph rows for every candidate config (forced through ``_config``; the table's own pick is among them)."""
    rows, table = [], tri._config
    try:
        for cfg in CANDIDATES:
            tri._config = lambda *_, cfg=cfg: cfg  # the wrapper asks _config for its tiles
            name = "triton_fused[bm={},bn={}/{},bk={},w={},s={}]@graph".format(*cfg)
            rows.append(row("moe", shape, name, time_graph_ms(fused, quick), nbytes, flops))
    finally:
        tri._config = table
    return rows


def inputs(tokens, dev, dtype=torch.bfloat16):
    d, e, i, k = LLADA_MOE["hidden"], LLADA_MOE["experts"], LLADA_MOE["inter"], LLADA_MOE["top_k"]
    x = torch.randn(tokens, d, device=dev, dtype=dtype)  # [T, D]
    w_gate_up = torch.randn(e, 2 * i, d, device=dev, dtype=dtype) * d ** -0.5  # [E, 2I, D]
    w_down = torch.randn(e, d, i, device=dev, dtype=dtype) * i ** -0.5  # [E, D, I]
    router = torch.randn(tokens, e, device=dev, dtype=torch.float32)  # [T, E]
    weights, ids = tri.moe_route(router, k, dtype)  # [T, K]
    return x, w_gate_up, w_down, weights, ids, router


def bench(batch, dev, quick):
    tokens = batch * BLOCK
    x, w_gate_up, w_down, weights, ids, router = inputs(tokens, dev)
    d, e, i, k = LLADA_MOE["hidden"], LLADA_MOE["experts"], LLADA_MOE["inter"], LLADA_MOE["top_k"]
    hit = int(torch.unique(ids).numel())
    nbytes = (hit * 3 * d * i + 2 * tokens * d) * 2
    flops = 2 * tokens * k * 3 * d * i
    shape = f"T={tokens} D={d} E={e} K={k} I={i} experts_hit={hit}"
    fused = lambda: tri.fused_moe(x, w_gate_up, w_down, weights, ids)  # noqa: E731
    rows = [row("moe", shape, name, time_ms(fn, quick), nbytes, flops) for name, fn in (
        ("torch_ref_expert_loop", lambda: ref.fused_moe(x, w_gate_up, w_down, weights, ids)),
        ("triton_fused", fused),
        ("triton_route+fused", lambda: tri.fused_moe(x, w_gate_up, w_down, *tri.moe_route(router, k, x.dtype))))]
    rows.append(row("moe", shape, "triton_fused@graph", time_graph_ms(fused, quick), nbytes, flops))
    if tokens >= 256:
        rows += candidate_rows(shape, fused, nbytes, flops, quick)
    rows.append(row("moe_align", shape, "triton", time_ms(lambda: moe_align(ids, e, 16), quick)))
    paths = [("triton_four_kernels", False)]
    if ids.numel() <= ONE_PROGRAM_MAX:  # the default path up to 256 assignments
        paths.append(("triton_one_program", True))
    rows += [row("moe_align", shape, f"{name}@graph", time_graph_ms(lambda one=one: moe_align(ids, e, 16, one), quick))
             for name, one in paths]
    rows.append(row("moe_route", shape, "torch_ref", time_ms(lambda: ref.moe_route(router, k, x.dtype), quick)))
    rows.append(row("moe_route", shape, "triton", time_ms(lambda: tri.moe_route(router, k, x.dtype), quick)))
    return rows


def main():
    args = parse_args(__doc__)
    dev = require_cuda()
    out = Report(args.json)
    for batch in args.batches:
        out.add(bench(batch, dev, args.quick))


if __name__ == "__main__":
    main()
