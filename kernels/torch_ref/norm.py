"""RMSNorm as LLaDA and LLaDA-MoE compute it (LLADA-SPEC.md §3: normalise in fp32, cast back, × weight).

Legend: N rows, D features.
"""
import torch


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half types and fp32; fp64 stays fp64 (exact-mode tests run the model in float64)."""
    return torch.promote_types(dtype, torch.float32)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [N, D] (any float dtype), weight [D] -> [N, D] in x.dtype.

    ``(x / sqrt(mean(x²) + eps))`` in fp32 (fp64 for fp64 input), cast back to x.dtype, then times
    the weight, exactly as HF ``RMSLayerNorm`` / ``LlamaRMSNorm``.
    """
    xf = x.to(_compute_dtype(x.dtype))  # [N, D]
    var = xf.pow(2).mean(-1, keepdim=True)  # [N, 1]
    return (xf * torch.rsqrt(var + eps)).to(x.dtype) * weight


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    """x, residual [N, D] -> (rms_norm(x + residual) [N, D], x + residual [N, D]).

    The sum is formed in x.dtype (as the HF pre-norm block adds its residual in the activation dtype).
    """
    s = x + residual  # [N, D]
    return rms_norm(s, weight, eps), s
