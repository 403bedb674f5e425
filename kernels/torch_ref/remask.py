"""Token proposal and confidence for masked positions (LLaDA generate() steps d and f, LLADA-SPEC.md §1.2).

Legend: M masked rows, V vocab.

For each row: ``x0 = argmax(l)`` at temperature 0, else the Gumbel-max draw
``argmax(l/T − log(−log u))`` (= the reference's ``argmax(exp(l) / (−log u)^T)``) evaluated in float64
as the reference does (arXiv:2409.02908); ``conf = softmax(l)[x0]`` from the *clean* logits, computed
in fp32 and rounded to the logits dtype, matching the reference's bf16 softmax (fp64 stays fp64).
Ties in the argmax go to the lowest token id, as ``torch.argmax``.

The uniform noise is counter-based: ``u[m, j]`` depends only on ``seeds[m]`` and ``j``, so a row's draw
is the same whatever batch it runs in, and the Triton kernel reproduces it bit for bit.
"""
import torch

M32 = 0xFFFFFFFF


def fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser on int64 tensors holding uint32 values."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def uniform_noise(seeds: torch.Tensor, vocab: int, start: int = 0) -> torch.Tensor:
    """seeds [M] int64 -> u [M, V] float64 in (0, 1) for token ids j = start..start+V-1:
    ``(fmix32(fmix32(j ^ s1) ^ s2) + 0.5) / 2^32`` with ``s1 = fmix32(seed & M32)`` and ``s2 = (seed >> 32) & M32``."""
    s = seeds.to(torch.int64)
    s1 = fmix32(s & M32)[:, None]  # [M, 1]
    s2 = ((s >> 32) & M32)[:, None]
    j = torch.arange(start, start + vocab, device=seeds.device, dtype=torch.int64)[None, :]  # [1, V]
    h = fmix32(fmix32(j ^ s1) ^ s2)  # [M, V]
    return (h.to(torch.float64) + 0.5) * (1.0 / 4294967296.0)


ARGMAX_CHUNK = 64
"""Columns per chunk of ``first_argmax``'s coarse pass."""
ARGMAX_SMALL = 1 << 15
"""Below this many elements one ``torch.argmax`` costs less than the two passes' extra calls."""


def first_argmax(x: torch.Tensor) -> torch.Tensor:
    """x [M, V] float -> [M] int64: ``torch.argmax(x, dim=-1)`` (the first maximum; the first NaN where a row has
    one), in two passes that run at ``amax``'s speed on CPU, where argmax's inner-dimension reduction is scalar:
    the maximum of each chunk of ``ARGMAX_CHUNK`` columns (the last one may be shorter), the first chunk holding
    the row's maximum, the first maximum within it."""
    m, v = x.shape
    c = ARGMAX_CHUNK
    if v <= 2 * c or m * v < ARGMAX_SMALL:
        return torch.argmax(x, dim=-1)
    whole = v - v % c
    chunk_max = x[:, :whole].unflatten(1, (whole // c, c)).amax(-1)  # [M, V // c]
    if whole < v:
        chunk_max = torch.cat([chunk_max, x[:, whole:].amax(-1, keepdim=True)], 1)  # [M, ceil(V / c)]
    first = torch.argmax(chunk_max, dim=-1) * c  # [M] first column of the winning chunk
    cols = (first[:, None] + torch.arange(c, device=x.device)).clamp_(max=v - 1)  # [M, c] (a short chunk repeats
    # its last column after itself: a repeat never precedes the first maximum)
    return first + torch.argmax(x.gather(1, cols), dim=-1)


def remask_confidence(logits: torch.Tensor, temperature: torch.Tensor, seeds: torch.Tensor):
    """logits [M, V] (bf16/fp16/fp32/fp64), temperature [M] float, seeds [M] int64
    -> (x0 [M] int64, conf [M] float32, or float64 for fp64 logits)."""
    cdt = torch.promote_types(logits.dtype, torch.float32)
    x0 = first_argmax(logits)  # [M]
    hot = temperature > 0
    if bool(hot.any()):
        rows = hot.nonzero(as_tuple=True)[0]
        u = uniform_noise(seeds[rows], logits.shape[1])  # [m, V] f64
        t = temperature[rows].to(torch.float64)[:, None]
        score = logits[rows].to(torch.float64) / t - torch.log(-torch.log(u))  # [m, V]
        x0[rows] = first_argmax(score)
    lf = logits.to(cdt)
    lse = torch.logsumexp(lf, dim=-1)  # [M]
    conf = torch.exp(lf.gather(1, x0[:, None])[:, 0] - lse)  # [M]
    return x0, conf.to(logits.dtype).to(cdt)


def remask_partial(logits: torch.Tensor, temperature: torch.Tensor, seeds: torch.Tensor, vocab_start: int):
    """The vocabulary-parallel half of ``remask_confidence``: logits [M, Vs] holding token ids
    vocab_start..vocab_start+Vs-1 (one rank's slice) -> [M, 4] float64 per row: (key, token, logit, lse) with
    ``token`` this slice's winner (global id, the lowest on ties), ``key`` its score (the logit at T = 0, the
    Gumbel score at T > 0, the same noise as the full row), ``logit`` its logit and ``lse`` the slice's
    logsumexp, both in the confidence dtype (fp32, fp64 for fp64 logits). ``temperature`` None: every row at
    T = 0, with no host synchronisation (a captured CUDA graph's step)."""
    cdt = torch.promote_types(logits.dtype, torch.float32)
    x0 = first_argmax(logits)  # [M]
    key = logits.gather(1, x0[:, None])[:, 0].to(torch.float64)  # [M]
    hot = None if temperature is None else temperature > 0
    if hot is not None and bool(hot.any()):
        rows = hot.nonzero(as_tuple=True)[0]
        u = uniform_noise(seeds[rows], logits.shape[1], vocab_start)  # [m, Vs] f64
        score = logits[rows].to(torch.float64) / temperature[rows].to(torch.float64)[:, None] - torch.log(-torch.log(u))
        key[rows], x0[rows] = torch.max(score, dim=-1)
    lf = logits.to(cdt)
    lse = torch.logsumexp(lf, dim=-1)  # [M]
    chosen = lf.gather(1, x0[:, None])[:, 0]  # [M]
    return torch.stack([key, (x0 + vocab_start).to(torch.float64), chosen.to(torch.float64), lse.to(torch.float64)], 1)


def remask_combine(parts: torch.Tensor, logits_dtype: torch.dtype):
    """parts [R, M, 4] the ``remask_partial`` of R vocabulary slices in token order -> (x0 [M] int64,
    conf [M] fp32/fp64): what ``remask_confidence`` gives on the whole row. The best key wins (the lowest slice,
    hence the lowest token id, on ties); conf = exp(logit − logsumexp over the slices), rounded to the logits
    dtype as there."""
    cdt = torch.promote_types(logits_dtype, torch.float32)
    best = torch.argmax(parts[:, :, 0], dim=0)  # [M] first maximum = lowest slice
    win = parts.gather(0, best[None, :, None].expand(1, parts.shape[1], 4))[0]  # [M, 4]
    lse = torch.logsumexp(parts[:, :, 3], dim=0)  # [M]
    conf = torch.exp(win[:, 2].to(cdt) - lse.to(cdt))  # [M]
    return win[:, 1].long(), conf.to(logits_dtype).to(cdt)
