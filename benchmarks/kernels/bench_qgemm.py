"""Quantized GEMM benchmark: every projection of LLaDA-8B / LLaDA-MoE (and the LM head) at a block step's rows,
torch's bf16 GEMM vs the Triton quantized kernel (``triton_ops/qlinear.py``) streaming fp8 / int8 / int4 weights.

Legend: M rows, K input features, N output features. Bytes = the weight as stored (codes + fp32 scales) + x + y:
memory-bound at these M, judged in % of HBM bandwidth; the floor of a quantized GEMM is its bytes / bandwidth
(about 1/2 of bf16's for fp8 and int8, about 1/4 for int4).
"""
import torch

from bench_common import BLOCK, row, run_models, time_graph_ms, time_ms
from bench_gemm import gemms
from unmask.kernels import quant
from unmask.kernels.torch_ref import linear as ref
from unmask.kernels.triton_ops import qlinear as tri


def bench(model, rows_m, dev, quick, dtype=torch.bfloat16):
    out = []
    for name, n, k in gemms(model):
        x = torch.randn(rows_m, k, device=dev, dtype=dtype)  # [M, K]
        w = torch.randn(n, k, device=dev, dtype=dtype) * k ** -0.5  # [N, K]
        shape = f"{model['name']} {name} M={rows_m} N={n} K={k}"
        io = (rows_m * k + rows_m * n) * 2
        dense = lambda: ref.linear(x, w)  # noqa: E731
        out.append(row("qgemm", shape, "torch_bf16@graph", time_graph_ms(dense, quick), n * k * 2 + io))
        for fmt in quant.FORMATS:
            qw = quant.quantize(w, fmt)
            fn = lambda qw=qw: tri.quantized_linear_fwd(x, qw)  # noqa: E731
            out.append(row("qgemm", shape, f"triton_{fmt}", time_ms(fn, quick), qw.nbytes + io))
            out.append(row("qgemm", shape, f"triton_{fmt}@graph", time_graph_ms(fn, quick), qw.nbytes + io))
    return out


def main():
    run_models(__doc__, lambda model, batch, dev, quick: bench(model, BLOCK * batch, dev, quick))


if __name__ == "__main__":
    main()
