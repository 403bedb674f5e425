"""How one attention program walks its keys (used by ``attention._attn_fwd_kernel``; spec:
``torch_ref/attention.py``).

Legend: BM query rows of the program's tile, BN keys per tile, BD head dim (padded), S page size.

A program folds key tiles into its running FlashAttention-2 state (m, l, acc) with ``exp2``. A tile's keys
come from the new rows (SOURCE 0), the paged cache (1) or either, chosen per position (2, the merged loop).
``attn_range`` loads each tile where it is used (Triton's pipeliner may prefetch it); ``attn_range_prefetch``
walks cached keys with the next tile's loads issued by hand before the current tile is folded in.
"""
import triton
import triton.language as tl

from unmask.kernels.triton_ops._common import mma

SRC_NEW, SRC_CACHE, SRC_MIXED = 0, 1, 2  # where a key tile comes from (constexpr SOURCE)


@triton.jit
def _load_cached(k_ptr, v_ptr, kc_ptr, vc_ptr, page, pos, pos_ok, hk, d, d_ok, stride_cp, stride_cs, stride_ch,
                 stride_vcp, stride_vcs, stride_vch, page_size):
    """K/V tiles [BN, BD] from the paged cache for key positions ``pos`` [BN] whose pages ``page`` [BN] are
    already known; read as k's dtype, as the spec."""
    page = page.to(tl.int64)
    in_page = (pos % page_size).to(tl.int64)
    m = pos_ok[:, None] & d_ok[None, :]
    k = tl.load(kc_ptr + (page * stride_cp + in_page * stride_cs + hk * stride_ch)[:, None] + d[None, :],
                mask=m, other=0.0).to(k_ptr.dtype.element_ty)
    v = tl.load(vc_ptr + (page * stride_vcp + in_page * stride_vcs + hk * stride_vch)[:, None] + d[None, :],
                mask=m, other=0.0).to(v_ptr.dtype.element_ty)
    return k, v


@triton.jit
def _load_keys(k_ptr, v_ptr, kc_ptr, vc_ptr, bt_row_ptr, pos, pos_ok, q_start, n_new, new_off, hk, d, d_ok,
               stride_kn, stride_kh, stride_vn, stride_vh, stride_cp, stride_cs, stride_ch,
               stride_vcp, stride_vcs, stride_vch, page_size, SOURCE: tl.constexpr):
    """K/V tiles [BN, BD] for key positions ``pos`` [BN] of one sequence and kv head ``hk``. SOURCE 0: every
    position is a new row (k/v at token q_start + pos - new_off); 1: every position is in the paged cache;
    2: either, chosen per position (both loads masked, then merged)."""
    if SOURCE == 0:
        tok = (q_start + pos - new_off).to(tl.int64)[:, None]  # [BN, 1]
        m = pos_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + tok * stride_kn + hk * stride_kh + d[None, :], mask=m, other=0.0)
        v = tl.load(v_ptr + tok * stride_vn + hk * stride_vh + d[None, :], mask=m, other=0.0)
    elif SOURCE == 1:
        page = tl.load(bt_row_ptr + pos // page_size, mask=pos_ok, other=0)  # [BN]
        k, v = _load_cached(k_ptr, v_ptr, kc_ptr, vc_ptr, page, pos, pos_ok, hk, d, d_ok, stride_cp, stride_cs,
                            stride_ch, stride_vcp, stride_vcs, stride_vch, page_size)
    else:
        is_new = (pos >= new_off) & (pos < new_off + n_new)  # [BN]
        new_tok = (q_start + pos - new_off).to(tl.int64)[:, None]  # [BN, 1]
        new_m = (pos_ok & is_new)[:, None] & d_ok[None, :]  # [BN, BD]
        old_ok = pos_ok & ((pos < new_off) | (pos >= new_off + n_new))  # [BN] read from the cache
        page = tl.load(bt_row_ptr + pos // page_size, mask=old_ok, other=0).to(tl.int64)  # [BN]
        in_page = (pos % page_size).to(tl.int64)
        old_m = old_ok[:, None] & d_ok[None, :]
        kc = tl.load(kc_ptr + (page * stride_cp + in_page * stride_cs + hk * stride_ch)[:, None] + d[None, :],
                     mask=old_m, other=0.0)
        vc = tl.load(vc_ptr + (page * stride_vcp + in_page * stride_vcs + hk * stride_vch)[:, None] + d[None, :],
                     mask=old_m, other=0.0)
        kn = tl.load(k_ptr + new_tok * stride_kn + hk * stride_kh + d[None, :], mask=new_m, other=0.0)
        vn = tl.load(v_ptr + new_tok * stride_vn + hk * stride_vh + d[None, :], mask=new_m, other=0.0)
        k = tl.where(is_new[:, None], kn, kc.to(kn.dtype))  # [BN, BD] in k's dtype, as the spec
        v = tl.where(is_new[:, None], vn, vc.to(vn.dtype))
    return k, v


@triton.jit
def _attn_tile(q, m_i, l_i, acc, start, hi, k_ptr, v_ptr, kc_ptr, vc_ptr, bt_row_ptr, q_start, n_q, new_off, hk, d,
               d_ok, qk_scale, stride_kn, stride_kh, stride_vn, stride_vh, stride_cp, stride_cs, stride_ch,
               stride_vcp, stride_vcs, stride_vch, page_size, SOURCE: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """One online-softmax step over key positions start .. start+BN-1 (those >= hi are masked)."""
    pos = start + tl.arange(0, BLOCK_N)  # [BN]
    pos_ok = pos < hi
    k, v = _load_keys(k_ptr, v_ptr, kc_ptr, vc_ptr, bt_row_ptr, pos, pos_ok, q_start, n_q, new_off, hk, d, d_ok,
                      stride_kn, stride_kh, stride_vn, stride_vh, stride_cp, stride_cs, stride_ch,
                      stride_vcp, stride_vcs, stride_vch, page_size, SOURCE)
    return _softmax_update(q, m_i, l_i, acc, k, v, pos_ok, qk_scale, BLOCK_M, BLOCK_N, UPCAST, IEEE)


@triton.jit
def _softmax_update(q, m_i, l_i, acc, k, v, pos_ok, qk_scale, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """Fold one key tile k/v [BN, BD] (positions with ``pos_ok`` false masked) into the running (m, l, acc)."""
    return softmax_update_masked(q, m_i, l_i, acc, k, v, pos_ok[None, :], qk_scale, BLOCK_M, BLOCK_N, UPCAST, IEEE)


@triton.jit
def softmax_update_masked(q, m_i, l_i, acc, k, v, ok, qk_scale, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """``_softmax_update`` with a mask ``ok`` broadcastable to [BM, BN] (per query row and key: block-causal)."""
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = mma(q, tl.trans(k), tl.zeros([BLOCK_M, BLOCK_N], tl.float32), IEEE) * qk_scale  # [BM, BN]
    s = tl.where(ok, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))  # [BM]
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: avoid -inf - -inf
    alpha = tl.exp2(m_i - m_use)  # [BM]
    p = tl.exp2(s - m_use[:, None])  # [BM, BN]
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = mma(p.to(v.dtype), v, acc * alpha[:, None], IEEE)  # [BM, BD]
    return m_new, l_i, acc


@triton.jit
def attn_range(q, m_i, l_i, acc, lo, hi, k_ptr, v_ptr, kc_ptr, vc_ptr, bt_row_ptr, q_start, n_q, new_off, hk, d,
                d_ok, qk_scale, stride_kn, stride_kh, stride_vn, stride_vh, stride_cp, stride_cs, stride_ch,
                stride_vcp, stride_vcs, stride_vch, page_size, SOURCE: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr, WHILE_LOOP: tl.constexpr):
    """Online softmax over key positions lo .. hi-1, one BN tile at a time (nothing when lo >= hi)."""
    if WHILE_LOOP:  # interpreter: its scalars are 1-element arrays that range() cannot take (numpy >= 2)
        start = lo
        while start < hi:
            m_i, l_i, acc = _attn_tile(q, m_i, l_i, acc, start, hi, k_ptr, v_ptr, kc_ptr, vc_ptr, bt_row_ptr, q_start,
                                       n_q, new_off, hk, d, d_ok, qk_scale, stride_kn, stride_kh, stride_vn,
                                       stride_vh, stride_cp, stride_cs, stride_ch, stride_vcp, stride_vcs, stride_vch,
                                       page_size, SOURCE, BLOCK_M, BLOCK_N, UPCAST, IEEE)
            start += BLOCK_N
    else:
        for start in range(lo, hi, BLOCK_N):
            m_i, l_i, acc = _attn_tile(q, m_i, l_i, acc, start, hi, k_ptr, v_ptr, kc_ptr, vc_ptr, bt_row_ptr, q_start,
                                       n_q, new_off, hk, d, d_ok, qk_scale, stride_kn, stride_kh, stride_vn,
                                       stride_vh, stride_cp, stride_cs, stride_ch, stride_vcp, stride_vcs, stride_vch,
                                       page_size, SOURCE, BLOCK_M, BLOCK_N, UPCAST, IEEE)
    return m_i, l_i, acc


@triton.jit
def _prefetch_step(q, m_i, l_i, acc, k, v, page_next, start, hi, k_ptr, v_ptr, kc_ptr, vc_ptr, bt_row_ptr, hk, d, d_ok,
                   qk_scale, stride_cp, stride_cs, stride_ch, stride_vcp, stride_vcs, stride_vch, page_size,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """One iteration of ``attn_range_prefetch``: issue tile i+1's K/V loads (its page ids ``page_next`` [BN]
    are known) and tile i+2's page-id load, then fold tile i (k/v [BN, BD], loaded one iteration earlier) in.
    Returns the new (m, l, acc), tile i+1's k/v and tile i+2's page ids."""
    ar = tl.arange(0, BLOCK_N)  # [BN]
    pos_next = start + BLOCK_N + ar
    k_next, v_next = _load_cached(k_ptr, v_ptr, kc_ptr, vc_ptr, page_next, pos_next, pos_next < hi, hk, d, d_ok,
                                  stride_cp, stride_cs, stride_ch, stride_vcp, stride_vcs, stride_vch, page_size)
    pos_after = pos_next + BLOCK_N
    page_after = tl.load(bt_row_ptr + pos_after // page_size, mask=pos_after < hi, other=0)  # [BN]
    m_i, l_i, acc = _softmax_update(q, m_i, l_i, acc, k, v, start + ar < hi, qk_scale, BLOCK_M, BLOCK_N, UPCAST,
                                    IEEE)
    return m_i, l_i, acc, k_next, v_next, page_after


@triton.jit
def attn_range_prefetch(q, m_i, l_i, acc, lo, hi, k_ptr, v_ptr, kc_ptr, vc_ptr, bt_row_ptr, hk, d, d_ok, qk_scale,
                         stride_cp, stride_cs, stride_ch, stride_vcp, stride_vcs, stride_vch, page_size,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                         WHILE_LOOP: tl.constexpr):
    """``attn_range`` over cached keys only, software-pipelined by hand in registers: while tile i is folded
    in, the loads of tile i+1's K/V and of tile i+2's page ids are already in flight (a load only blocks at
    the first use of its result). For a paged load, whose address depends on a page-id load, Triton 3.6's own
    pipeliner waits for every copy in flight (cp.async.wait_group 0) before each tile at up to 4 stages, so this
    loop runs with num_stages=1 and does the overlap itself. Loads past ``hi`` are masked off (no memory traffic)."""
    ar = tl.arange(0, BLOCK_N)  # [BN]
    pos = lo + ar
    pos_ok = pos < hi
    page = tl.load(bt_row_ptr + pos // page_size, mask=pos_ok, other=0)  # [BN] tile 0's page ids
    k, v = _load_cached(k_ptr, v_ptr, kc_ptr, vc_ptr, page, pos, pos_ok, hk, d, d_ok, stride_cp, stride_cs,
                        stride_ch, stride_vcp, stride_vcs, stride_vch, page_size)  # [BN, BD] tile 0
    pos_next = pos + BLOCK_N
    page_next = tl.load(bt_row_ptr + pos_next // page_size, mask=pos_next < hi, other=0)  # [BN] tile 1's
    if WHILE_LOOP:  # interpreter (see attn_range)
        start = lo
        while start < hi:
            m_i, l_i, acc, k, v, page_next = _prefetch_step(
                q, m_i, l_i, acc, k, v, page_next, start, hi, k_ptr, v_ptr, kc_ptr, vc_ptr, bt_row_ptr, hk, d, d_ok,
                qk_scale, stride_cp, stride_cs, stride_ch, stride_vcp, stride_vcs, stride_vch, page_size, BLOCK_M,
                BLOCK_N, UPCAST, IEEE)
            start += BLOCK_N
    else:
        for start in range(lo, hi, BLOCK_N):
            m_i, l_i, acc, k, v, page_next = _prefetch_step(
                q, m_i, l_i, acc, k, v, page_next, start, hi, k_ptr, v_ptr, kc_ptr, vc_ptr, bt_row_ptr, hk, d, d_ok,
                qk_scale, stride_cp, stride_cs, stride_ch, stride_vcp, stride_vcs, stride_vch, page_size, BLOCK_M,
                BLOCK_N, UPCAST, IEEE)
    return m_i, l_i, acc
