"""Non-causal (bidirectional) varlen attention over a packed batch, with an optional paged K/V cache.

Legend: N packed new tokens, B sequences, H query heads, Hk key/value heads, D head dim,
P pages, S page size.

Sequence b owns the new tokens ``cu_seqlens_q[b] : cu_seqlens_q[b+1]``. Without a cache its keys are
exactly its new tokens (a refresh step or the exact algorithm). With a cache its keys are canvas positions
``0 .. kv_lens[b]-1``: positions ``new_offsets[b] .. new_offsets[b]+n_b-1`` come from the new k/v, every other
position is read from the cache through ``block_table[b]`` (a block step of Fast-dLLM's prefix cache, where the new
tokens run to the canvas end, or of its dual cache, where only the current block is new and the suffix is cached).
With ``cu_seqlens_k`` the new k/v rows of sequence b are ``cu_seqlens_k[b] : cu_seqlens_k[b+1]`` while q holds only
some of its queries (the last layer, which needs the outputs of the logit rows alone: softmax rows are
independent, so the other queries need not be computed).
"""
import torch
import torch.nn.functional as F


def attention(q, k, v, cu_seqlens_q, max_seqlen_q, scale, k_cache=None, v_cache=None,
              block_table=None, kv_lens=None, new_offsets=None, attn_blocks=None, cu_seqlens_k=None):
    """q [N, H, D], k/v [N, Hk, D] (H % Hk == 0), cu_seqlens_q [B+1] int32 -> out [N, H, D] (q.dtype).

    Query subset: with ``cu_seqlens_k`` [B+1] int32, q [M, H, D] holds some queries of each sequence (rows
    cu_seqlens_q[b]:cu_seqlens_q[b+1]) and k/v [N, Hk, D] its new keys (rows cu_seqlens_k[b]:cu_seqlens_k[b+1]: all of
    its keys without a cache, those at new_offsets[b].. with one); bidirectional only (the block-causal mask places
    the queries by position).

    Optional cache: k_cache/v_cache [P, S, Hk, D], block_table [B, max_pages] int32, kv_lens [B] int32,
    new_offsets [B] int32 (see the module docstring). ``max_seqlen_q`` is a host-side upper bound kept
    for kernel launch sizing. Softmax of ``scale · q·kᵀ`` over each sequence's keys; no mask, except with
    ``attn_blocks`` [B] int32: where attn_blocks[b] = s > 0, sequence b is block-causal (LLaDA2): the query at
    canvas position i sees key position j only if j // s <= i // s (its own block and every earlier one).

    Sequences with the same (query count, key count) run as one batched call: per sequence this is the
    same computation as a call of its own (each (sequence, head) softmax is independent), so a
    sequence's output does not depend on what else is in the batch. A group of consecutive sequences (the
    engine's packer orders them so) is one contiguous run of rows and is read and written in place; any other
    group is gathered by row index.
    """
    if cu_seqlens_k is not None and attn_blocks is not None:
        raise ValueError("a query subset (cu_seqlens_k) is bidirectional only")
    if q.shape[0] == 0:
        return torch.empty_like(q)
    cu = cu_seqlens_q.tolist()
    n_q = [cu[b + 1] - cu[b] for b in range(len(cu) - 1)]
    cu_new = cu if cu_seqlens_k is None else cu_seqlens_k.tolist()  # each sequence's new key rows
    if k_cache is None:
        keys, vals, n_k, k_start = k, v, [cu_new[b + 1] - cu_new[b] for b in range(len(n_q))], cu_new[:-1]
    else:
        keys, vals, n_k, k_start = gather_keys(k, v, cu_new, k_cache, v_cache, block_table, kv_lens, new_offsets)
    blocks = [0] * len(n_q) if attn_blocks is None else attn_blocks.tolist()
    q_off = [0] * len(n_q) if k_cache is None else new_offsets.tolist()
    groups: dict[tuple[int, int, int, int], list[int]] = {}
    for b, n in enumerate(n_q):
        if n:  # the block-causal mask depends on the block size and the queries' first position
            groups.setdefault((n, n_k[b], blocks[b], q_off[b] if blocks[b] else 0), []).append(b)
    rep = q.shape[1] // k.shape[1]
    if k_cache is None and cu_seqlens_k is None and len(groups) == 1 and all(n_q):  # one shape: plain reshapes
        (n, _, s, off), = groups
        return _batched(q, k, v, n, n, rep, scale, block_mask(n, n, s, off, q.device))
    out = torch.empty_like(q)
    dev = q.device
    for (n, m, s, off), seqs in groups.items():
        mask = block_mask(n, m, s, off, dev)
        g, b0 = len(seqs), seqs[0]
        if seqs[-1] - b0 == g - 1:  # consecutive sequences: rows cu[b0] .. cu[b0] + G·n, keys likewise
            q0, k0 = cu[b0], k_start[b0]
            out[q0:q0 + g * n] = _batched(q[q0:q0 + g * n], keys[k0:k0 + g * m], vals[k0:k0 + g * m], n, m, rep,
                                          scale, mask)
            continue
        q_rows = _rows([cu[b] for b in seqs], n, dev)  # [G·n]
        k_rows = _rows([k_start[b] for b in seqs], m, dev)  # [G·m]
        out[q_rows] = _batched(q[q_rows], keys[k_rows], vals[k_rows], n, m, rep, scale, mask)
    return out


def block_mask(n: int, m: int, block: int, q_offset: int, dev) -> torch.Tensor | None:
    """[n, m] bool: query i (canvas position q_offset + i) may see key position j (block-causal with block size
    ``block``: j // block <= (q_offset + i) // block); None when block == 0 (bidirectional)."""
    if block == 0:
        return None
    q_blk = (torch.arange(n, device=dev) + q_offset) // block  # [n]
    return (torch.arange(m, device=dev) // block)[None, :] <= q_blk[:, None]


def gather_keys(k, v, cu: list[int], k_cache, v_cache, block_table, kv_lens, new_offsets):
    """Every sequence's keys/values, concatenated: sequence b's canvas positions 0..kv_lens[b]-1, its new
    rows k[cu[b]:cu[b+1]] at positions new_offsets[b].., every other position read from the cache
    through block_table[b]. -> (keys [K, Hk, D], values [K, Hk, D], keys per sequence, start of each)."""
    dev, page = k.device, k_cache.shape[1]
    n_k = kv_lens.tolist()
    k_start = [0]
    for m in n_k[:-1]:
        k_start.append(k_start[-1] + m)
    b = len(n_k)
    seq = torch.repeat_interleave(torch.arange(b, device=dev), torch.tensor(n_k, device=dev))  # [K]
    pos = torch.arange(seq.numel(), device=dev) - torch.tensor(k_start, device=dev)[seq]  # [K] canvas position
    cu_t = torch.tensor(cu, device=dev)
    off = new_offsets.long()[seq]  # [K]
    is_new = (pos >= off) & (pos < off + (cu_t[1:] - cu_t[:-1])[seq])  # [K]
    packed = (cu_t[:-1][seq] + pos - off).clamp(0, max(k.shape[0] - 1, 0))  # [K] row in k (where new)
    pidx = (pos // page).clamp(max=block_table.shape[1] - 1)  # rows with no cache read have short tables
    slots = block_table.long()[seq, pidx] * page + pos % page  # [K] cache slot (where cached)
    sel = is_new[:, None, None]
    keys = torch.where(sel, k[packed], k_cache.flatten(0, 1)[slots].to(k.dtype))  # [K, Hk, D]
    vals = torch.where(sel, v[packed], v_cache.flatten(0, 1)[slots].to(v.dtype))
    return keys, vals, n_k, k_start


def _rows(starts: list[int], n: int, dev) -> torch.Tensor:
    """[G·n] int64: rows start..start+n-1 of each start."""
    return (torch.tensor(starts, device=dev)[:, None] + torch.arange(n, device=dev)[None, :]).flatten()


def _batched(q, k, v, n: int, m: int, rep: int, scale: float, mask=None) -> torch.Tensor:
    """q [G·n, H, D], k/v [G·m, Hk, D]: G sequences of ``n`` queries and ``m`` keys, optional mask [n, m] bool
    (True = attend) -> [G·n, H, D]."""
    g = q.shape[0] // n
    qq = q.reshape(g, n, *q.shape[1:]).transpose(1, 2)  # [G, H, n, D]
    kk = k.reshape(g, m, *k.shape[1:]).transpose(1, 2)  # [G, Hk, m, D]
    vv = v.reshape(g, m, *v.shape[1:]).transpose(1, 2)
    if rep > 1:
        kk, vv = kk.repeat_interleave(rep, dim=1), vv.repeat_interleave(rep, dim=1)
    o = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, scale=scale)  # [G, H, n, D]
    return o.transpose(1, 2).reshape(q.shape)


def kv_cache_write(k_cache, v_cache, k, v, slot_mapping):
    """Scatter new k/v [N, Hk, D] into the paged cache [P, S, Hk, D] at flat slots [N] (int64).

    Slot ``s`` is page ``s // S``, offset ``s % S``; rows with a negative slot are not written.
    """
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_cache.flatten(0, 1)[slots] = k[keep].to(k_cache.dtype)
    v_cache.flatten(0, 1)[slots] = v[keep].to(v_cache.dtype)
