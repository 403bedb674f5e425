"""SwiGLU activation over a fused gate/up projection in one pass (spec: ``torch_ref/act.py``).

Legend: N rows, I intermediate width, BI columns per program.

Rounding follows the spec's two ops: silu in fp32 rounded to the activation dtype, then the product in fp32
rounded once more. fp64 inputs use the PyTorch reference.
"""
import torch
import triton
import triton.language as tl

from unmask.kernels.torch_ref import act as _ref
from unmask.kernels.triton_ops._common import FP_FUSION

__all__ = ["silu_mul"]

_BLOCK_I = 1024


@triton.jit
def _silu_mul_kernel(x_ptr, y_ptr, inter, stride_x, stride_y, BLOCK_I: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)  # [BI]
    mask = cols < inter
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)  # [BI]
    up = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask, other=0.0).to(tl.float32)
    dt = y_ptr.dtype.element_ty
    act = (gate / (1.0 + tl.exp(-gate))).to(dt).to(tl.float32)  # silu, rounded as torch's own op
    tl.store(y_ptr + row * stride_y + cols, (act * up).to(dt), mask=mask)


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    """x [N, 2I] (gate columns, then up columns; unit column stride) -> silu(gate) * up [N, I] in x.dtype."""
    if x.dtype == torch.float64 or x.dim() != 2:
        return _ref.silu_mul(x)
    n, width = x.shape
    inter = width // 2
    y = torch.empty((n, inter), dtype=x.dtype, device=x.device)  # [N, I]
    if n == 0 or inter == 0:
        return y
    if x.stride(1) != 1:
        x = x.contiguous()
    grid = (n, triton.cdiv(inter, _BLOCK_I))
    _silu_mul_kernel[grid](x, y, inter, x.stride(0), y.stride(0), BLOCK_I=_BLOCK_I, enable_fp_fusion=FP_FUSION,
                           num_warps=4)
    return y
