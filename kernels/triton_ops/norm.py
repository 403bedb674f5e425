"""RMSNorm and fused residual-add + RMSNorm (spec: ``torch_ref/norm.py``).

Legend: N rows (all leading dimensions flattened), D features, R rows per program.

Rounding follows the spec step by step: the residual sum is rounded to the activation dtype, the
normalisation runs in fp32, its result is rounded to x.dtype and only then multiplied by the weight
(one rounding into the promoted output dtype). fp64 inputs use the PyTorch reference.
"""
import torch
import triton
import triton.language as tl

from unmask.kernels.torch_ref import norm as _ref
from unmask.kernels.triton_ops._common import FP_FUSION, next_pow2

__all__ = ["rms_norm", "add_rms_norm"]


@triton.jit
def _rms_norm_kernel(x_ptr, r_ptr, w_ptr, y_ptr, s_ptr, n_rows, dim, stride_x, stride_r, stride_y, stride_s, eps,
                     HAS_RES: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # [R]
    cols = tl.arange(0, BLOCK_D)  # [BD]
    mask = (rows < n_rows)[:, None] & (cols < dim)[None, :]  # [R, BD]
    rows64 = rows.to(tl.int64)[:, None]  # [R, 1]
    x = tl.load(x_ptr + rows64 * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)  # [R, BD]
    if HAS_RES:
        r = tl.load(r_ptr + rows64 * stride_r + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        s = (x + r).to(s_ptr.dtype.element_ty)  # sum in the activation dtype, as the spec
        tl.store(s_ptr + rows64 * stride_s + cols[None, :], s, mask=mask)
        x = s.to(tl.float32)
    var = tl.sum(x * x, axis=1) / dim  # [R]
    xn = x * tl.rsqrt(var + eps)[:, None]  # [R, BD] fp32
    if HAS_RES:
        xn = xn.to(s_ptr.dtype.element_ty).to(tl.float32)  # round to the normalised tensor's dtype
    else:
        xn = xn.to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=cols < dim, other=0.0).to(tl.float32)  # [BD]
    tl.store(y_ptr + rows64 * stride_y + cols[None, :], (xn * w[None, :]).to(y_ptr.dtype.element_ty), mask=mask)


def _launch(x2, r2, weight, y2, s2, eps):
    """x2/r2/y2/s2 [N, D] row-major views; r2/s2 None for plain RMSNorm."""
    n, d = x2.shape
    block_d = next_pow2(d)
    rows = max(1, min(16, 4096 // block_d))
    has_res = r2 is not None
    r_arg, s_arg = (r2, s2) if has_res else (x2, y2)
    grid = (triton.cdiv(n, rows),)
    _rms_norm_kernel[grid](
        x2, r_arg, weight, y2, s_arg, n, d, x2.stride(0), r_arg.stride(0), y2.stride(0), s_arg.stride(0), eps,
        HAS_RES=has_res, ROWS=rows, BLOCK_D=block_d, enable_fp_fusion=FP_FUSION,
        num_warps=4 if rows * block_d <= 2048 else 8,
    )


def _rows(t: torch.Tensor) -> torch.Tensor:
    """[..., D] -> [N, D] view with unit column stride (copies only if needed)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [N, D] (or [..., D]), weight [D] -> [N, D] in promote(x.dtype, weight.dtype) (x.dtype when they
    match). ``(x / sqrt(mean(x²) + eps))`` in fp32, rounded to x.dtype, × weight. fp64 -> torch_ref."""
    if x.dtype == torch.float64 or weight.dtype == torch.float64:
        return _ref.rms_norm(x, weight, eps)
    y = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)  # [..., D]
    if x.numel():
        _launch(_rows(x), None, weight.contiguous(), y.view(-1, x.shape[-1]), None, eps)
    return y


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    """x, residual [N, D] (or [..., D]), weight [D] -> (rms_norm(x + residual) [N, D], x + residual [N, D]).
    The sum is rounded to promote(x.dtype, residual.dtype) before normalising. fp64 -> torch_ref."""
    if torch.float64 in (x.dtype, residual.dtype, weight.dtype):
        return _ref.add_rms_norm(x, residual, weight, eps)
    s_dtype = torch.promote_types(x.dtype, residual.dtype)
    s = torch.empty(x.shape, dtype=s_dtype, device=x.device)  # [..., D]
    y = torch.empty(x.shape, dtype=torch.promote_types(s_dtype, weight.dtype), device=x.device)  # [..., D]
    if x.numel():
        d = x.shape[-1]
        _launch(_rows(x), _rows(residual), weight.contiguous(), y.view(-1, d), s.view(-1, d), eps)
    return y, s
