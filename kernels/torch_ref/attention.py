"""Non-causal (bidirectional) varlen attention over a packed batch, with an optional paged K/V cache.

Legend: N packed new tokens, B sequences, H query heads, Hk key/value heads, D head dim,
P pages, S page size.

Sequence b owns the new tokens ``cu_seqlens_q[b] : cu_seqlens_q[b+1]``. Without a cache its keys are
exactly its new tokens (a refresh step or the exact algorithm). With a cache its keys are canvas
positions ``0 .. kv_lens[b]-1``: positions ``new_offsets[b] .. new_offsets[b]+n_b-1`` come from the
new k/v, every other position is read from the cache through ``block_table[b]`` (a block step of
Fast-dLLM's prefix cache, where the new tokens run to the canvas end, or of its dual cache, where
only the current block is new and the suffix is cached).
"""
import torch
import torch.nn.functional as F


def gather_keys(k, v, lo, hi, k_cache, v_cache, block_table_row, kv_len, new_offset):
    """Assemble one sequence's keys/values [kv_len, Hk, D]: its new rows k[lo:hi] at canvas positions
    new_offset.., every other position read from the cache (the table is consulted for those only)."""
    page_size = k_cache.shape[1]
    n = hi - lo
    pos = torch.arange(kv_len, device=k.device)  # [L]
    cached = (pos < new_offset) | (pos >= new_offset + n)  # [L]
    cpos = pos[cached]
    slots = block_table_row.long()[cpos // page_size] * page_size + cpos % page_size  # [L - n]
    kk = torch.empty((kv_len,) + k.shape[1:], dtype=k.dtype, device=k.device)  # [L, Hk, D]
    vv = torch.empty_like(kk)
    kk[cached], vv[cached] = k_cache.flatten(0, 1)[slots].to(k.dtype), v_cache.flatten(0, 1)[slots].to(v.dtype)
    kk[new_offset:new_offset + n] = k[lo:hi]
    vv[new_offset:new_offset + n] = v[lo:hi]
    return kk, vv


def attention(q, k, v, cu_seqlens_q, max_seqlen_q, scale, k_cache=None, v_cache=None,
              block_table=None, kv_lens=None, new_offsets=None):
    """q [N, H, D], k/v [N, Hk, D] (H % Hk == 0), cu_seqlens_q [B+1] int32 -> out [N, H, D] (q.dtype).

    Optional cache: k_cache/v_cache [P, S, Hk, D], block_table [B, max_pages] int32, kv_lens [B] int32,
    new_offsets [B] int32 (see the module docstring). ``max_seqlen_q`` is a host-side upper bound kept
    for kernel launch sizing. Softmax of ``scale · q·kᵀ`` over each sequence's keys, no mask.
    """
    cu = cu_seqlens_q.tolist()
    rep = q.shape[1] // k.shape[1]
    if k_cache is None:
        return _by_length(q, k, v, cu, rep, scale)
    out = torch.empty_like(q)
    for b in range(len(cu) - 1):
        lo, hi = cu[b], cu[b + 1]
        if hi == lo:
            continue
        if k_cache is None:
            kk, vv = k[lo:hi], v[lo:hi]
        else:
            kk, vv = gather_keys(k, v, lo, hi, k_cache, v_cache, block_table[b],
                                 int(kv_lens[b]), int(new_offsets[b]))
        if rep > 1:
            kk, vv = kk.repeat_interleave(rep, dim=1), vv.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(
            q[lo:hi].transpose(0, 1), kk.transpose(0, 1), vv.transpose(0, 1), scale=scale
        )  # [H, n, D]
        out[lo:hi] = o.transpose(0, 1)
    return out


def _by_length(q, k, v, cu: list[int], rep: int, scale: float) -> torch.Tensor:
    """No cache: sequences of equal length run as one batched call each (per sequence, the same math as
    one call per sequence: every (sequence, head) pair is an independent softmax over its own keys)."""
    groups: dict[int, list[int]] = {}
    for b in range(len(cu) - 1):
        if cu[b + 1] > cu[b]:
            groups.setdefault(cu[b + 1] - cu[b], []).append(b)
    if len(groups) == 1 and sum(len(g) for g in groups.values()) == len(cu) - 1:
        (n, _), = groups.items()
        return _batched(q, k, v, n, rep, scale)
    out = torch.empty_like(q)
    for n, seqs in groups.items():
        if len(seqs) == 1:
            lo = cu[seqs[0]]
            out[lo:lo + n] = _batched(q[lo:lo + n], k[lo:lo + n], v[lo:lo + n], n, rep, scale)
            continue
        starts = torch.tensor([cu[b] for b in seqs], device=q.device)  # [G]
        rows = (starts[:, None] + torch.arange(n, device=q.device)[None, :]).flatten()  # [G·n]
        out[rows] = _batched(q[rows], k[rows], v[rows], n, rep, scale)
    return out


def _batched(q, k, v, n: int, rep: int, scale: float) -> torch.Tensor:
    """q [G·n, H, D], k/v [G·n, Hk, D], G sequences of ``n`` tokens each -> [G·n, H, D], one call."""
    g = q.shape[0] // n
    qq = q.view(g, n, *q.shape[1:]).transpose(1, 2)  # [G, H, n, D]
    kk = k.reshape(g, n, *k.shape[1:]).transpose(1, 2)  # [G, Hk, n, D]
    vv = v.reshape(g, n, *v.shape[1:]).transpose(1, 2)
    if rep > 1:
        kk, vv = kk.repeat_interleave(rep, dim=1), vv.repeat_interleave(rep, dim=1)
    o = F.scaled_dot_product_attention(qq, kk, vv, scale=scale)  # [G, H, n, D]
    return o.transpose(1, 2).reshape(q.shape)


def kv_cache_write(k_cache, v_cache, k, v, slot_mapping):
    """Scatter new k/v [N, Hk, D] into the paged cache [P, S, Hk, D] at flat slots [N] (int64).

    Slot ``s`` is page ``s // S``, offset ``s % S``; rows with a negative slot are not written.
    """
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_cache.flatten(0, 1)[slots] = k[keep].to(k_cache.dtype)
    v_cache.flatten(0, 1)[slots] = v[keep].to(v_cache.dtype)
