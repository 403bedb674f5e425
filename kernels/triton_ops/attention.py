"""Bidirectional varlen attention over packed sequences, optionally over a paged K/V cache, and the
cache scatter (spec: ``torch_ref/attention.py``).

Legend: N packed new tokens, B sequences, H query heads, Hk key/value heads (H % Hk == 0), D head dim,
P pages, S page size, L_b keys of sequence b, SP key splits, BM/BN/BD query/key/head-dim tile sizes.

One program per (query tile, sequence·head, key split): FlashAttention-2 online softmax in fp32 with
``exp2`` (scale·log2 e folded into one multiply), no causal mask, the loop bound is the sequence's own
key count (``n_b`` without a cache, ``kv_lens[b]`` with one). With a cache, key position p comes from
the new rows when ``new_offsets[b] <= p < new_offsets[b] + n_b`` and from page
``block_table[b, p // S]`` otherwise: either one loop choosing per position (merged) or three loops, cached
prefix / new rows / cached suffix, each reading one source (segmented, or prefetch: see ``LOOPS`` and
``KernelOptions.attn_loop``; the loops themselves are in ``attention_loops.py``). When B·H·q-tiles is too
small to fill the GPU, the key range is split (flash-decoding): each split writes fp32 partials (acc, m, l)
merged in split order by a combine kernel or, with ``KernelOptions.serial_combine``, inside the same launch by
the last split of each group to finish (arrival counters). Rows without any key produce 0 (as SDPA for a fully
masked row), never NaN. No host syncs.
"""

import torch
import triton
import triton.language as tl

from unmask.kernels import options
from unmask.kernels.options import ATTN_LOOPS
from unmask.kernels.torch_ref import attention as _ref
from unmask.kernels.triton_ops._common import (FP_FUSION, MAX_COUNTERS, arrival_counters, interpreting, next_pow2,
                                                num_sms, upcast)
from unmask.kernels.triton_ops.attention_loops import SRC_MIXED, SRC_NEW, attn_range, attn_range_prefetch

__all__ = ["attention", "kv_cache_write"]

_LOG2E = 1.4426950408889634


LOOPS = ATTN_LOOPS
"""Cached key loops (``attention_fwd(loop=...)``; the engine's comes from ``KernelOptions.attn_loop``)."""


@triton.jit
def _combine_rows(part_ptr, ml_ptr, o_ptr, r64, r_ok, heads, head_dim, stride_on, stride_oh, SPLITS: tl.constexpr,
                  ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Merge the SP partials of R (token, head) rows r64 [R] (flat token·H + head): o = Σ acc_s 2^(m_s - m*) /
    Σ l_s 2^(m_s - m*), splits in order. Partials are read from L2 (.cg): other programs wrote them."""
    d = tl.arange(0, BLOCK_D)
    mask = r_ok[:, None] & (d < head_dim)[None, :]  # [R, BD]
    m_star = tl.full([ROWS], float("-inf"), tl.float32)
    for s in tl.static_range(SPLITS):
        m_star = tl.maximum(m_star, tl.load(ml_ptr + (r64 * SPLITS + s) * 2, mask=r_ok, other=float("-inf"),
                                            cache_modifier=".cg"))
    m_use = tl.where(m_star == float("-inf"), 0.0, m_star)
    l_sum = tl.zeros([ROWS], tl.float32)
    acc = tl.zeros([ROWS, BLOCK_D], tl.float32)
    for s in tl.static_range(SPLITS):
        slot = r64 * SPLITS + s  # [R]
        w = tl.exp2(tl.load(ml_ptr + slot * 2, mask=r_ok, other=float("-inf"), cache_modifier=".cg") - m_use)
        l_sum += w * tl.load(ml_ptr + slot * 2 + 1, mask=r_ok, other=0.0, cache_modifier=".cg")
        part = tl.load(part_ptr + slot[:, None] * head_dim + d[None, :], mask=mask, other=0.0,
                       cache_modifier=".cg")  # [R, BD]
        acc += w[:, None] * part
    acc = acc / tl.where(l_sum > 0, l_sum, 1.0)[:, None]
    tok = r64 // heads
    out = o_ptr + (tok * stride_on + (r64 % heads) * stride_oh)[:, None] + d[None, :]
    tl.store(out, acc.to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _attn_fwd_kernel(q_ptr, k_ptr, v_ptr, o_ptr, part_ptr, ml_ptr, count_ptr, cu_q_ptr, cu_k_ptr, kc_ptr, vc_ptr,
                     bt_ptr, kvlen_ptr, off_ptr, qk_scale, heads, group, head_dim, page_size,
                     stride_qn, stride_qh, stride_kn, stride_kh, stride_vn, stride_vh, stride_on, stride_oh,
                     stride_cp, stride_cs, stride_ch, stride_vcp, stride_vcs, stride_vch, stride_bt,
                     HAS_CACHE: tl.constexpr, SOURCE: tl.constexpr, SEGMENTS: tl.constexpr, PREFETCH: tl.constexpr,
                     SPLITS: tl.constexpr, SERIAL: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
                     IEEE: tl.constexpr, WHILE_LOOP: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    split = tl.program_id(2)
    b = bh // heads
    h = bh % heads
    hk = h // group
    q_start = tl.load(cu_q_ptr + b)
    n_q = tl.load(cu_q_ptr + b + 1) - q_start
    if pid_m * BLOCK_M >= n_q:
        return
    k_start = tl.load(cu_k_ptr + b)  # the new key rows (cu_k is cu_q unless q holds a subset of the queries)
    n_new = tl.load(cu_k_ptr + b + 1) - k_start
    if HAS_CACHE:
        n_keys = tl.load(kvlen_ptr + b)
        new_off = tl.load(off_ptr + b)
    else:
        n_keys = n_new
        new_off = 0
    lo = 0
    hi = n_keys
    if SPLITS > 1:  # this split's key range, whole BN tiles (empty for short sequences)
        chunk = tl.cdiv(tl.cdiv(n_keys, SPLITS), BLOCK_N) * BLOCK_N
        lo = tl.minimum(split * chunk, n_keys)
        hi = tl.minimum(lo + chunk, n_keys)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    row_ok = rows < n_q
    tok = (q_start + rows).to(tl.int64)  # [BM]
    d = tl.arange(0, BLOCK_D)  # [BD]
    d_ok = d < head_dim
    q_mask = row_ok[:, None] & d_ok[None, :]  # [BM, BD]
    q = tl.load(q_ptr + tok[:, None] * stride_qn + h * stride_qh + d[None, :], mask=q_mask, other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    bt_row_ptr = bt_ptr + b.to(tl.int64) * stride_bt

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # running max (log2 domain)
    l_i = tl.zeros([BLOCK_M], tl.float32)  # running sum of exp2
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for seg in tl.static_range(SEGMENTS):  # 3: cached prefix, new rows, cached suffix; 1: every key at once
        seg_lo = lo
        seg_hi = hi
        if SEGMENTS == 3:
            if seg == 0:
                seg_hi = tl.minimum(hi, new_off)
            if seg == 1:
                seg_lo = tl.maximum(lo, new_off)
                seg_hi = tl.minimum(hi, new_off + n_new)
            if seg == 2:
                seg_lo = tl.maximum(lo, new_off + n_new)
        if PREFETCH and SEGMENTS == 3 and seg != 1:  # a cached segment, pipelined by hand
            m_i, l_i, acc = attn_range_prefetch(q, m_i, l_i, acc, seg_lo, seg_hi, k_ptr, v_ptr, kc_ptr, vc_ptr,
                                                 bt_row_ptr, hk, d, d_ok, qk_scale, stride_cp, stride_cs, stride_ch,
                                                 stride_vcp, stride_vcs, stride_vch, page_size, BLOCK_M, BLOCK_N,
                                                 UPCAST, IEEE, WHILE_LOOP)
        else:
            m_i, l_i, acc = attn_range(q, m_i, l_i, acc, seg_lo, seg_hi, k_ptr, v_ptr, kc_ptr, vc_ptr, bt_row_ptr,
                                        k_start, n_new, new_off, hk, d, d_ok, qk_scale, stride_kn, stride_kh, stride_vn,
                                        stride_vh, stride_cp, stride_cs, stride_ch, stride_vcp, stride_vcs, stride_vch,
                                        page_size,
                                        SOURCE if SEGMENTS == 1 else 1 - seg % 2,  # segments: cache, new rows, cache
                                        BLOCK_M, BLOCK_N, UPCAST, IEEE, WHILE_LOOP)

    if SPLITS == 1:
        acc = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # l = 0 only when there is no key: acc = 0 -> 0
        out = o_ptr + tok[:, None] * stride_on + h * stride_oh + d[None, :]  # [BM, BD]
        tl.store(out, acc.to(o_ptr.dtype.element_ty), mask=q_mask)
    else:  # fp32 partials: acc [N, H, SP, D], (m, l) [N, H, SP, 2]
        slot = (tok * heads + h) * SPLITS + split  # [BM]
        tl.store(part_ptr + slot[:, None] * head_dim + d[None, :], acc, mask=q_mask)
        tl.store(ml_ptr + slot * 2, m_i, mask=row_ok)
        tl.store(ml_ptr + slot * 2 + 1, l_i, mask=row_ok)
        if SERIAL:  # the last of this (query tile, sequence·head)'s splits to finish merges them all
            tl.debug_barrier()  # every thread's partial store precedes the release below
            group_id = pid_m * tl.num_programs(1) + bh
            done = tl.atomic_add(count_ptr + group_id, 1, sem="acq_rel", scope="gpu")
            if done == SPLITS - 1:
                _combine_rows(part_ptr, ml_ptr, o_ptr, tok * heads + h, row_ok, heads, head_dim, stride_on,
                              stride_oh, SPLITS, BLOCK_M, BLOCK_D)
                tl.store(count_ptr + group_id, 0)  # back to zero for the next call (graph replays too)


@triton.jit
def _attn_combine_kernel(part_ptr, ml_ptr, o_ptr, n_rows, heads, head_dim, stride_on, stride_oh,
                         SPLITS: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Merge SP partials of R (token, head) rows per program (when the attention kernel did not)."""
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # [R] flat token·H + head
    _combine_rows(part_ptr, ml_ptr, o_ptr, r.to(tl.int64), r < n_rows, heads, head_dim, stride_on, stride_oh,
                  SPLITS, ROWS, BLOCK_D)


# bf16/fp16 GPU tiles at head dim > 64: (largest BM, BN, num_warps, num_stages), per cached key loop and
# ``full`` for attention without a cache (the full-canvas refresh step; there Triton's pipeliner overlaps the
# next key tile's copies with the current tile's MMAs only from 3 stages on).
_GPU_TILES = {
    "full": (64, 64, 8, 2),
    "merged": (64, 64, 8, 2),
    "segmented": (64, 64, 8, 2),
    "prefetch": (64, 64, 4, 1),
}


def _config(max_seqlen_q: int, head_dim: int, elem_bytes: int, loop: str = "full"):
    """(BM, BN, BD, num_warps, num_stages) for ``loop`` (a key of ``_GPU_TILES``): tiles >= 16 for tl.dot, BM no
    taller than the longest sequence's power of two, smaller key tiles when interpreting and for fp32 (a test
    path on GPUs: IEEE products; 64-wide fp32 K/V tiles spill)."""
    block_d = max(16, next_pow2(head_dim))
    if interpreting():
        return min(64, max(16, next_pow2(max_seqlen_q))), 32, block_d, 4, 1
    bm_max, block_n, warps, stages = _GPU_TILES[loop]
    block_m = min(bm_max, max(16, next_pow2(max_seqlen_q)))
    if elem_bytes > 2:
        block_m, block_n, warps = min(block_m, 64), 32, 8
    if block_d <= 64:
        warps = 4
    return block_m, block_n, block_d, warps, stages


def _num_splits(work: int, device: torch.device, key_tiles_bound: int | None) -> int:
    """Key splits so that B·H·q-tiles·splits covers every SM (flash-decoding); 1 when already full."""
    sms = num_sms(device)
    if work >= sms:
        return 1
    splits = min(16, triton.cdiv(sms, work))
    return max(1, min(splits, key_tiles_bound)) if key_tiles_bound is not None else splits


def cache_operands(k, v, cu_seqlens_q, k_cache, v_cache, block_table, kv_lens, new_offsets):
    """The paged-cache kernel arguments: (k_cache, v_cache, block_table, kv_lens, new_offsets, the six cache
    strides, page size, block-table row stride); without a cache (k_cache None) placeholders the kernel ignores."""
    if k_cache is None:
        return k, v, cu_seqlens_q, cu_seqlens_q, cu_seqlens_q, (0,) * 6, 1, 0
    kc, vc = k_cache, v_cache
    strides = (kc.stride(0), kc.stride(1), kc.stride(2), vc.stride(0), vc.stride(1), vc.stride(2))
    return kc, vc, block_table, kv_lens, new_offsets, strides, kc.shape[1], block_table.stride(0)


def attention_fwd(q, k, v, cu_seqlens_q, max_seqlen_q, scale, k_cache=None, v_cache=None, block_table=None,
                  kv_lens=None, new_offsets=None, num_splits: int | None = None,
                  loop: str | None = None, serial_combine: bool | None = None, cu_seqlens_k=None) -> torch.Tensor:
    """``attention`` with an explicit key-split count (None: chosen from the GPU's SM count) and, with a cache,
    an explicit key loop, one of ``LOOPS`` (None: the active ``KernelOptions.attn_loop``); without a cache
    ``loop`` is ignored. With key splits the partials are merged inside the attention kernel by the last split
    of each (query tile, sequence·head) to finish (``serial_combine``; one launch) or by a second kernel (None:
    the active ``KernelOptions.serial_combine``); both merge in split order, so the results have the same bits.
    ``cu_seqlens_k``: q holds a subset of each sequence's queries and its new keys are those rows of k/v (without a
    cache all its keys; ``max_seqlen_q`` then bounds both counts)."""
    n, heads, head_dim = q.shape
    out = torch.empty_like(q)  # [N, H, D]
    batch = cu_seqlens_q.numel() - 1
    if n == 0 or batch == 0 or max_seqlen_q <= 0:
        return out.zero_()
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    has_cache = k_cache is not None
    loop = options.active().attn_loop if loop is None else loop
    if loop not in LOOPS:
        raise ValueError(f"attention loop {loop!r}: expected one of {', '.join(LOOPS)}")
    block_m, block_n, block_d, warps, stages = _config(max_seqlen_q, head_dim, q.element_size(),
                                                       loop if has_cache else "full")
    q_tiles = triton.cdiv(max_seqlen_q, block_m)
    if num_splits is None:
        bound = None if has_cache else triton.cdiv(max_seqlen_q, block_n)
        num_splits = _num_splits(batch * heads * q_tiles, q.device, bound)
    kc, vc, bt, kvl, off, cache_strides, page_size, stride_bt = cache_operands(
        k, v, cu_seqlens_q, k_cache, v_cache, block_table, kv_lens, new_offsets)
    counters = None
    if num_splits > 1:
        part = torch.empty((n, heads, num_splits, head_dim), dtype=torch.float32, device=q.device)
        ml = torch.empty((n, heads, num_splits, 2), dtype=torch.float32, device=q.device)
        serial = options.active().serial_combine if serial_combine is None else serial_combine
        counters = arrival_counters(q.device, q_tiles * batch * heads) if serial else None
        if serial_combine and counters is None:
            raise ValueError(f"no in-kernel split combine for {q_tiles * batch * heads} groups here (more than "
                             f"{MAX_COUNTERS}, or the counters were first needed inside CUDA-graph capture)")
    else:
        part, ml = out, out
    grid = (q_tiles, batch * heads, num_splits)
    _attn_fwd_kernel[grid](
        q, k, v, out, part, ml, counters if counters is not None else ml, cu_seqlens_q,
        cu_seqlens_q if cu_seqlens_k is None else cu_seqlens_k, kc, vc, bt, kvl, off,
        scale * _LOG2E, heads, heads // k.shape[1], head_dim, page_size,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), out.stride(0), out.stride(1),
        *cache_strides, stride_bt,
        HAS_CACHE=has_cache, SOURCE=SRC_MIXED if has_cache else SRC_NEW,
        SEGMENTS=3 if has_cache and loop != "merged" else 1, PREFETCH=has_cache and loop == "prefetch",
        SPLITS=num_splits, SERIAL=counters is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        UPCAST=upcast(q.dtype), IEEE=q.dtype == torch.float32 and not interpreting(), WHILE_LOOP=interpreting(),
        enable_fp_fusion=FP_FUSION, num_warps=warps, num_stages=stages,
    )
    if num_splits > 1 and counters is None:
        rows = max(1, 2048 // block_d)
        _attn_combine_kernel[(triton.cdiv(n * heads, rows),)](
            part, ml, out, n * heads, heads, head_dim, out.stride(0), out.stride(1),
            SPLITS=num_splits, ROWS=rows, BLOCK_D=block_d, enable_fp_fusion=FP_FUSION, num_warps=4)
    return out


def attention(q, k, v, cu_seqlens_q, max_seqlen_q, scale, k_cache=None, v_cache=None, block_table=None,
              kv_lens=None, new_offsets=None, attn_blocks=None, cu_seqlens_k=None):
    """q [N, H, D], k/v [N, Hk, D], cu_seqlens_q [B+1] int32, max_seqlen_q host int >= every n_b,
    scale float; optional cache k/v [P, S, Hk, D] (read as k's dtype), block_table [B, pages] int32,
    kv_lens [B] int32, new_offsets [B] int32; optional attn_blocks [B] int32 -> out [N, H, D] q.dtype.

    Non-causal softmax(scale·q·kᵀ)·v per sequence over its own keys (see the module docstring);
    fp16/bf16/fp32 (fp64 is served by the PyTorch reference). With ``attn_blocks`` (LLaDA2's block-causal
    pattern) the block-causal kernel of ``attention_block_causal.py`` runs instead. With ``cu_seqlens_k`` q holds
    a subset of each sequence's queries (see ``attention_fwd``).
    """
    if cu_seqlens_k is not None and attn_blocks is not None:
        raise ValueError("a query subset (cu_seqlens_k) is bidirectional only")
    if q.dtype == torch.float64:
        return _ref.attention(q, k, v, cu_seqlens_q, max_seqlen_q, scale, k_cache, v_cache, block_table,
                              kv_lens, new_offsets, attn_blocks, cu_seqlens_k)
    if attn_blocks is not None:
        from unmask.kernels.triton_ops.attention_block_causal import block_causal_attention
        return block_causal_attention(q, k, v, cu_seqlens_q, max_seqlen_q, scale, k_cache, v_cache, block_table,
                                      kv_lens, new_offsets, attn_blocks)
    return attention_fwd(q, k, v, cu_seqlens_q, max_seqlen_q, scale, k_cache, v_cache, block_table, kv_lens,
                         new_offsets, cu_seqlens_k=cu_seqlens_k)


@triton.jit
def _kv_write_kernel(k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, n_rows, head_dim, width, page_size,
                     stride_kn, stride_kh, stride_vn, stride_vh, stride_cp, stride_cs, stride_ch,
                     stride_vcp, stride_vcs, stride_vch, ROWS: tl.constexpr, BLOCK_F: tl.constexpr):
    """Copy R token rows (Hk·D values each, flattened to F) of k and v to their cache slots."""
    r = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # [R]
    slot = tl.load(slot_ptr + r, mask=r < n_rows, other=-1).to(tl.int64)  # [R]
    f = tl.arange(0, BLOCK_F)  # [F]
    hk = (f // head_dim).to(tl.int64)[None, :]
    d = (f % head_dim)[None, :]
    mask = (slot >= 0)[:, None] & (f < width)[None, :]  # [R, F]
    r64 = r.to(tl.int64)[:, None]
    page = (slot // page_size)[:, None]
    in_page = (slot % page_size)[:, None]
    k = tl.load(k_ptr + r64 * stride_kn + hk * stride_kh + d, mask=mask)
    v = tl.load(v_ptr + r64 * stride_vn + hk * stride_vh + d, mask=mask)
    tl.store(kc_ptr + page * stride_cp + in_page * stride_cs + hk * stride_ch + d,
             k.to(kc_ptr.dtype.element_ty), mask=mask)
    tl.store(vc_ptr + page * stride_vcp + in_page * stride_vcs + hk * stride_vch + d,
             v.to(vc_ptr.dtype.element_ty), mask=mask)


def kv_cache_write(k_cache, v_cache, k, v, slot_mapping) -> None:
    """Scatter k/v [N, Hk, D] into k_cache/v_cache [P, S, Hk, D] (in place) at flat slots
    slot_mapping [N] int64 (page = slot // S, offset = slot % S); negative slots are skipped.
    Values are cast to the cache dtype."""
    n, hk, head_dim = k.shape
    if n == 0:
        return
    k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (k, v))
    block_f = next_pow2(hk * head_dim)
    rows = max(1, min(16, 4096 // block_f))
    _kv_write_kernel[(triton.cdiv(n, rows),)](
        k, v, k_cache, v_cache, slot_mapping, n, head_dim, hk * head_dim, k_cache.shape[1],
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), k_cache.stride(0), k_cache.stride(1),
        k_cache.stride(2), v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        ROWS=rows, BLOCK_F=block_f, enable_fp_fusion=FP_FUSION, num_warps=4)
