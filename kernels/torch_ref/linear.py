"""The projections of every layer and the LM head: y = x · Wᵀ with W stored as [out, in] (HF layout), dense or a
``QuantizedWeight`` (``kernels/quant.py``).

Legend: M rows, K input features, N output features.
"""
import torch

from unmask.kernels.quant import QuantizedWeight
from unmask.kernels.torch_ref.qlinear import quantized_linear


def linear(x: torch.Tensor, weight) -> torch.Tensor:
    """x [M, K], weight [N, K] (dense or QuantizedWeight) -> x @ weight.T [M, N] in x.dtype (torch's GEMM:
    cuBLAS on CUDA)."""
    if isinstance(weight, QuantizedWeight):
        return quantized_linear(x, weight)
    return x @ weight.t()
