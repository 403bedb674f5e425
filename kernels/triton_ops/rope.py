"""Rotary position embedding, NeoX ("rotate_half") layout (spec: ``torch_ref/rope.py``).

Legend: N tokens, H query heads, Hk key heads, D head dim, D2 = D/2, R (token, head) rows per program.

cos/sin come from the spec's own ``rope_cos_sin`` (a tiny [N, D] fp32 table), so the angles are bit
for bit the reference's; the kernel fuses the rotation of every head of q and k. ``rotate_fp32`` True
rotates in fp32 and rounds once; False rounds cos/sin, both products and the sum to the activation
dtype, exactly as the spec's half-precision arithmetic does. fp64 inputs use the PyTorch reference.
"""
import torch
import triton
import triton.language as tl

from unmask.kernels.torch_ref import rope as _ref
from unmask.kernels.triton_ops._common import next_pow2

__all__ = ["rope", "rope_apply"]


@triton.jit
def _rope_kernel(x_ptr, y_ptr, cos_ptr, sin_ptr, n_rows, heads, half, stride_xn, stride_xh, stride_yn, stride_yh,
                 stride_c, FP32: tl.constexpr, ROWS: tl.constexpr, BLOCK_H: tl.constexpr):
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # [R] flat (token, head) index
    tok = (r // heads).to(tl.int64)[:, None]  # [R, 1]
    head = (r % heads).to(tl.int64)[:, None]
    cols = tl.arange(0, BLOCK_H)[None, :]  # [1, BH]
    mask = (r < n_rows)[:, None] & (cols < half)  # [R, BH]
    xp = x_ptr + tok * stride_xn + head * stride_xh + cols
    yp = y_ptr + tok * stride_yn + head * stride_yh + cols
    x1 = tl.load(xp, mask=mask, other=0.0).to(tl.float32)  # [R, BH] first half
    x2 = tl.load(xp + half, mask=mask, other=0.0).to(tl.float32)  # second half
    c = tl.load(cos_ptr + tok * stride_c + cols, mask=mask, other=0.0)  # [R, BH] fp32
    s = tl.load(sin_ptr + tok * stride_c + cols, mask=mask, other=0.0)
    dt = y_ptr.dtype.element_ty
    if FP32:
        o1 = x1 * c - x2 * s
        o2 = x2 * c + x1 * s
    else:  # every op rounded to the activation dtype, as x*cos + rotate_half(x)*sin in that dtype
        c = c.to(dt).to(tl.float32)
        s = s.to(dt).to(tl.float32)
        o1 = (x1 * c).to(dt).to(tl.float32) - (x2 * s).to(dt).to(tl.float32)
        o2 = (x2 * c).to(dt).to(tl.float32) + (x1 * s).to(dt).to(tl.float32)
    tl.store(yp, o1.to(dt), mask=mask)
    tl.store(yp + half, o2.to(dt), mask=mask)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotate_fp32: bool) -> torch.Tensor:
    """x [N, H, D] (unit stride on D), cos/sin [N, D] fp32 -> rotated copy [N, H, D]."""
    n, heads, d = x.shape
    y = torch.empty_like(x, memory_format=torch.contiguous_format)  # [N, H, D]
    if x.numel() == 0:
        return y
    half = d // 2
    block_h = next_pow2(half)
    rows = max(1, min(64, 2048 // block_h))
    grid = (triton.cdiv(n * heads, rows),)
    _rope_kernel[grid](x, y, cos, sin, n * heads, heads, half, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
                       cos.stride(0), FP32=rotate_fp32, ROWS=rows, BLOCK_H=block_h, num_warps=4)
    return y


def rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, theta: float, rotate_fp32: bool):
    """q [N, H, D], k [N, Hk, D], positions [N] int -> (q, k) rotated copies, same dtypes.

    NeoX layout: out = x·cos + rotate_half(x)·sin with rotate_half(x) = [-x[D/2:], x[:D/2]]; D even.
    fp64 inputs are served by the PyTorch reference.
    """
    cos, sin = _ref.rope_cos_sin(positions, q.shape[-1], theta, q.dtype)  # [N, D] fp32 (fp64 for fp64 q)
    return rope_apply(q, k, cos, sin, rotate_fp32)


def rope_apply(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotate_fp32: bool):
    """q [N, H, D], k [N, Hk, D], cos/sin [N, D] fp32 tables of ``rope_cos_sin`` -> (q, k) rotated copies.
    One launch per tensor; the model builds the tables once per forward and every layer reuses them.
    fp64 inputs are served by the PyTorch reference."""
    if q.dtype == torch.float64 or k.dtype == torch.float64:
        return _ref.rope_apply(q, k, cos, sin, rotate_fp32)
    q, k = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k))
    return _rotate(q, cos, sin, rotate_fp32), _rotate(k, cos, sin, rotate_fp32)
