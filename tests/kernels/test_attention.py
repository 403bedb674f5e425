"""Bidirectional varlen attention (with and without a paged cache) and the cache scatter:
Triton vs the PyTorch specification, fp64 error model, split-KV forced on and off."""
import pytest
import torch

from tests.kernels.tolerance import DEVICE, assert_fa_close, dtypes, gen, randn
from unmask.kernels.torch_ref import attention as ref
from unmask.kernels.triton_ops import attention as tri

I32 = dict(dtype=torch.int32, device=DEVICE)


def cu_seqlens(lens):
    return torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), **I32)


def packed(lens, h, hk, d, dtype, seed):
    g = gen(seed)
    n = sum(lens)
    return (randn(n, h, d, seed_gen=g, dtype=dtype), randn(n, hk, d, seed_gen=g, dtype=dtype),
            randn(n, hk, d, seed_gen=g, dtype=dtype), cu_seqlens(lens))


def paged_cache(kv_lens, hk, d, dtype, page, seed):
    """Random cache pages (stale values everywhere, also where the new rows go), shuffled page ids,
    unused table entries −1."""
    g = gen(seed)
    need = [-(-n // page) for n in kv_lens]
    n_pages = sum(need) + 2
    kc = randn(n_pages, page, hk, d, seed_gen=g, dtype=dtype)
    vc = randn(n_pages, page, hk, d, seed_gen=g, dtype=dtype)
    perm = torch.randperm(n_pages, generator=g).tolist()
    table = torch.full((len(kv_lens), max(need) + 1), -1, dtype=torch.int32)
    for b, cnt in enumerate(need):
        table[b, :cnt] = torch.tensor([perm.pop() for _ in range(cnt)], dtype=torch.int32)
    return kc, vc, table.to(DEVICE)


def check(q, k, v, cu, max_q, scale, cache, splits, dtype, what, loop=None):
    out = tri.attention_fwd(q, k, v, cu, max_q, scale, *cache, num_splits=splits, loop=loop)
    lp = ref.attention(q, k, v, cu, max_q, scale, *cache)
    c64 = [t.double() if t is not None and t.is_floating_point() else t for t in cache]
    r64 = ref.attention(q.double(), k.double(), v.double(), cu, max_q, scale, *c64)
    assert out.dtype == q.dtype
    assert_fa_close(out, lp, r64, dtype, what)


NO_CACHE = [  # (lens, H, Hk, D, key splits): a length-1 sequence, an empty one, a tail tile, GQA, D not 2^k
    ([1, 0, 5, 33], 4, 2, 64, 1),
    ([1, 0, 5, 33], 4, 2, 64, 3),
    ([3, 17], 2, 2, 80, 1),
    ([1], 1, 1, 128, 1),
]


@dtypes
@pytest.mark.parametrize("case", NO_CACHE, ids=str)
def test_attention_no_cache(dtype, case):
    lens, h, hk, d, splits = case
    q, k, v, cu = packed(lens, h, hk, d, dtype, seed=sum(lens))
    check(q, k, v, cu, max(lens), d ** -0.5, (None,) * 5, splits, dtype, f"no cache {case}")


@dtypes
@pytest.mark.parametrize("splits", [1, 3])
def test_attention_query_subset(dtype, splits):
    """Some queries of each sequence (``cu_seqlens_k``: their keys are all of the sequence's rows), one sequence
    with none: the kernel equals the spec's subset call."""
    lens, h, hk, d = [5, 33, 1, 17], 4, 2, 64
    q, k, v, cu = packed(lens, h, hk, d, dtype, seed=11)
    keep = [[0, 4], [1, 2, 3, 20, 31, 32], [], [16]]
    rows = torch.tensor([s + i for s, r in zip(cu.tolist(), keep) for i in r], dtype=torch.int64, device=DEVICE)
    cu_q = cu_seqlens([len(r) for r in keep])
    out = tri.attention_fwd(q[rows], k, v, cu_q, max(lens), d ** -0.5, num_splits=splits, cu_seqlens_k=cu)
    lp = ref.attention(q[rows], k, v, cu_q, max(lens), d ** -0.5, cu_seqlens_k=cu)
    r64 = ref.attention(q[rows].double(), k.double(), v.double(), cu_q, max(lens), d ** -0.5, cu_seqlens_k=cu)
    assert_fa_close(out, lp, r64, dtype, "query subset")
    assert torch.equal(tri.attention(q[rows], k, v, cu_q, max(lens), d ** -0.5, cu_seqlens_k=cu),
                       tri.attention_fwd(q[rows], k, v, cu_q, max(lens), d ** -0.5, cu_seqlens_k=cu))


@dtypes
@pytest.mark.parametrize("loop", tri.LOOPS)
@pytest.mark.parametrize("splits", [1, 3])
def test_attention_query_subset_over_cache(dtype, splits, loop):
    """A prefix-cache block step's new rows (block and suffix) with only some of them as queries, one sequence with
    none: the new keys come from the rows of ``cu_seqlens_k``, the rest from the cache, as in the spec."""
    lens, kv_lens, offs, h, hk, d, page = [9, 5, 12], [40, 21, 12], [31, 16, 0], 4, 1, 64, 16
    q, k, v, cu = packed(lens, h, hk, d, dtype, seed=12)
    kc, vc, table = paged_cache(kv_lens, hk, d, dtype, page, seed=13)
    cache = (kc, vc, table, torch.tensor(kv_lens, **I32), torch.tensor(offs, **I32))
    keep = [[0, 3, 8], [], [2, 11]]
    rows = torch.tensor([s + i for s, r in zip(cu.tolist(), keep) for i in r], dtype=torch.int64, device=DEVICE)
    cu_q = cu_seqlens([len(r) for r in keep])
    out = tri.attention_fwd(q[rows], k, v, cu_q, max(lens), d ** -0.5, *cache, num_splits=splits, loop=loop,
                            cu_seqlens_k=cu)
    lp = ref.attention(q[rows], k, v, cu_q, max(lens), d ** -0.5, *cache, cu_seqlens_k=cu)
    c64 = [t.double() if t.is_floating_point() else t for t in cache]
    r64 = ref.attention(q[rows].double(), k.double(), v.double(), cu_q, max(lens), d ** -0.5, *c64, cu_seqlens_k=cu)
    assert_fa_close(out, lp, r64, dtype, f"query subset over cache ({loop}, {splits} splits)")
    full = ref.attention(q.double(), k.double(), v.double(), cu, max(lens), d ** -0.5, *c64)
    torch.testing.assert_close(r64, full[rows], rtol=1e-12, atol=1e-12)


CACHED = [  # (new lens, kv_lens, new_offsets, H, Hk, D, page)
    ([4, 1, 9], [40, 17, 9], [36, 16, 0], 4, 1, 64, 16),  # prefix cache, one empty prefix, GQA 4:1
    ([8, 5], [50, 21], [16, 8], 2, 2, 128, 16),  # dual cache: block in the middle, suffix cached
    ([3], [70], [32], 2, 1, 32, 32),  # one sequence, keys much longer than queries
    ([5, 2], [150, 7], [100, 5], 1, 1, 64, 16),  # prefix of 4 key tiles over 7 pages, suffix of 2 tiles
]


@dtypes
@pytest.mark.parametrize("loop", tri.LOOPS)
@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("case", CACHED, ids=str)
def test_attention_paged_cache(dtype, splits, case, loop):
    lens, kv_lens, offs, h, hk, d, page = case
    q, k, v, cu = packed(lens, h, hk, d, dtype, seed=7)
    kc, vc, table = paged_cache(kv_lens, hk, d, dtype, page, seed=8)
    cache = (kc, vc, table, torch.tensor(kv_lens, **I32), torch.tensor(offs, **I32))
    check(q, k, v, cu, max(lens), d ** -0.5, cache, splits, dtype, f"cache {case} {loop}", loop)


@pytest.mark.parametrize("loop", tri.LOOPS)
def test_in_kernel_split_combine_equals_combine_kernel(loop):
    """The last-arriving split's merge and the combine kernel merge the same partials in the same order: equal
    bits, with and without a cache; the arrival counters are back to zero afterwards."""
    from unmask.kernels.triton_ops import _common

    q, k, v, cu = packed([5, 2, 9], 2, 1, 32, torch.float32, seed=16)
    kc, vc, table = paged_cache([40, 7, 30], 1, 32, torch.float32, 16, seed=17)
    cache = (kc, vc, table, torch.tensor([40, 7, 30], **I32), torch.tensor([35, 5, 10], **I32))
    for c in ((None,) * 5, cache):
        a = tri.attention_fwd(q, k, v, cu, 9, 0.2, *c, num_splits=3, loop=loop, serial_combine=True)
        b = tri.attention_fwd(q, k, v, cu, 9, 0.2, *c, num_splits=3, loop=loop, serial_combine=False)
        assert torch.equal(a, b)
    assert not _common._counters[(q.device.type, q.device.index)].any()


def test_in_kernel_split_combine_under_contention():
    """LLaDA-8B's batch-1 cached step (32 heads, 32 queries over 544 keys, 5 splits) call after call: the
    in-kernel merge equals the combine kernel's. On a GPU the splits race for each group (a missing
    release/acquire would show as stale partials); the interpreter runs programs one by one, so there it checks
    the bookkeeping on a smaller shape."""
    gpu = DEVICE.type == "cuda"
    heads, keys, d, repeats = (32, 544, 128, 20) if gpu else (2, 80, 16, 2)
    dtype = torch.bfloat16 if gpu else torch.float32
    q, k, v, cu = packed([32], heads, heads, d, dtype, seed=18)
    kc, vc, table = paged_cache([keys], heads, d, dtype, 16, seed=19)
    cache = (kc, vc, table, torch.tensor([keys], **I32), torch.tensor([keys - 64], **I32))
    want = tri.attention_fwd(q, k, v, cu, 32, d ** -0.5, *cache, num_splits=5, serial_combine=False)
    for _ in range(repeats):
        assert torch.equal(tri.attention_fwd(q, k, v, cu, 32, d ** -0.5, *cache, num_splits=5, serial_combine=True),
                           want)


def test_public_attention_matches_explicit_split():
    q, k, v, cu = packed([2, 6], 2, 2, 32, torch.float32, seed=9)
    a = tri.attention(q, k, v, cu, 6, 0.2)
    b = tri.attention_fwd(q, k, v, cu, 6, 0.2, num_splits=1)
    c = tri.attention_fwd(q, k, v, cu, 6, 0.2, num_splits=4)  # most splits empty: -inf partials merge away
    assert torch.allclose(a, b, rtol=0, atol=1e-6) and torch.allclose(a, c, rtol=0, atol=1e-6)


@pytest.mark.parametrize("loop", tri.LOOPS)
@pytest.mark.parametrize("splits", [1, 2])
def test_rows_without_keys_are_zero(splits, loop):
    """kv_len 0 (no key at all): the kernel defines the output as 0, as SDPA does for a fully masked row."""
    q, k, v, cu = packed([2, 3], 2, 2, 16, torch.float32, seed=10)
    kc, vc, table = paged_cache([16, 16], 2, 16, torch.float32, 16, seed=11)
    cache = (kc, vc, table, torch.tensor([0, 3], **I32), torch.tensor([0, 0], **I32))
    out = tri.attention_fwd(q, k, v, cu, 3, 0.25, *cache, num_splits=splits, loop=loop)
    assert torch.isfinite(out).all() and (out[:2] == 0).all()
    lp = ref.attention(q[2:], k[2:], v[2:], cu_seqlens([3]), 3, 0.25)
    assert torch.allclose(out[2:], lp, atol=1e-6)


@pytest.mark.parametrize("loop", tri.LOOPS)
def test_cached_block_step_equals_full_sequence(loop):
    """Writing the canvas K/V into the cache and attending from the block equals full-canvas attention
    restricted to the block rows (the Fast-dLLM step equivalence)."""
    lens, blocks, h, d, page = [40, 24], [(16, 24), (8, 12)], 2, 32, 8
    q, k, v, cu = packed(lens, h, h, d, torch.float32, seed=12)
    kc = torch.zeros(12, page, h, d, device=DEVICE)
    vc = torch.zeros_like(kc)
    table = torch.tensor([[0, 2, 4, 6, 8], [1, 3, 5, -1, -1]], **I32)
    slots = torch.cat([(table[b, torch.arange(n) // page] * page + torch.arange(n, device=DEVICE) % page).long()
                       for b, n in enumerate(lens)])
    tri.kv_cache_write(kc, vc, k, v, slots)
    rows = torch.cat([torch.arange(lo, hi) + start for (lo, hi), start in zip(blocks, [0, lens[0]])]).to(DEVICE)
    cache = (kc, vc, table, torch.tensor(lens, **I32), torch.tensor([b[0] for b in blocks], **I32))
    blk = tri.attention_fwd(q[rows], k[rows], v[rows], cu_seqlens([hi - lo for lo, hi in blocks]), 8, d ** -0.5, *cache,
                            loop=loop)
    full64 = ref.attention(q.double(), k.double(), v.double(), cu, 40, d ** -0.5)[rows]
    full_lp = ref.attention(q, k, v, cu, 40, d ** -0.5)[rows]
    assert_fa_close(blk, full_lp, full64, torch.float32, "block step vs full")


@pytest.mark.parametrize("src,dst", [(torch.float32, torch.float32), (torch.float16, torch.float16),
                                     (torch.float32, torch.float16)], ids=["f32", "f16", "f32_to_f16"])
def test_kv_cache_write(src, dst):
    g = gen(13)
    k, v = randn(9, 2, 24, seed_gen=g, dtype=src), randn(9, 2, 24, seed_gen=g, dtype=src)
    slots = torch.tensor([5, -1, 0, 17, 31, 8, -7, 9, 16], dtype=torch.int64, device=DEVICE)
    kc, vc = randn(4, 8, 2, 24, seed_gen=g, dtype=dst), randn(4, 8, 2, 24, seed_gen=g, dtype=dst)
    kc2, vc2 = kc.clone(), vc.clone()
    tri.kv_cache_write(kc, vc, k, v, slots)
    ref.kv_cache_write(kc2, vc2, k, v, slots)
    assert torch.equal(kc, kc2) and torch.equal(vc, vc2)


def test_unknown_attention_loop_setting_is_rejected(monkeypatch):
    from unmask.kernels.backend import KernelBackendError
    from unmask.kernels.options import resolve

    monkeypatch.setenv("UNMASK_ATTN_LOOP", "segmnted")
    with pytest.raises(KernelBackendError, match="UNMASK_ATTN_LOOP='segmnted'"):
        resolve()
    monkeypatch.setenv("UNMASK_ATTN_LOOP", "Segmented")
    assert resolve().attn_loop == "segmented"
    monkeypatch.setenv("UNMASK_ATTN_LOOP", " prefetch ")
    assert resolve().attn_loop == "prefetch"
    monkeypatch.delenv("UNMASK_ATTN_LOOP")
    assert resolve().attn_loop == "merged"


def test_unknown_attention_loop_argument_is_rejected():
    q, k, v, cu = packed([2], 1, 1, 16, torch.float32, seed=14)
    kc, vc, table = paged_cache([4], 1, 16, torch.float32, 16, seed=15)
    cache = (kc, vc, table, torch.tensor([4], **I32), torch.tensor([2], **I32))
    with pytest.raises(ValueError, match="attention loop 'pipelined'"):
        tri.attention_fwd(q, k, v, cu, 2, 0.25, *cache, loop="pipelined")
