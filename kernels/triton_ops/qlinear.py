"""GEMM with a quantized weight (spec: ``torch_ref/linear.py`` ``quantized_linear``; format: ``kernels/quant.py``).

Legend: M rows, K input features, N output features, G group size, SK key splits, BM/BN/BK tile sizes.

y = x·dequant(W)ᵀ with W as fp8 / int8 codes [N, K] or int4 nibbles [N, K/2] and fp32 scales [N, K/G]. The weight
is streamed once, in its quantized bytes, and dequantized inside the K loop: each [BN, BK] tile of codes is
converted to the activation dtype (exact: int8, int4 and e4m3 values are representable in bf16/fp16), multiplied
on the tensor cores against x, and the fp32 partial of the tile is scaled by its group's scale (G ≥ BK, so one
scale per row and tile); per-channel scales (G = K) are applied once, after the loop. Two shapes of one kernel:
- skinny (M ≤ 64, block steps): one M tile, operands swapped so W's 64-row tile fills the MMA's M side, K split
  across programs when N tiles alone cannot fill the GPU (fp32 partials summed in split order by a second kernel,
  deterministic);
- tiled (larger M, refresh steps): a grid over (N tiles, M tiles), no split.
"""
import torch
import triton
import triton.language as tl

from unmask.kernels.quant import QuantizedWeight
from unmask.kernels.torch_ref import qlinear as _ref
from unmask.kernels.triton_ops._common import FP_FUSION, interpreting, mma, next_pow2, num_sms, row_major, upcast
from unmask.kernels.triton_ops.linear import MAX_ROWS, PROGRAMS_PER_SM, _split_sum_kernel, _splits

__all__ = ["quantized_linear"]

_FMT_CODE = {"fp8": 0, "int8": 1, "int4": 2}


@triton.jit
def load_codes(w_ptr, row, col, mask, stride_wn, INT4: tl.constexpr):
    """Quantized codes W[row, col] as fp32 (the int8 / e4m3 value, or the int4 nibble − 8) for broadcastable
    index tensors of either tile orientation; masked entries are 0."""
    ptrs = w_ptr + row.to(tl.int64) * stride_wn
    if INT4:
        b = tl.load(ptrs + col // 2, mask=mask, other=0x88).to(tl.int32)  # low nibble: even k
        return ((b >> ((col % 2) * 4)) & 0xF).to(tl.float32) - 8.0
    return tl.where(mask, tl.load(ptrs + col, mask=mask).to(tl.float32), 0.0)  # no `other`: fp8 has no literal


@triton.jit
def load_dequant(w_ptr, s_ptr, row, col, mask, stride_wn, stride_sn, GROUP: tl.constexpr, INT4: tl.constexpr):
    """dequant(W)[row, col] = code · scale[row, col // GROUP] in fp32 (the fused MoE's weight tiles)."""
    s = tl.load(s_ptr + row.to(tl.int64) * stride_sn + col // GROUP, mask=mask, other=0.0)
    return load_codes(w_ptr, row, col, mask, stride_wn, INT4) * s


@triton.jit
def _q_tile(acc, x_ptr, w_ptr, s_ptr, k_start, k_hi, m, m_ok, n, n_ok, stride_xm, stride_wn, stride_sn,
            GROUP: tl.constexpr, PER_CHANNEL: tl.constexpr, INT4: tl.constexpr, BLOCK_K: tl.constexpr,
            UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """acc [BN, BM] + dequant(W[n, k_start:+BK]) · x[m, k_start:+BK]ᵀ (per-channel scales left for the end)."""
    kk = k_start + tl.arange(0, BLOCK_K)  # [BK]
    k_ok = kk < k_hi
    w = load_codes(w_ptr, n[:, None], kk[None, :], n_ok[:, None] & k_ok[None, :], stride_wn, INT4)  # [BN, BK]
    xt = tl.load(x_ptr + m[None, :].to(tl.int64) * stride_xm + kk[:, None], mask=m_ok[None, :] & k_ok[:, None],
                 other=0.0)  # [BK, BM]
    if UPCAST:
        xt = xt.to(tl.float32)
    w = w.to(xt.dtype)  # exact: the codes are representable in every activation dtype
    if PER_CHANNEL:
        return mma(w, xt, acc, IEEE)
    s = tl.load(s_ptr + n.to(tl.int64) * stride_sn + k_start // GROUP, mask=n_ok, other=0.0)  # [BN]: one group
    return acc + mma(w, xt, tl.zeros(acc.shape, tl.float32), IEEE) * s[:, None]


@triton.jit
def _qgemm_kernel(x_ptr, w_ptr, s_ptr, y_ptr, part_ptr, n_rows, n_out, n_in, k_chunk, stride_xm, stride_wn,
                  stride_sn, stride_ym, GROUP: tl.constexpr, PER_CHANNEL: tl.constexpr, INT4: tl.constexpr,
                  SPLITS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  UPCAST: tl.constexpr, IEEE: tl.constexpr, WHILE_LOOP: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] output features
    n_ok = n < n_out
    m = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM] rows
    m_ok = m < n_rows
    split = tl.program_id(1)
    lo = split * k_chunk
    hi = tl.minimum(lo + k_chunk, n_in)
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    if WHILE_LOOP:  # interpreter: its scalars are 1-element arrays that range() cannot take (numpy >= 2)
        k0 = lo
        while k0 < hi:
            acc = _q_tile(acc, x_ptr, w_ptr, s_ptr, k0, hi, m, m_ok, n, n_ok, stride_xm, stride_wn, stride_sn, GROUP,
                          PER_CHANNEL, INT4, BLOCK_K, UPCAST, IEEE)
            k0 += BLOCK_K
    else:
        for k0 in range(lo, hi, BLOCK_K):
            acc = _q_tile(acc, x_ptr, w_ptr, s_ptr, k0, hi, m, m_ok, n, n_ok, stride_xm, stride_wn, stride_sn, GROUP,
                          PER_CHANNEL, INT4, BLOCK_K, UPCAST, IEEE)
    if PER_CHANNEL:
        acc = acc * tl.load(s_ptr + n.to(tl.int64) * stride_sn, mask=n_ok, other=0.0)[:, None]
    mask = n_ok[:, None] & m_ok[None, :]  # [BN, BM]
    if SPLITS == 1:
        tl.store(y_ptr + m[None, :].to(tl.int64) * stride_ym + n[:, None], acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:  # fp32 partials [SK, M, N]
        tl.store(part_ptr + (split * n_rows + m[None, :]).to(tl.int64) * n_out + n[:, None], acc, mask=mask)


def _config(n_rows: int, n_out: int, n_in: int, group: int, elem_bytes: int, device: torch.device):
    """(BM, BN, BK, warps, stages, splits, M tiles). BK divides the group so a tile has one scale per row."""
    if interpreting():
        bm, bn, bk, warps, stages = max(16, next_pow2(min(n_rows, MAX_ROWS))), 32, 32, 4, 1
    elif n_rows <= MAX_ROWS:
        bm, bn, bk, warps, stages = max(16, next_pow2(n_rows)), 64, 128 if elem_bytes <= 2 else 32, 4, 4
    else:
        bm, bn, bk, warps, stages = 64, 128, 64 if elem_bytes <= 2 else 32, 8, 3
    while group % bk and bk > 16:
        bk //= 2
    if group % bk:
        raise ValueError(f"group size {group} is not a multiple of 16")
    m_tiles = triton.cdiv(n_rows, bm)
    splits = 1
    if m_tiles == 1:
        splits = _splits(triton.cdiv(n_out, bn), n_in, bk, PROGRAMS_PER_SM * num_sms(device))
    return bm, bn, bk, warps, stages, splits, m_tiles


def quantized_linear(x: torch.Tensor, w: QuantizedWeight) -> torch.Tensor:
    """x [M, K] (fp16/bf16/fp32), w QuantizedWeight [N, K] -> x @ dequantize(w).T [M, N] x.dtype; float64 goes to
    the PyTorch reference."""
    if x.dtype == torch.float64:
        return _ref.quantized_linear(x, w)
    return quantized_linear_fwd(x, w)


def quantized_linear_fwd(x: torch.Tensor, w: QuantizedWeight, splits: int | None = None) -> torch.Tensor:
    """The kernel itself; ``splits`` overrides the K split of the skinny shape (None: from the SM count)."""
    n_rows, n_in = x.shape
    n_out = w.shape[0]
    y = torch.empty((n_rows, n_out), dtype=x.dtype, device=x.device)  # [M, N]
    if n_rows == 0 or n_out == 0:
        return y
    x = row_major(x)
    data, scales = row_major(w.data), row_major(w.scales)
    bm, bn, bk, warps, stages, auto, m_tiles = _config(n_rows, n_out, n_in, w.group_size, x.element_size(), x.device)
    splits = auto if splits is None or m_tiles > 1 else max(1, splits)
    unit = bk if w.group_size == n_in else w.group_size  # split points on group boundaries
    k_chunk = triton.cdiv(triton.cdiv(n_in, splits), unit) * unit
    splits = triton.cdiv(n_in, k_chunk)
    part = y if splits == 1 else torch.empty((splits, n_rows, n_out), dtype=torch.float32, device=x.device)
    _qgemm_kernel[(triton.cdiv(n_out, bn), splits, m_tiles)](
        x, data, scales, y, part, n_rows, n_out, n_in, k_chunk, x.stride(0), data.stride(0), scales.stride(0),
        y.stride(0), GROUP=w.group_size, PER_CHANNEL=w.group_size == n_in, INT4=w.fmt == "int4", SPLITS=splits,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, UPCAST=upcast(x.dtype),
        IEEE=x.dtype == torch.float32 and not interpreting(), WHILE_LOOP=interpreting(),
        enable_fp_fusion=FP_FUSION, num_warps=warps, num_stages=stages)
    if splits > 1:
        block = 1024
        _split_sum_kernel[(triton.cdiv(n_rows * n_out, block),)](part, y, n_rows, n_out, y.stride(0), SPLITS=splits,
                                                                 BLOCK=block, enable_fp_fusion=FP_FUSION, num_warps=4)
    return y
