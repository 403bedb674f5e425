"""Skinny GEMM benchmark: the projections and LM head of LLaDA-8B and LLaDA-MoE at the row counts of a small-batch
block step (M = 32·B <= 64), torch's GEMM (cuBLAS) vs the Triton skinny kernel (``UNMASK_GEMM=triton``).
``triton_skinny[bn=..,bk=..,w=..,s=..]@graph`` rows time the tile candidates of ``CANDIDATES`` too.

Legend: M rows, K input features, N output features. Bytes = W (N·K) + x (M·K) + y (M·N), 2 bytes each:
memory-bound, judged in % of HBM bandwidth.
"""
import torch

from bench_common import BLOCK, row, run_models, time_graph_ms, time_ms
from unmask.kernels.torch_ref import linear as ref
from unmask.kernels.triton_ops import linear as tri

CANDIDATES = [  # (BN, BK, warps, stages): shared memory per program at BM=32, sm_90
    (64, 128, 4, 4),  # the default: 96 KiB, 2 per SM
    (64, 256, 4, 3),  # 144 KiB, 1 per SM, longer slices
    (128, 128, 8, 4),  # 160 KiB, 1 per SM, two warpgroups
    (64, 64, 4, 6),  # 72 KiB, 3 per SM, short slices
]


def gemms(model) -> list[tuple[str, int, int]]:
    """(name, N, K) of one layer's GEMMs and the LM head (q/k/v and gate/up fused as the model loads them)."""
    d, hd, h = model["hidden"], model["head_dim"], model["heads"]
    out = [("qkv", 3 * h * hd, d), ("o", d, h * hd)]
    if "experts" in model:
        out.append(("router", model["experts"], d))
    else:
        out += [("gate_up", 2 * model["inter_dense"], d), ("down", d, model["inter_dense"])]
    return out + [("lm_head", model["vocab"], d)]


def candidate_rows(shape, fn, nbytes, quick):
    rows, config = [], tri._config
    try:
        for bn, bk, warps, stages in CANDIDATES:
            def forced(m, n, k, elem, dev, c=(bn, bk, warps, stages)):  # the table's BM, this tile, its splits
                slots = tri.PROGRAMS_PER_SM * tri.num_sms(dev)
                return (config(m, n, k, elem, dev)[0], *c, tri._splits(-(-n // c[0]), k, c[1], slots))

            tri._config = forced
            rows.append(row("gemm", shape, f"triton_skinny[bn={bn},bk={bk},w={warps},s={stages}]@graph",
                            time_graph_ms(fn, quick), nbytes))
    finally:
        tri._config = config
    return rows


def bench(model, rows_m, dev, quick, dtype=torch.bfloat16):
    out = []
    for name, n, k in gemms(model):
        x = torch.randn(rows_m, k, device=dev, dtype=dtype)  # [M, K]
        w = torch.randn(n, k, device=dev, dtype=dtype) * k ** -0.5  # [N, K]
        nbytes = (n * k + rows_m * k + rows_m * n) * 2
        shape = f"{model['name']} {name} M={rows_m} N={n} K={k}"
        cublas = lambda: ref.linear(x, w)  # noqa: E731
        skinny = lambda: tri.linear_fwd(x, w)  # noqa: E731
        for provider, fn in (("torch", cublas), ("triton_skinny", skinny)):
            out.append(row("gemm", shape, provider, time_ms(fn, quick), nbytes))
            out.append(row("gemm", shape, provider + "@graph", time_graph_ms(fn, quick), nbytes))
        out += candidate_rows(shape, skinny, nbytes, quick)
    return out


def main():
    run_models(__doc__, lambda model, batch, dev, quick: bench(model, BLOCK * batch, dev, quick),
               batch_ok=lambda batch: BLOCK * batch <= tri.MAX_ROWS)


if __name__ == "__main__":
    main()
