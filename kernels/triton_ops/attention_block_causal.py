"""Block-causal varlen attention (LLaDA2), optionally over the paged K/V cache (spec: ``torch_ref/attention.py``
with ``attn_blocks``).

Legend: N packed new tokens, B sequences, H/Hk query/key heads, D head dim, P pages, S page size, BM/BN/BD
query/key/head-dim tiles.

One program per (query tile, sequence·head), FlashAttention-2 online softmax in fp32 with ``exp2``. Sequence b's
query row i sits at canvas position ``new_offsets[b] + i`` (0 + i without a cache) and may see key position j
only when ``j // s <= (new_offsets[b] + i) // s`` with s = attn_blocks[b] (its own block and every earlier one,
blocks aligned to absolute positions); s = 0 means bidirectional. The key loop stops at the end of the tile's last
query block, so later blocks are never read. Keys come from the new rows or, with a cache, from the new rows
where ``new_offsets[b] <= j < new_offsets[b] + n_b`` and from the pages elsewhere (``attn_range``'s merged
source). No key splits: LLaDA2's steps feed whole blocks, enough programs for the GPU.
"""
import torch
import triton
import triton.language as tl

from unmask.kernels.triton_ops._common import FP_FUSION, interpreting, next_pow2, upcast
from unmask.kernels.triton_ops.attention import cache_operands
from unmask.kernels.triton_ops.attention_loops import SRC_MIXED, SRC_NEW, _load_keys, softmax_update_masked

_LOG2E = 1.4426950408889634


@triton.jit
def _bc_tile(q, m_i, l_i, acc, start, hi, q_blk, blk, k_ptr, v_ptr, kc_ptr, vc_ptr, bt_row_ptr, q_start, n_q,
             new_off, hk, d, d_ok, qk_scale, stride_kn, stride_kh, stride_vn, stride_vh, stride_cp, stride_cs,
             stride_ch, stride_vcp, stride_vcs, stride_vch, page_size, SOURCE: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """Fold keys start .. start+BN-1 (< hi) into the state, each query row seeing only blocks <= its own."""
    pos = start + tl.arange(0, BLOCK_N)  # [BN]
    pos_ok = pos < hi
    k, v = _load_keys(k_ptr, v_ptr, kc_ptr, vc_ptr, bt_row_ptr, pos, pos_ok, q_start, n_q, new_off, hk, d, d_ok,
                      stride_kn, stride_kh, stride_vn, stride_vh, stride_cp, stride_cs, stride_ch,
                      stride_vcp, stride_vcs, stride_vch, page_size, SOURCE)
    ok = pos_ok[None, :] & ((pos // blk)[None, :] <= q_blk[:, None])  # [BM, BN]
    return softmax_update_masked(q, m_i, l_i, acc, k, v, ok, qk_scale, BLOCK_M, BLOCK_N, UPCAST, IEEE)


@triton.jit
def _bc_attn_kernel(q_ptr, k_ptr, v_ptr, o_ptr, cu_q_ptr, kc_ptr, vc_ptr, bt_ptr, kvlen_ptr, off_ptr, blk_ptr,
                    qk_scale, heads, group, head_dim, page_size, stride_qn, stride_qh, stride_kn, stride_kh,
                    stride_vn, stride_vh, stride_on, stride_oh, stride_cp, stride_cs, stride_ch, stride_vcp,
                    stride_vcs, stride_vch, stride_bt, HAS_CACHE: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                    WHILE_LOOP: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // heads, bh % heads
    q_start = tl.load(cu_q_ptr + b)
    n_q = tl.load(cu_q_ptr + b + 1) - q_start
    if pid_m * BLOCK_M >= n_q:
        return
    n_keys, new_off = n_q, 0
    if HAS_CACHE:
        n_keys, new_off = tl.load(kvlen_ptr + b), tl.load(off_ptr + b)
    blk = tl.load(blk_ptr + b)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    row_ok = rows < n_q
    last = new_off + tl.minimum(n_q, (pid_m + 1) * BLOCK_M) - 1  # canvas position of the tile's last query
    if blk > 0:
        n_keys = tl.minimum(n_keys, (last // blk + 1) * blk)
    blk = tl.where(blk > 0, blk, n_keys + 1)  # bidirectional: one block holds every key
    q_blk = (new_off + rows) // blk  # [BM]
    tok = (q_start + rows).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim
    q = tl.load(q_ptr + tok[:, None] * stride_qn + h * stride_qh + d[None, :], mask=row_ok[:, None] & d_ok[None, :],
                other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    bt_row_ptr = bt_ptr + b.to(tl.int64) * stride_bt
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    source: tl.constexpr = SRC_MIXED if HAS_CACHE else SRC_NEW
    if WHILE_LOOP:  # interpreter: range() cannot take its 1-element array scalars
        start = 0
        while start < n_keys:
            m_i, l_i, acc = _bc_tile(q, m_i, l_i, acc, start, n_keys, q_blk, blk, k_ptr, v_ptr, kc_ptr, vc_ptr,
                                     bt_row_ptr, q_start, n_q, new_off, h // group, d, d_ok, qk_scale, stride_kn,
                                     stride_kh, stride_vn, stride_vh, stride_cp, stride_cs, stride_ch, stride_vcp,
                                     stride_vcs, stride_vch, page_size, source, BLOCK_M, BLOCK_N, UPCAST, IEEE)
            start += BLOCK_N
    else:
        for start in range(0, n_keys, BLOCK_N):
            m_i, l_i, acc = _bc_tile(q, m_i, l_i, acc, start, n_keys, q_blk, blk, k_ptr, v_ptr, kc_ptr, vc_ptr,
                                     bt_row_ptr, q_start, n_q, new_off, h // group, d, d_ok, qk_scale, stride_kn,
                                     stride_kh, stride_vn, stride_vh, stride_cp, stride_cs, stride_ch, stride_vcp,
                                     stride_vcs, stride_vch, page_size, source, BLOCK_M, BLOCK_N, UPCAST, IEEE)
    acc = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    out = o_ptr + tok[:, None] * stride_on + h * stride_oh + d[None, :]
    tl.store(out, acc.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])


def block_causal_attention(q, k, v, cu_seqlens_q, max_seqlen_q, scale, k_cache=None, v_cache=None,
                           block_table=None, kv_lens=None, new_offsets=None, attn_blocks=None) -> torch.Tensor:
    """Same contract as ``attention.attention`` with ``attn_blocks`` [B] int32 (0 = bidirectional) -> [N, H, D]."""
    n, heads, head_dim = q.shape
    out = torch.empty_like(q)
    batch = cu_seqlens_q.numel() - 1
    if n == 0 or batch == 0 or max_seqlen_q <= 0:
        return out.zero_()
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    has_cache = k_cache is not None
    kc, vc, bt, kvl, off, cache_strides, page_size, stride_bt = cache_operands(
        k, v, cu_seqlens_q, k_cache, v_cache, block_table, kv_lens, new_offsets)
    block_m = min(64, max(16, next_pow2(max_seqlen_q)))
    block_d = max(16, next_pow2(head_dim))
    grid = (triton.cdiv(max_seqlen_q, block_m), batch * heads)
    _bc_attn_kernel[grid](
        q, k, v, out, cu_seqlens_q, kc, vc, bt, kvl, off, attn_blocks.to(torch.int32), scale * _LOG2E, heads,
        heads // k.shape[1], head_dim, page_size, q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0),
        v.stride(1), out.stride(0), out.stride(1), *cache_strides, stride_bt, HAS_CACHE=has_cache, BLOCK_M=block_m,
        BLOCK_N=32, BLOCK_D=block_d, UPCAST=upcast(q.dtype), IEEE=q.dtype == torch.float32 and not interpreting(),
        WHILE_LOOP=interpreting(), enable_fp_fusion=FP_FUSION, num_warps=4 if block_d <= 64 else 8, num_stages=2)
    return out
