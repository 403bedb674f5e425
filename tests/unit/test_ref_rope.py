"""The CPU reference RoPE (kernels/torch_ref/rope.py): q and k rotated as one tensor when they share rows."""
import pytest
import torch

from unmask.kernels.torch_ref.rope import rope_apply, rope_cos_sin


def textbook(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x·cos + rotate_half(x)·sin with rotate_half(x) = [−x₂, x₁] (NeoX), in x's dtype."""
    half = x.shape[-1] // 2
    return x * cos[:, None, :] + torch.cat([-x[..., half:], x[..., :half]], -1) * sin[:, None, :]


@pytest.mark.parametrize("dtype, rotate_fp32", [(torch.float32, True), (torch.float32, False),
                                                (torch.float64, True), (torch.bfloat16, True),
                                                (torch.bfloat16, False)])
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (8, 2)])
def test_views_of_one_qkv_buffer_rotate_bit_for_bit_as_alone(dtype, rotate_fp32, heads, kv_heads):
    n, d = 37, 24
    g = torch.Generator().manual_seed(heads * 10 + kv_heads)
    qkv = torch.randn(n, (heads + 2 * kv_heads) * d, generator=g).to(dtype)  # [N, (H + 2Hk)·D]
    q = qkv[:, :heads * d].view(n, heads, d)
    k = qkv[:, heads * d:(heads + kv_heads) * d].view(n, kv_heads, d)
    cos, sin = rope_cos_sin(torch.randint(0, 500, (n,), generator=g), d, 10000.0, dtype)
    rq, rk = rope_apply(q, k, cos, sin, rotate_fp32)
    aq, ak = rope_apply(q.clone(), k.clone(), cos, sin, rotate_fp32)  # separate storages: rotated one by one
    assert torch.equal(rq, aq) and torch.equal(rk, ak)
    cdt = cos.dtype if rotate_fp32 else dtype
    c, s = cos.to(cdt), sin.to(cdt)
    assert torch.equal(rq, textbook(q.to(cdt), c, s).to(dtype))
    assert torch.equal(rk, textbook(k.to(cdt), c, s).to(dtype))
    assert torch.equal(qkv[:, :heads * d].view(n, heads, d), q)  # the input is not rotated in place
