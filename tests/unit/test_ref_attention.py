"""The reference attention (``kernels/torch_ref/attention.py``, the CPU path): equal to a naive per-sequence
softmax, and batch invariant bit for bit (a sequence's output is the same alone or packed with others of
any shapes, with and without a paged cache), which the engine's alone-vs-mixed guarantees rest on."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from unmask.kernels import ops
from unmask.kernels.torch_ref import attention as ref

H, HK, D, PAGE = 4, 2, 8, 4


def _cu(lens: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)


def _case(seed: int, dtype: torch.dtype, cached: bool):
    """Random packed batch: per sequence (queries n, keys L, offset of the new rows), a shuffled page table."""
    g = torch.Generator().manual_seed(seed)
    b = int(torch.randint(2, 7, (), generator=g))
    lens, kv, off = [], [], []
    for _ in range(b):
        L = int(torch.randint(1, 24, (), generator=g))
        n = int(torch.randint(0, L + 1, (), generator=g)) if cached else L
        lens.append(n), kv.append(L), off.append(int(torch.randint(0, L - n + 1, (), generator=g)))
    if not any(lens):  # keep at least one row to compare
        lens[0], off[0] = kv[0], 0
    pages = [-(-L // PAGE) for L in kv]
    perm = torch.randperm(sum(pages), generator=g)
    table = torch.zeros(b, max(pages), dtype=torch.int32)
    start = 0
    for i, p in enumerate(pages):
        table[i, :p] = perm[start:start + p].to(torch.int32)
        start += p
    n = sum(lens)
    q = torch.randn(n, H, D, generator=g, dtype=dtype)
    k, v = torch.randn(n, HK, D, generator=g, dtype=dtype), torch.randn(n, HK, D, generator=g, dtype=dtype)
    kc = torch.randn(sum(pages), PAGE, HK, D, generator=g, dtype=dtype)
    vc = torch.randn(sum(pages), PAGE, HK, D, generator=g, dtype=dtype)
    return lens, kv, off, table, q, k, v, kc, vc


def _run(lens, kv, off, table, q, k, v, kc, vc, cached: bool) -> torch.Tensor:
    cu = _cu(lens)
    if not cached:
        return ref.attention(q, k, v, cu, max(lens), 0.3)
    return ref.attention(q, k, v, cu, max(lens), 0.3, kc, vc, table, torch.tensor(kv, dtype=torch.int32),
                         torch.tensor(off, dtype=torch.int32))


def _naive(b, lens, kv, off, table, q, k, v, kc, vc, cached: bool) -> torch.Tensor:
    """Sequence b's output from an explicit softmax over its assembled keys."""
    cu = _cu(lens).tolist()
    lo, hi = cu[b], cu[b + 1]
    if cached:
        pos = torch.arange(kv[b])
        slots = table[b].long()[pos // PAGE] * PAGE + pos % PAGE
        kk, vv = kc.flatten(0, 1)[slots].clone(), vc.flatten(0, 1)[slots].clone()
        kk[off[b]:off[b] + hi - lo], vv[off[b]:off[b] + hi - lo] = k[lo:hi], v[lo:hi]
    else:
        kk, vv = k[lo:hi], v[lo:hi]
    kk, vv = kk.repeat_interleave(H // HK, 1), vv.repeat_interleave(H // HK, 1)
    s = torch.einsum("nhd,mhd->hnm", q[lo:hi], kk) * 0.3
    return torch.einsum("hnm,mhd->nhd", s.softmax(-1), vv)


@pytest.mark.parametrize("cached", [False, True], ids=["no_cache", "paged_cache"])
@pytest.mark.parametrize("seed", range(6))
def test_matches_naive_softmax(seed, cached):
    case = _case(seed, torch.float64, cached)
    out = _run(*case, cached=cached)
    cu = _cu(case[0]).tolist()
    for b in range(len(case[0])):
        if case[0][b]:
            torch.testing.assert_close(out[cu[b]:cu[b + 1]], _naive(b, *case, cached=cached), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cached", [False, True], ids=["no_cache", "paged_cache"])
@pytest.mark.parametrize("seed", range(6))
def test_alone_equals_packed_bitwise(seed, cached, dtype):
    lens, kv, off, table, q, k, v, kc, vc = _case(100 + seed, dtype, cached)
    packed = _run(lens, kv, off, table, q, k, v, kc, vc, cached)
    cu = _cu(lens).tolist()
    for b in range(len(lens)):
        if not lens[b]:
            continue
        sl = slice(cu[b], cu[b + 1])
        alone = _run([lens[b]], [kv[b]], [off[b]], table[b:b + 1], q[sl], k[sl], v[sl], kc, vc, cached)
        assert torch.equal(alone, packed[sl]), (b, lens, kv)


def test_kernels_import_without_the_server_stack():
    """``import unmask.kernels`` (what a GPU kernel check needs) loads neither tokenizers nor the server."""
    code = ("import sys, unmask.kernels.ops; "
            "assert 'tokenizers' not in sys.modules and 'unmask.server.llm' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("cached", [False, True], ids=["no_cache", "paged_cache"])
def test_consecutive_groups_read_in_place_equal_scattered_groups(cached):
    """Same-shape sequences packed next to each other (read in place) or interleaved with others (gathered by
    row): every sequence's output is bit-identical to its output alone either way. Head dim 24, the embedded
    models': at head dim 8 (the cases above) torch's CPU SDPA on more than one thread can change the last bit with
    the batch size (measured at 16-128: never), so groups of several sequences are tested here."""
    D = 24
    g = torch.Generator().manual_seed(7)
    shapes = [(6, 9), (6, 9), (6, 9), (4, 11), (4, 11)] if cached else [(6, 6), (6, 6), (6, 6), (4, 4), (4, 4)]
    for name, order in (("consecutive", [0, 1, 2, 3, 4]), ("interleaved", [0, 3, 1, 4, 2])):
        lens, kv = [shapes[i][0] for i in order], [shapes[i][1] for i in order]
        off = [L - n for n, L in zip(lens, kv)]
        pages = [-(-L // PAGE) for L in kv]
        table = torch.arange(sum(pages), dtype=torch.int32).split(pages)
        table = torch.nn.utils.rnn.pad_sequence(list(table), batch_first=True)
        q = torch.randn(sum(lens), H, D, generator=g)
        k, v = torch.randn(sum(lens), HK, D, generator=g), torch.randn(sum(lens), HK, D, generator=g)
        kc, vc = torch.randn(sum(pages), PAGE, HK, D, generator=g), torch.randn(sum(pages), PAGE, HK, D, generator=g)
        packed = _run(lens, kv, off, table, q, k, v, kc, vc, cached)
        cu = _cu(lens).tolist()
        for b in range(len(lens)):
            sl = slice(cu[b], cu[b + 1])
            alone = _run([lens[b]], [kv[b]], [off[b]], table[b:b + 1], q[sl], k[sl], v[sl], kc, vc, cached)
            assert torch.equal(alone, packed[sl]), (name, b)


def _subset(lens: list[int], g: torch.Generator) -> tuple[list[int], torch.Tensor]:
    """Some query rows of each packed sequence (ascending, possibly none of one): (counts, packed row ids)."""
    cu, counts, rows = _cu(lens).tolist(), [], []
    for b, n in enumerate(lens):
        pick = sorted(torch.randperm(n, generator=g)[:int(torch.randint(0, n + 1, (), generator=g))].tolist())
        counts.append(len(pick)), rows.extend(cu[b] + i for i in pick)
    return counts, torch.tensor(rows, dtype=torch.int64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cached", [False, True], ids=["no_cache", "paged_cache"])
@pytest.mark.parametrize("seed", range(6))
def test_query_subset_equals_full_rows_and_is_batch_invariant(seed, cached, dtype):
    """A query subset (``cu_seqlens_k``: the new key rows of each sequence): each row is the full call's row (fp64 to
    rounding) and each sequence's rows are bit-identical to the subset call of that sequence alone."""
    lens, kv, off, table, q, k, v, kc, vc = _case(200 + seed, dtype, cached)
    counts, rows = _subset(lens, torch.Generator().manual_seed(seed))
    cu_q, cu_k = _cu(counts), _cu(lens)

    def run(qs, ks, cq, ck, b=None):  # the subset call over sequences b (all when None)
        if not cached:
            return ref.attention(qs, k[ks], v[ks], cq, max(lens), 0.3, cu_seqlens_k=ck)
        pick = slice(None) if b is None else slice(b, b + 1)
        return ref.attention(qs, k[ks], v[ks], cq, max(lens), 0.3, kc, vc, table[pick],
                             torch.tensor(kv, dtype=torch.int32)[pick], torch.tensor(off, dtype=torch.int32)[pick],
                             cu_seqlens_k=ck)

    got = run(q[rows], slice(None), cu_q, cu_k)  # [M, H, D]
    full = _run(lens, kv, off, table, q, k, v, kc, vc, cached)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got, full[rows], rtol=tol, atol=tol)
    cq, ck = cu_q.tolist(), cu_k.tolist()
    for b in range(len(lens)):
        if counts[b]:
            alone = run(q[rows[cq[b]:cq[b + 1]]], slice(ck[b], ck[b + 1]), _cu([counts[b]]), _cu([lens[b]]), b)
            assert torch.equal(alone, got[cq[b]:cq[b + 1]]), (b, counts, lens)


@pytest.mark.parametrize("entry", [ref.attention, ops.attention], ids=["spec", "ops"])
def test_query_subset_refuses_block_masks(entry):
    q, cu = torch.randn(3, H, D), _cu([3])
    with pytest.raises(ValueError, match="bidirectional only"):
        entry(q, q[:, :HK], q[:, :HK], cu, 3, 0.3, attn_blocks=torch.tensor([2], dtype=torch.int32), cu_seqlens_k=cu)
