"""Skinny GEMM for the few rows of a small-batch block step (spec: ``torch_ref/linear.py``).

Legend: M rows, K input features, N output features, SK key splits, BM/BN/BK tile sizes.

y = x·Wᵀ with M <= 64 (a batch-1 block step has 32 rows) is bound by streaming W (N·K·2 bytes), and torch's
GEMM leaves much of the bandwidth unused at such M on an H100 (a 16-row fp16 GEMM measured at about 40% of
it, NVIDIA/cutlass#1176). Here each program owns an (N tile, K split) pair and streams its W slice exactly
once through Triton's cp.async pipeline; the operands are swapped (the [BN, BM] tile Wₙ·xᵀ is accumulated) so
that W's 64-row tile fills the MMA's M side while x supplies only BM columns. When N/BN tiles alone cannot
fill the GPU, K is split: each split writes fp32 partials [SK, M, N]; the last split of an N tile to finish
(an arrival counter per tile) adds them in split order and rounds once, so the result does not depend on
which program arrives last (deterministic); without counters a second kernel does the same sum.
``KernelOptions.gemm="triton"`` (``--gemm``, ``UNMASK_GEMM``) routes M <= 64 GEMMs on CUDA here; the default
(``cublas``) keeps torch's GEMM until a GPU run has timed both (``bench_gemm.py``).
"""

import torch
import triton
import triton.language as tl

from unmask.kernels import options
from unmask.kernels.torch_ref import linear as _ref
from unmask.kernels.triton_ops._common import (FP_FUSION, MAX_COUNTERS, arrival_counters, interpreting, mma, next_pow2,
                                                num_sms, row_major, upcast)

__all__ = ["linear"]

MAX_ROWS = 64
"""Largest M the skinny kernel takes; taller inputs are real GEMMs and stay with torch."""


@triton.jit
def _k_slice(acc, x_ptr, w_ptr, k0, k_hi, m, m_ok, n, n_ok, stride_xm, stride_wn, BLOCK_K: tl.constexpr,
             EVEN_K: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """acc [BN, BM] + W[n, k0:k0+BK] · x[m, k0:k0+BK]ᵀ."""
    kk = k0 + tl.arange(0, BLOCK_K)  # [BK]
    if EVEN_K:  # no mask along the contiguous axis: 16-byte loads
        w = tl.load(w_ptr + n[:, None].to(tl.int64) * stride_wn + kk[None, :], mask=n_ok[:, None], other=0.0)
        xt = tl.load(x_ptr + m[None, :].to(tl.int64) * stride_xm + kk[:, None], mask=m_ok[None, :], other=0.0)
    else:
        k_ok = kk < k_hi
        w = tl.load(w_ptr + n[:, None].to(tl.int64) * stride_wn + kk[None, :], mask=n_ok[:, None] & k_ok[None, :],
                    other=0.0)  # [BN, BK]
        xt = tl.load(x_ptr + m[None, :].to(tl.int64) * stride_xm + kk[:, None], mask=m_ok[None, :] & k_ok[:, None],
                     other=0.0)  # [BK, BM]
    if UPCAST:
        w, xt = w.to(tl.float32), xt.to(tl.float32)
    return mma(w, xt, acc, IEEE)


@triton.jit
def _skinny_kernel(x_ptr, w_ptr, y_ptr, part_ptr, count_ptr, n_rows, n_out, n_in, k_chunk, stride_xm, stride_wn,
                   stride_ym, SPLITS: tl.constexpr, SERIAL: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, UPCAST: tl.constexpr,
                   IEEE: tl.constexpr, WHILE_LOOP: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] output features
    n_ok = n < n_out
    m = tl.arange(0, BLOCK_M)  # [BM] rows
    m_ok = m < n_rows
    split = tl.program_id(1)
    lo = split * k_chunk
    hi = tl.minimum(lo + k_chunk, n_in)
    acc = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
    if WHILE_LOOP:  # interpreter: its scalars are 1-element arrays that range() cannot take (numpy >= 2)
        k0 = lo
        while k0 < hi:
            acc = _k_slice(acc, x_ptr, w_ptr, k0, hi, m, m_ok, n, n_ok, stride_xm, stride_wn, BLOCK_K, EVEN_K,
                           UPCAST, IEEE)
            k0 += BLOCK_K
    else:
        for k0 in range(lo, hi, BLOCK_K):
            acc = _k_slice(acc, x_ptr, w_ptr, k0, hi, m, m_ok, n, n_ok, stride_xm, stride_wn, BLOCK_K, EVEN_K,
                           UPCAST, IEEE)
    mask = n_ok[:, None] & m_ok[None, :]  # [BN, BM]
    out = y_ptr + m[None, :].to(tl.int64) * stride_ym + n[:, None]  # y[m, n] = acc[n, m]
    if SPLITS == 1:
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:  # fp32 partials [SK, M, N]
        tl.store(part_ptr + (split * n_rows + m[None, :]).to(tl.int64) * n_out + n[:, None], acc, mask=mask)
        if SERIAL:  # the last of this N tile's splits to finish sums all of them in split order
            tl.debug_barrier()  # every thread's partial store precedes the release below
            done = tl.atomic_add(count_ptr + tl.program_id(0), 1, sem="acq_rel", scope="gpu")
            if done == SPLITS - 1:
                total = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
                for s in tl.static_range(SPLITS):  # L2 reads (.cg): other SMs wrote them
                    total += tl.load(part_ptr + (s * n_rows + m[None, :]).to(tl.int64) * n_out + n[:, None],
                                     mask=mask, other=0.0, cache_modifier=".cg")
                tl.store(out, total.to(y_ptr.dtype.element_ty), mask=mask)
                tl.store(count_ptr + tl.program_id(0), 0)  # back to zero for the next call (graph replays too)


@triton.jit
def _split_sum_kernel(part_ptr, y_ptr, n_rows, n_out, stride_ym, SPLITS: tl.constexpr, BLOCK: tl.constexpr):
    """y[m, n] = Σ_s part[s, m, n] in split order, rounded once to y's dtype."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # [B] flat m·N + n
    ok = i < n_rows * n_out
    i64 = i.to(tl.int64)
    acc = tl.zeros([BLOCK], tl.float32)
    for s in tl.static_range(SPLITS):
        acc += tl.load(part_ptr + s * n_rows * n_out + i64, mask=ok, other=0.0)
    tl.store(y_ptr + (i64 // n_out) * stride_ym + i64 % n_out, acc.to(y_ptr.dtype.element_ty), mask=ok)


PROGRAMS_PER_SM = 2
"""Resident skinny programs per SM at the bf16 config: 96 KiB of shared memory each (4 stages of a 64×128 W
slice and a 128×BM x slice) on sm_90's 227 KiB; 56 registers (compile_check.py)."""


def _splits(tiles: int, n_in: int, block_k: int, slots: int) -> int:
    """K splits for ``tiles`` N tiles on ``slots`` resident programs: the fewest (each keeping >= 2 K slices)
    whose last wave is >= 90% full, else the fullest. A 384-tile GEMM on 264 slots runs 1.45 waves at the
    speed of 2 (73%); split in 2 it runs 768 programs in 3 waves (97%)."""
    best, best_fill = 1, 0.0
    for s in range(1, max(1, min(8, n_in // (2 * block_k))) + 1):
        programs = tiles * s
        fill = programs / (triton.cdiv(programs, slots) * slots)
        if fill >= 0.9:
            return s
        if fill > best_fill:
            best, best_fill = s, fill
    return best


def _config(n_rows: int, n_out: int, n_in: int, elem_bytes: int, device: torch.device):
    """(BM, BN, BK, num_warps, num_stages, splits): 64-row W tiles (one warpgroup MMA on sm_90), 128-wide K
    slices, 4 stages in flight, K split by ``_splits``. Interpreter and fp32 (a GPU test path: IEEE
    products) get short slices and fewer stages."""
    block_m = max(16, next_pow2(n_rows))
    if interpreting():
        block_n, block_k, warps, stages = 32, 32, 4, 1
    elif elem_bytes > 2:
        block_n, block_k, warps, stages = 64, 32, 4, 2
    else:
        block_n, block_k, warps, stages = 64, 128, 4, 4
    splits = _splits(triton.cdiv(n_out, block_n), n_in, block_k, PROGRAMS_PER_SM * num_sms(device))
    return block_m, block_n, block_k, warps, stages, splits


def linear_fwd(x: torch.Tensor, weight: torch.Tensor, splits: int | None = None,
               serial: bool | None = None) -> torch.Tensor:
    """The skinny kernel itself for x [M, K] (M <= MAX_ROWS), weight [N, K] -> [M, N] x.dtype, with an explicit
    K-split count (None: chosen from the GPU's SM count) and, when split, the sum of the fp32 partials either
    inside the GEMM kernel by the last split of each N tile to arrive (``serial``; one launch; the default
    when counters are available) or by a second kernel. Both add the splits in the same order: same bits."""
    n_rows, n_in = x.shape
    n_out = weight.shape[0]
    if n_rows > MAX_ROWS:
        raise ValueError(f"skinny linear takes at most {MAX_ROWS} rows, got {n_rows}")
    y = torch.empty((n_rows, n_out), dtype=x.dtype, device=x.device)  # [M, N]
    if n_rows == 0 or n_out == 0:
        return y
    if n_in == 0:
        return y.zero_()
    x, weight = row_major(x), row_major(weight)
    block_m, block_n, block_k, warps, stages, auto = _config(n_rows, n_out, n_in, x.element_size(), x.device)
    splits = auto if splits is None else max(1, splits)
    k_chunk = triton.cdiv(triton.cdiv(n_in, splits), block_k) * block_k  # whole BK slices per split
    splits = triton.cdiv(n_in, k_chunk)
    tiles = triton.cdiv(n_out, block_n)
    part = y if splits == 1 else torch.empty((splits, n_rows, n_out), dtype=torch.float32, device=x.device)
    counters = arrival_counters(x.device, tiles) if splits > 1 and serial is not False else None
    if serial and splits > 1 and counters is None:
        raise ValueError(f"no in-kernel split sum for {tiles} N tiles here (more than {MAX_COUNTERS}, or the "
                         "counters were first needed inside CUDA-graph capture)")
    _skinny_kernel[(tiles, splits)](
        x, weight, y, part, counters if counters is not None else part, n_rows, n_out, n_in, k_chunk, x.stride(0),
        weight.stride(0), y.stride(0), SPLITS=splits, SERIAL=counters is not None, BLOCK_M=block_m,
        BLOCK_N=block_n, BLOCK_K=block_k, EVEN_K=n_in % block_k == 0, UPCAST=upcast(x.dtype),
        IEEE=x.dtype == torch.float32 and not interpreting(), WHILE_LOOP=interpreting(), enable_fp_fusion=FP_FUSION,
        num_warps=warps, num_stages=stages)
    if splits > 1 and counters is None:
        block = 1024
        _split_sum_kernel[(triton.cdiv(n_rows * n_out, block),)](part, y, n_rows, n_out, y.stride(0),
                                                                 SPLITS=splits, BLOCK=block, enable_fp_fusion=FP_FUSION,
                                                                 num_warps=4)
    return y


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [M, K], weight [N, K] -> x @ weight.T [M, N] x.dtype. The skinny kernel when the active
    ``KernelOptions.gemm`` is ``triton``, M <= MAX_ROWS and the dtypes are fp16/bf16/fp32 and equal; torch's
    GEMM otherwise."""
    if (0 < x.shape[0] <= MAX_ROWS and x.dim() == 2 and x.dtype == weight.dtype
            and x.dtype in (torch.float16, torch.bfloat16, torch.float32) and options.active().gemm == "triton"):
        return linear_fwd(x, weight)
    return _ref.linear(x, weight)
