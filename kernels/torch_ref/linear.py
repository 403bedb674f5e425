"""The projections of every layer and the LM head: y = x · Wᵀ with W stored as [out, in] (HF layout).

Legend: M rows, K input features, N output features.
"""
import torch


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [M, K], weight [N, K] -> x @ weight.T [M, N] in x.dtype (torch's GEMM: cuBLAS on CUDA)."""
    return x @ weight.t()
