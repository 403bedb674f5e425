"""The projections of every layer and the LM head: y = x · Wᵀ with W stored as [out, in] (HF layout), dense or a
``QuantizedWeight`` (``kernels/quant.py``).

Legend: M rows, K input features, N output features.

On CPU, fp32 inference GEMMs run through oneDNN's linear (the primitive torch's own CPU compiler uses) instead of
the BLAS ``matmul`` dispatches to: on the 2-core AMD EPYC dev machine (AVX-512) it is about 2x faster at the
embedded models' shapes (2809 x 96 by 96 x 768: 2.0 vs 3.9 ms, one thread; benchmarks/README.md, #28). Its rows
do not depend on the row count from 2 rows on (MKL's from 8 on; a 1-row call takes a different path in both), and
at K = 96 its values equal MKL's bit for bit, at K = 384 they differ in the last bits. fp64 (the exactness
tests), half types, autograd and quantized weights take ``x @ W.T``.
"""
import torch

from unmask.kernels.quant import QuantizedWeight
from unmask.kernels.torch_ref.qlinear import quantized_linear

ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (ONEDNN and x.dtype == torch.float32 and weight.dtype == torch.float32 and x.device.type == "cpu"
            and x.dim() == 2 and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


def linear(x: torch.Tensor, weight) -> torch.Tensor:
    """x [M, K], weight [N, K] (dense or QuantizedWeight) -> x @ weight.T [M, N] in x.dtype (cuBLAS on CUDA;
    on CPU oneDNN for fp32 inference, BLAS otherwise)."""
    if isinstance(weight, QuantizedWeight):
        return quantized_linear(x, weight)
    if _onednn_fits(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")  # [M, N]
    return x @ weight.t()
