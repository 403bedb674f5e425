"""MoE benchmark at LLaDA-MoE shapes (D=2048, E=64, K=8, I=1024), T = 32·B tokens (one block per sequence):
the per-expert torch loop (torch_ref), routing + Triton fused MoE, and the alignment alone.

Legend: T tokens, D hidden, E experts, I expert width, K experts per token.
Bytes = weights of the experts actually hit (3·D·I each) + x, out; FLOPs = 2·T·K·3·D·I.
"""
import torch

from bench_common import BLOCK, LLADA_MOE, Report, parse_args, require_cuda, row, time_graph_ms, time_ms
from unmask.kernels.torch_ref import moe as ref
from unmask.kernels.triton_ops import moe as tri
from unmask.kernels.triton_ops.moe_align import moe_align


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
    rows.append(row("moe_align", shape, "triton", time_ms(lambda: moe_align(ids, e, 16), quick)))
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
