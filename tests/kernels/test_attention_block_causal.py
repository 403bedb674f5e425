"""Block-causal varlen attention (LLaDA2), with and without the paged cache: the Triton kernel vs the PyTorch
specification (``attn_blocks``), fp64 error model; mixed block sizes and bidirectional rows in one batch."""
import pytest
import torch

from tests.kernels.test_attention import cu_seqlens, packed, paged_cache
from tests.kernels.tolerance import DEVICE, assert_fa_close, dtypes
from unmask.kernels.torch_ref import attention as ref
from unmask.kernels.triton_ops import attention as tri

I32 = dict(dtype=torch.int32, device=DEVICE)


def check(q, k, v, cu, max_q, cache, blocks, dtype, what):
    scale = q.shape[-1] ** -0.5
    blocks = torch.tensor(blocks, **I32)
    out = tri.attention(q, k, v, cu, max_q, scale, *cache, attn_blocks=blocks)
    lp = ref.attention(q, k, v, cu, max_q, scale, *cache, attn_blocks=blocks)
    c64 = [t.double() if t is not None and t.is_floating_point() else t for t in cache]
    r64 = ref.attention(q.double(), k.double(), v.double(), cu, max_q, scale, *c64, attn_blocks=blocks)
    assert out.dtype == q.dtype
    assert_fa_close(out, lp, r64, dtype, what)


@dtypes
@pytest.mark.parametrize("lens, blocks", [([5, 0, 37, 3], [4, 8, 32, 0]), ([70], [16])], ids=str)
def test_block_causal_no_cache(dtype, lens, blocks):
    q, k, v, cu = packed(lens, 4, 2, 32, dtype, seed=sum(lens))
    check(q, k, v, cu, max(lens), (None,) * 5, blocks, dtype, f"bc {lens} {blocks}")


@dtypes
def test_block_causal_over_cache(dtype):
    """Block steps: a block of new rows at an offset, keys before it from the cache; stale cache after it."""
    lens, kv_lens, offsets, page = [8, 4, 9], [40, 29, 27], [16, 12, 9], 16
    q, k, v, cu = packed(lens, 4, 2, 32, dtype, seed=3)
    kc, vc, table = paged_cache(kv_lens, 2, 32, dtype, page, seed=4)
    cache = (kc, vc, table, torch.tensor(kv_lens, **I32), torch.tensor(offsets, **I32))
    check(q, k, v, cu, max(lens), cache, [8, 4, 0], dtype, "bc cached")


def test_spec_mask_is_block_causal():
    """The spec itself: a query in block 1 equals attention over blocks 0..1 only."""
    q, k, v, cu = packed([12], 2, 2, 16, torch.float64, seed=9)
    out = ref.attention(q, k, v, cu, 12, 0.25, attn_blocks=torch.tensor([4], dtype=torch.int32))
    part = ref.attention(q[:8], k[:8], v[:8], cu_seqlens([8]).cpu(), 8, 0.25)
    assert torch.allclose(out[4:8], part[4:8]) and not torch.allclose(out[:4], part[:4])
