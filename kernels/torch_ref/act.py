"""SwiGLU activation over a fused gate/up projection, as dense LLaDA's MLP computes it.

Legend: N rows, I intermediate width.
"""
import torch
import torch.nn.functional as F


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    """x [N, 2I] (gate columns, then up columns) -> silu(gate) * up [N, I] in x.dtype: silu rounded to the
    dtype, then the product rounded again (two torch ops, as ``silu(x @ Wg.T) * (x @ Wu.T)``)."""
    inter = x.shape[-1] // 2
    out = F.silu(x[..., :inter])  # [N, I]
    out *= x[..., inter:]  # in place: the same product, no second buffer
    return out
