"""Token proposal and confidence for masked rows in one pass over the vocab (spec: ``torch_ref/remask.py``).

Legend: M masked rows, V vocab, BV vocab tile, SP vocab splits per row, TL tiles per split.

Per row and vocab tile the kernel keeps: the clean running max ``m`` and rescaled ``Σ exp(l − m)``
(online softmax, fp32, ``exp2``), the clean argmax, and, for rows with T > 0, the Gumbel-max winner of
``l/T − log(−log u)`` evaluated in float64 with the spec's counter-based noise
``u = (fmix32(fmix32(j ^ s1) ^ s2) + 0.5) / 2³²`` (a uint32 hash needs float64: near 1 the spacing of
fp32 would truncate the Gumbel tail, arXiv:2409.02908). Ties go to the lowest token id (strict ``>``
across tiles, the first index of a tile's maximum inside it). ``conf = exp(l[x0] − m) / Σ`` in fp32,
rounded to the logits dtype, returned as fp32. With few rows the vocab is split over a second grid axis
(SP programs per row write partial tuples; a tiny merge kernel combines them in split order).
No probability tensor is ever written; no host sync.
"""
import torch
import triton
import triton.language as tl

from unmask.kernels.torch_ref import remask as _ref
from unmask.kernels.triton_ops._common import FP_FUSION, interpreting, next_pow2, num_sms

__all__ = ["remask_confidence"]

_NPART = 5  # partial tuple per (row, split): m, Σ, clean argmax, best noisy score, noisy argmax (all as fp64)


@triton.jit
def _fmix32(h):
    """MurmurHash3 finaliser on uint32 (wrapping multiplies, logical shifts)."""
    h = h ^ (h >> 16)
    h = h * 0x85EBCA6B
    h = h ^ (h >> 13)
    h = h * 0xC2B2AE35
    return h ^ (h >> 16)


@triton.jit
def _finish(logits_row_ptr, row, x0, m, ssum, x0_ptr, conf_ptr):
    """Store x0 (int64) and conf = exp(l[x0] − m) / Σ rounded to the logits dtype (as fp32)."""
    lx = tl.load(logits_row_ptr + x0).to(tl.float32)
    conf = tl.exp2((lx - m) * 1.4426950408889634) / ssum
    tl.store(x0_ptr + row, x0.to(tl.int64))
    tl.store(conf_ptr + row, conf.to(logits_row_ptr.dtype.element_ty).to(tl.float32))


@triton.jit
def _vocab_pass_kernel(logits_ptr, temp_ptr, seed_ptr, part_ptr, x0_ptr, conf_ptr, vocab, stride_l,
                       SPLITS: tl.constexpr, TILES: tl.constexpr, BLOCK_V: tl.constexpr, FINAL: tl.constexpr):
    row = tl.program_id(0)
    split = tl.program_id(1)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_l
    temp = tl.load(temp_ptr + row)  # fp64
    hot = temp > 0
    seed = tl.load(seed_ptr + row)  # int64
    s1 = _fmix32((seed & 0xFFFFFFFF).to(tl.uint32))
    s2 = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)

    m = tl.full([], float("-inf"), tl.float32)  # clean running max
    ssum = tl.zeros([], tl.float32)  # Σ exp(l − m)
    idx = tl.zeros([], tl.int32)  # clean argmax
    nbest = tl.full([], float("-inf"), tl.float64)  # best noisy score
    nidx = tl.zeros([], tl.int32)
    for t in range(TILES):
        col0 = (split * TILES + t) * BLOCK_V
        cols = col0 + tl.arange(0, BLOCK_V)  # [BV]
        ok = cols < vocab
        x = tl.load(row_ptr + cols, mask=ok, other=float("-inf")).to(tl.float32)  # [BV]
        tmax, targ = tl.max(x, axis=0, return_indices=True, return_indices_tie_break_left=True)
        idx = tl.where(tmax > m, col0 + targ, idx)
        m_new = tl.maximum(m, tmax)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        ssum = ssum * tl.exp2((m - m_use) * 1.4426950408889634) + tl.sum(tl.exp2((x - m_use) * 1.4426950408889634))
        m = m_new
        if hot:
            h = _fmix32(_fmix32(cols.to(tl.uint32) ^ s1) ^ s2)  # [BV] uint32
            u = (h.to(tl.float64) + 0.5) * (1.0 / 4294967296.0)
            score = x.to(tl.float64) / temp - tl.log(-tl.log(u))  # [BV] fp64
            score = tl.where(ok, score, float("-inf"))
            smax, sarg = tl.max(score, axis=0, return_indices=True, return_indices_tie_break_left=True)
            nidx = tl.where(smax > nbest, col0 + sarg, nidx)
            nbest = tl.maximum(nbest, smax)

    if FINAL:
        _finish(row_ptr, row, tl.where(hot, nidx, idx), m, ssum, x0_ptr, conf_ptr)
    else:
        p = part_ptr + (row.to(tl.int64) * SPLITS + split) * 5
        tl.store(p, m.to(tl.float64))
        tl.store(p + 1, ssum.to(tl.float64))
        tl.store(p + 2, idx.to(tl.float64))
        tl.store(p + 3, nbest)
        tl.store(p + 4, nidx.to(tl.float64))


@triton.jit
def _merge_kernel(logits_ptr, temp_ptr, part_ptr, x0_ptr, conf_ptr, stride_l, SPLITS: tl.constexpr,
                  BLOCK_S: tl.constexpr):
    """Combine one row's SP partial tuples in split order (lowest index wins ties)."""
    row = tl.program_id(0)
    sp = tl.arange(0, BLOCK_S)  # [BS]
    ok = sp < SPLITS
    p = part_ptr + (row.to(tl.int64) * SPLITS + sp) * 5  # [BS]
    m_s = tl.load(p, mask=ok, other=float("-inf")).to(tl.float32)
    s_s = tl.load(p + 1, mask=ok, other=0.0).to(tl.float32)
    idx_s = tl.load(p + 2, mask=ok, other=0.0).to(tl.int32)
    n_s = tl.load(p + 3, mask=ok, other=float("-inf"))
    nidx_s = tl.load(p + 4, mask=ok, other=0.0).to(tl.int32)
    m = tl.max(m_s, axis=0)
    m_use = tl.where(m == float("-inf"), 0.0, m)
    ssum = tl.sum(s_s * tl.exp2((m_s - m_use) * 1.4426950408889634), axis=0)
    big = 2147483647
    idx = tl.min(tl.where(ok & (m_s == m), idx_s, big), axis=0)
    nbest = tl.max(n_s, axis=0)
    nidx = tl.min(tl.where(ok & (n_s == nbest), nidx_s, big), axis=0)
    hot = tl.load(temp_ptr + row) > 0
    x0 = tl.where(hot, nidx, idx)
    x0 = tl.where(x0 == big, 0, x0)  # rows of all -inf: argmax 0, as torch
    _finish(logits_ptr + row.to(tl.int64) * stride_l, row, x0, m, ssum, x0_ptr, conf_ptr)


def _plan(rows: int, vocab: int, device: torch.device, splits: int | None):
    """(BV, SP, TL, num_warps): split the vocab when rows alone cannot fill ~2 waves of programs."""
    block_v = max(128, min(4096, next_pow2(triton.cdiv(vocab, 4))))  # >= 4 tiles when the vocab allows
    tiles = triton.cdiv(vocab, block_v)
    if splits is None:
        splits = 1 if interpreting() else max(1, min(tiles, triton.cdiv(2 * num_sms(device), rows)))
    splits = max(1, min(splits, tiles))
    per = triton.cdiv(tiles, splits)
    return block_v, triton.cdiv(tiles, per), per, 8 if block_v >= 2048 else 4


def remask_fwd(logits: torch.Tensor, temperature: torch.Tensor, seeds: torch.Tensor, splits: int | None = None):
    """``remask_confidence`` with an explicit vocab split count (None: chosen from rows and SMs)."""
    rows, vocab = logits.shape
    x0 = torch.empty(rows, dtype=torch.int64, device=logits.device)  # [M]
    conf = torch.empty(rows, dtype=torch.float32, device=logits.device)  # [M]
    if rows == 0:
        return x0, conf
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    temp = temperature.to(torch.float64).contiguous()  # [M] exact widening, as the spec
    seeds = seeds.to(torch.int64).contiguous()  # [M]
    block_v, n_split, per, warps = _plan(rows, vocab, logits.device, splits)
    final = n_split == 1
    part = conf if final else torch.empty((rows, n_split, _NPART), dtype=torch.float64, device=logits.device)
    _vocab_pass_kernel[(rows, n_split)](logits, temp, seeds, part, x0, conf, vocab, logits.stride(0),
                                        SPLITS=n_split, TILES=per, BLOCK_V=block_v, FINAL=final,
                                        enable_fp_fusion=FP_FUSION, num_warps=warps)
    if not final:
        _merge_kernel[(rows,)](logits, temp, part, x0, conf, logits.stride(0), SPLITS=n_split,
                               BLOCK_S=next_pow2(n_split), enable_fp_fusion=FP_FUSION, num_warps=1)
    return x0, conf


def remask_confidence(logits: torch.Tensor, temperature: torch.Tensor, seeds: torch.Tensor):
    """logits [M, V] bf16/fp16/fp32, temperature [M] float (<= 0: greedy), seeds [M] int64
    -> (x0 [M] int64, conf [M] fp32).

    x0 = argmax(l) at T <= 0, else argmax(l/T − log(−log u)) in float64 with the spec's hash noise
    (bit-identical draws); conf = softmax(l)[x0] in fp32 rounded to the logits dtype. fp64 logits are
    served by the PyTorch reference (its float64 softmax is the exact-mode oracle).
    """
    if logits.dtype == torch.float64:
        return _ref.remask_confidence(logits, temperature, seeds)
    return remask_fwd(logits, temperature, seeds)
