"""Rotary position embedding, NeoX ("rotate_half") layout, and LLaDA-MoE's per-head QK-norm fused in front
of it (spec: ``torch_ref/rope.py``).

Legend: N tokens, H query heads, Hk key heads, D head dim, D2 = D/2, R (token, head) rows per program.

One launch covers q and k: the first programs take q's (token, head) rows, the rest k's. cos/sin come from
the spec's own ``rope_cos_sin`` (a tiny [N, D] fp32 table), so the angles are bit for bit the reference's.
``rotate_fp32`` True rotates in fp32 and rounds once; False rounds cos/sin, both products and the sum to
the activation dtype, exactly as the spec's half-precision arithmetic does. With QK-norm each row is first
normalised as ``norm.rms_norm`` does (fp32 statistics, rounded to the activation dtype, × weight, rounded
again) and rotated from that rounded value without a round trip through memory. fp64 inputs, and weights
of another dtype than q/k, use the PyTorch reference.
"""
import torch
import triton
import triton.language as tl

from unmask.kernels.torch_ref import rope as _ref
from unmask.kernels.triton_ops._common import FP_FUSION, next_pow2, row_major

__all__ = ["rope", "rope_apply", "qk_norm_rope"]


@triton.jit
def _rotate_rows(x_ptr, y_ptr, w_ptr, cos_ptr, sin_ptr, block, n_rows, heads, half, stride_xn, stride_xh,
                 stride_yn, stride_yh, stride_c, eps, NORM: tl.constexpr, FP32: tl.constexpr, ROWS: tl.constexpr,
                 BLOCK_H: tl.constexpr):
    """Rows block·R .. block·R+R-1 of x [N·heads (token, head) rows, D] -> y: optional RMSNorm, then RoPE."""
    r = block * ROWS + tl.arange(0, ROWS)  # [R] flat (token, head) index
    tok = (r // heads).to(tl.int64)[:, None]  # [R, 1]
    head = (r % heads).to(tl.int64)[:, None]
    cols = tl.arange(0, BLOCK_H)[None, :]  # [1, BH]
    mask = (r < n_rows)[:, None] & (cols < half)  # [R, BH]
    xp = x_ptr + tok * stride_xn + head * stride_xh + cols
    yp = y_ptr + tok * stride_yn + head * stride_yh + cols
    x1 = tl.load(xp, mask=mask, other=0.0).to(tl.float32)  # [R, BH] first half
    x2 = tl.load(xp + half, mask=mask, other=0.0).to(tl.float32)  # second half
    dt = y_ptr.dtype.element_ty
    if NORM:  # rms_norm over the whole head (both halves), rounded as the spec
        inv = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * half) + eps)[:, None]  # [R, 1]
        w1 = tl.load(w_ptr + cols, mask=cols < half, other=0.0).to(tl.float32)  # [1, BH]
        w2 = tl.load(w_ptr + half + cols, mask=cols < half, other=0.0).to(tl.float32)
        x1 = ((x1 * inv).to(dt).to(tl.float32) * w1).to(dt).to(tl.float32)
        x2 = ((x2 * inv).to(dt).to(tl.float32) * w2).to(dt).to(tl.float32)
    c = tl.load(cos_ptr + tok * stride_c + cols, mask=mask, other=0.0)  # [R, BH] fp32
    s = tl.load(sin_ptr + tok * stride_c + cols, mask=mask, other=0.0)
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


@triton.jit
def _qk_rope_kernel(q_ptr, k_ptr, qo_ptr, ko_ptr, qw_ptr, kw_ptr, cos_ptr, sin_ptr, n_tok, heads_q, heads_k, half,
                    q_blocks, stride_qn, stride_qh, stride_kn, stride_kh, stride_qon, stride_qoh, stride_kon,
                    stride_koh, stride_c, eps, NORM: tl.constexpr, FP32: tl.constexpr, ROWS: tl.constexpr,
                    BLOCK_H: tl.constexpr):
    pid = tl.program_id(0)
    if pid < q_blocks:
        _rotate_rows(q_ptr, qo_ptr, qw_ptr, cos_ptr, sin_ptr, pid, n_tok * heads_q, heads_q, half, stride_qn,
                     stride_qh, stride_qon, stride_qoh, stride_c, eps, NORM, FP32, ROWS, BLOCK_H)
    else:
        _rotate_rows(k_ptr, ko_ptr, kw_ptr, cos_ptr, sin_ptr, pid - q_blocks, n_tok * heads_k, heads_k, half,
                     stride_kn, stride_kh, stride_kon, stride_koh, stride_c, eps, NORM, FP32, ROWS, BLOCK_H)


def _launch(q, k, cos, sin, rotate_fp32, q_weight=None, k_weight=None, eps=0.0):
    """q [N, H, D], k [N, Hk, D] (unit stride on D), cos/sin [N, D] fp32 -> rotated copies (q, k), one launch."""
    n, heads_q, d = q.shape
    heads_k = k.shape[1]
    qo = torch.empty_like(q, memory_format=torch.contiguous_format)  # [N, H, D]
    ko = torch.empty_like(k, memory_format=torch.contiguous_format)  # [N, Hk, D]
    if n == 0:
        return qo, ko
    half = d // 2
    block_h = next_pow2(half)
    rows = max(1, min(64, 2048 // block_h))
    q_blocks = triton.cdiv(n * heads_q, rows)
    norm = q_weight is not None
    qw, kw = (q_weight, k_weight) if norm else (cos, cos)  # unused when NORM is off
    grid = (q_blocks + triton.cdiv(n * heads_k, rows),)
    _qk_rope_kernel[grid](q, k, qo, ko, qw, kw, cos, sin, n, heads_q, heads_k, half, q_blocks,
                          q.stride(0), q.stride(1), k.stride(0), k.stride(1), qo.stride(0), qo.stride(1),
                          ko.stride(0), ko.stride(1), cos.stride(0), eps, NORM=norm, FP32=rotate_fp32, ROWS=rows,
                          BLOCK_H=block_h, enable_fp_fusion=FP_FUSION, num_warps=4)
    return qo, ko


def rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, theta: float, rotate_fp32: bool):
    """q [N, H, D], k [N, Hk, D], positions [N] int -> (q, k) rotated copies, same dtypes.

    NeoX layout: out = x·cos + rotate_half(x)·sin with rotate_half(x) = [-x[D/2:], x[:D/2]]; D even.
    fp64 inputs are served by the PyTorch reference.
    """
    cos, sin = _ref.rope_cos_sin(positions, q.shape[-1], theta, q.dtype)  # [N, D] fp32 (fp64 for fp64 q)
    return rope_apply(q, k, cos, sin, rotate_fp32)


def rope_apply(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotate_fp32: bool):
    """q [N, H, D], k [N, Hk, D], cos/sin [N, D] fp32 tables of ``rope_cos_sin`` -> (q, k) rotated copies.
    One launch for both; the model builds the tables once per forward and every layer reuses them.
    fp64 inputs are served by the PyTorch reference."""
    if q.dtype == torch.float64 or k.dtype == torch.float64:
        return _ref.rope_apply(q, k, cos, sin, rotate_fp32)
    return _launch(row_major(q), row_major(k), cos, sin, rotate_fp32)


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotate_fp32: bool,
                 q_weight: torch.Tensor, k_weight: torch.Tensor, eps: float):
    """q [N, H, D], k [N, Hk, D], cos/sin [N, D] fp32, q_weight/k_weight [D] -> (q, k): per-head RMSNorm of
    each, then RoPE, in one launch (q/k read once, written once). fp64 inputs, and weights whose dtype is not
    q's, are served by the PyTorch reference."""
    if q.dtype == torch.float64 or k.dtype != q.dtype or q_weight.dtype != q.dtype or k_weight.dtype != q.dtype:
        return _ref.qk_norm_rope(q, k, cos, sin, rotate_fp32, q_weight, k_weight, eps)
    return _launch(row_major(q), row_major(k), cos, sin, rotate_fp32, q_weight.contiguous(), k_weight.contiguous(),
                   eps)
