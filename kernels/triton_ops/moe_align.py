"""Sync-free routing metadata for the grouped MoE GEMMs: assignments sorted by expert, padded to M-blocks.

Legend: T tokens, K experts per token, A = T·K assignments (a = t·K + k), E experts, BM rows per M-block,
BA assignments per chunk, C = ceil(A / BA) chunks, MB = host upper bound on M-blocks, U = MB·BM slots.

Four small kernels, no host read of any count: per-chunk histograms [C, E] -> one program turning them
into per-chunk running offsets and per-expert padded block ranges -> a stable scatter per chunk -> the
expert of every M-block plus a sentinel (A) in every padding slot. Up to ONE_PROGRAM_MAX assignments (a
batch-1 step: 32 tokens × 8 experts) one program does all four steps in one launch. Buffers are sized by the host bound
Σ_e ceil(c_e/BM) <= (A + min(E, A)·(BM−1)) // BM; unused M-blocks get expert −1, which the GEMM programs
treat as "exit at once" (CUDA-graph safe). Assignments keep ascending order inside an expert, so the
layout (and every result built on it) is deterministic. No atomics.
"""
import torch
import triton
import triton.language as tl

from unmask.kernels.triton_ops._common import FP_FUSION, next_pow2


@triton.jit
def _hist_kernel(ids_ptr, hist_ptr, n_assign, n_experts, BLOCK_E: tl.constexpr, BLOCK_A: tl.constexpr):
    c = tl.program_id(0)
    a = c * BLOCK_A + tl.arange(0, BLOCK_A)  # [BA]
    ex = tl.load(ids_ptr + a, mask=a < n_assign, other=-1).to(tl.int32)
    e = tl.arange(0, BLOCK_E)  # [BE]
    counts = tl.sum((ex[:, None] == e[None, :]).to(tl.int32), axis=0)  # [BE]
    tl.store(hist_ptr + c * n_experts + e, counts, mask=e < n_experts)


@triton.jit
def _offsets_kernel(hist_ptr, base_ptr, meta_ptr, n_chunks, n_experts, BLOCK_M: tl.constexpr,
                    BLOCK_E: tl.constexpr):
    """base[c, e] = assignments of expert e in chunks < c; meta = (counts, first slot, end block) [3, E]."""
    e = tl.arange(0, BLOCK_E)
    e_ok = e < n_experts
    running = tl.zeros([BLOCK_E], tl.int32)
    c = 0
    while c < n_chunks:  # while: the trip count is a device-side value under the interpreter too
        tl.store(base_ptr + c * n_experts + e, running, mask=e_ok)
        running += tl.load(hist_ptr + c * n_experts + e, mask=e_ok, other=0)
        c += 1
    blocks = (running + BLOCK_M - 1) // BLOCK_M  # [BE]
    blk_end = tl.cumsum(blocks, axis=0)
    tl.store(meta_ptr + e, running, mask=e_ok)
    tl.store(meta_ptr + n_experts + e, (blk_end - blocks) * BLOCK_M, mask=e_ok)
    tl.store(meta_ptr + 2 * n_experts + e, blk_end, mask=e_ok)


@triton.jit
def _scatter_kernel(ids_ptr, base_ptr, meta_ptr, sorted_ptr, n_assign, n_experts,
                    BLOCK_E: tl.constexpr, BLOCK_A: tl.constexpr):
    c = tl.program_id(0)
    a = c * BLOCK_A + tl.arange(0, BLOCK_A)  # [BA]
    a_ok = a < n_assign
    ex = tl.load(ids_ptr + a, mask=a_ok, other=-1).to(tl.int32)
    e = tl.arange(0, BLOCK_E)
    onehot = (ex[:, None] == e[None, :]).to(tl.int32)  # [BA, BE]
    earlier = tl.sum(onehot * (tl.cumsum(onehot, axis=0) - onehot), axis=1)  # [BA] same expert, this chunk
    ex_safe = tl.where(a_ok, ex, 0)
    slot = tl.load(meta_ptr + n_experts + ex_safe, mask=a_ok, other=0) \
        + tl.load(base_ptr + c * n_experts + ex_safe, mask=a_ok, other=0) + earlier
    tl.store(sorted_ptr + slot, a, mask=a_ok)


@triton.jit
def _blocks_span(counts, first, blk_end, e, e_ok, s, s_ok, sorted_ptr, block_expert_ptr, n_assign,
                 BLOCK_M: tl.constexpr, BLOCK_S: tl.constexpr):
    """For slots s [BS]: the expert of each M-block starting there (−1 past the last used block) and the
    sentinel in every padding slot; counts/first/blk_end [BE] per expert."""
    blk = s // BLOCK_M
    owner = tl.sum(((blk_end[None, :] <= blk[:, None]) & e_ok[None, :]).to(tl.int32), axis=1)  # [BS]
    hit = owner[:, None] == e[None, :]  # [BS, BE]
    used = tl.sum(tl.where(hit, counts[None, :], 0), axis=1)  # [BS] rows of the owning expert
    start = tl.sum(tl.where(hit, first[None, :], 0), axis=1)
    live = blk < tl.max(blk_end, axis=0)
    tl.store(block_expert_ptr + blk, tl.where(live, owner, -1), mask=s_ok & (s % BLOCK_M == 0))
    pad = s_ok & live & (s - start >= used)  # disjoint from the scatter's slots
    tl.store(sorted_ptr + s, tl.zeros([BLOCK_S], tl.int32) + n_assign, mask=pad)


@triton.jit
def _blocks_kernel(meta_ptr, sorted_ptr, block_expert_ptr, n_assign, n_experts, n_slots,
                   BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_S: tl.constexpr):
    s = tl.program_id(0) * BLOCK_S + tl.arange(0, BLOCK_S)  # [BS] slots
    e = tl.arange(0, BLOCK_E)
    e_ok = e < n_experts
    counts = tl.load(meta_ptr + e, mask=e_ok, other=0)  # [BE]
    first = tl.load(meta_ptr + n_experts + e, mask=e_ok, other=0)
    blk_end = tl.load(meta_ptr + 2 * n_experts + e, mask=e_ok, other=0)
    _blocks_span(counts, first, blk_end, e, e_ok, s, s < n_slots, sorted_ptr, block_expert_ptr, n_assign, BLOCK_M,
                 BLOCK_S)


@triton.jit
def _align_one_kernel(ids_ptr, sorted_ptr, block_expert_ptr, n_assign, n_experts, n_slots, BLOCK_M: tl.constexpr,
                      BLOCK_E: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_S: tl.constexpr):
    """All of ``moe_align`` in one program when every assignment fits one [BA, BE] tile (a batch-1 step)."""
    a = tl.arange(0, BLOCK_A)  # [BA]
    a_ok = a < n_assign
    ex = tl.load(ids_ptr + a, mask=a_ok, other=-1).to(tl.int32)
    e = tl.arange(0, BLOCK_E)  # [BE]
    e_ok = e < n_experts
    onehot = (ex[:, None] == e[None, :]).to(tl.int32)  # [BA, BE]
    counts = tl.sum(onehot, axis=0)  # [BE]
    earlier = tl.sum(onehot * (tl.cumsum(onehot, axis=0) - onehot), axis=1)  # [BA] same expert, lower a
    blocks = (counts + BLOCK_M - 1) // BLOCK_M  # [BE]
    blk_end = tl.cumsum(blocks, axis=0)
    first = (blk_end - blocks) * BLOCK_M  # [BE] first slot of each expert
    slot = tl.sum(onehot * first[None, :], axis=1) + earlier  # [BA]
    tl.store(sorted_ptr + slot, a, mask=a_ok)
    s0 = 0
    while s0 < n_slots:  # while: the interpreter passes the bound as an array
        s = s0 + tl.arange(0, BLOCK_S)  # [BS]
        _blocks_span(counts, first, blk_end, e, e_ok, s, s < n_slots, sorted_ptr, block_expert_ptr, n_assign,
                     BLOCK_M, BLOCK_S)
        s0 += BLOCK_S


def max_blocks(n_assign: int, n_experts: int, block_m: int) -> int:
    """Host-side upper bound on the M-blocks ``moe_align`` can use (no device read)."""
    return (n_assign + min(n_experts, n_assign) * (block_m - 1)) // block_m


ONE_PROGRAM_MAX = 256
"""Assignments (T·K) up to which ``moe_align`` runs as one program in one launch instead of four kernels."""


def moe_align(topk_ids: torch.Tensor, n_experts: int, block_m: int, one_program: bool | None = None):
    """topk_ids [T, K] int -> (sorted_ids [U] int32, block_expert [MB] int32).

    sorted_ids lists assignment indices a = t·K + k grouped by expert (ascending a inside an expert), each
    expert's group padded to a multiple of BM with the sentinel A; block_expert[i] is the expert of rows
    i·BM .. i·BM+BM−1, or −1 past the last used block (slots there are left unwritten). ``one_program``
    (None: when A <= ONE_PROGRAM_MAX) computes the same layout in a single launch.
    """
    ids = topk_ids.reshape(-1).contiguous()  # [A]
    n_assign = ids.numel()
    nb = max_blocks(n_assign, n_experts, block_m)
    dev = ids.device
    sorted_ids = torch.empty(nb * block_m, dtype=torch.int32, device=dev)  # [U]
    block_expert = torch.empty(nb, dtype=torch.int32, device=dev)  # [MB]
    if nb == 0:
        return sorted_ids, block_expert
    block_e, block_a = next_pow2(n_experts), max(16, min(256, next_pow2(n_assign)))  # [BA, BE] tiles
    block_s = max(16, min(256, next_pow2(nb * block_m)))
    if one_program is None:
        one_program = n_assign <= ONE_PROGRAM_MAX
    if one_program:
        if n_assign > ONE_PROGRAM_MAX:
            raise ValueError(f"one-program alignment takes at most {ONE_PROGRAM_MAX} assignments, got {n_assign}")
        _align_one_kernel[(1,)](ids, sorted_ids, block_expert, n_assign, n_experts, nb * block_m, BLOCK_M=block_m,
                                BLOCK_E=block_e, BLOCK_A=block_a, BLOCK_S=block_s, enable_fp_fusion=FP_FUSION,
                                num_warps=8)
        return sorted_ids, block_expert
    n_chunks = triton.cdiv(n_assign, block_a)
    hist = torch.empty((n_chunks, n_experts), dtype=torch.int32, device=dev)  # [C, E]
    base = torch.empty_like(hist)  # [C, E]
    meta = torch.empty((3, n_experts), dtype=torch.int32, device=dev)  # counts, first slot, end block
    _hist_kernel[(n_chunks,)](ids, hist, n_assign, n_experts, BLOCK_E=block_e, BLOCK_A=block_a,
                              enable_fp_fusion=FP_FUSION, num_warps=8)
    _offsets_kernel[(1,)](hist, base, meta, n_chunks, n_experts, BLOCK_M=block_m, BLOCK_E=block_e,
                          enable_fp_fusion=FP_FUSION, num_warps=1)
    _scatter_kernel[(n_chunks,)](ids, base, meta, sorted_ids, n_assign, n_experts, BLOCK_E=block_e,
                                 BLOCK_A=block_a, enable_fp_fusion=FP_FUSION, num_warps=8)
    _blocks_kernel[(triton.cdiv(nb * block_m, block_s),)](meta, sorted_ids, block_expert, n_assign, n_experts,
                                                          nb * block_m, BLOCK_M=block_m, BLOCK_E=block_e,
                                                          BLOCK_S=block_s, enable_fp_fusion=FP_FUSION, num_warps=8)
    return sorted_ids, block_expert
