"""RMSNorm / add+RMSNorm and RoPE: Triton vs the PyTorch specification (fp64 error model)."""
import pytest
import torch

from tests.kernels.tolerance import DEVICE, assert_fa_close, dtypes, gen, randn
from unmask.kernels.torch_ref import norm as ref
from unmask.kernels.torch_ref import rope as rope_ref
from unmask.kernels.triton_ops import norm as tri
from unmask.kernels.triton_ops import rope as rope_tri

SHAPES = [(1, 8), (37, 100), (4, 4096), (2, 3, 128)]  # incl. a single row, non-power-of-2 D, [N, H, D]


@dtypes
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_rms_norm(dtype, shape):
    g = gen(1)
    x = randn(*shape, seed_gen=g, dtype=dtype, scale=3.0)
    w = randn(shape[-1], seed_gen=g, dtype=dtype) + 1
    out = tri.rms_norm(x, w, 1e-5)
    assert out.dtype == dtype
    assert_fa_close(out, ref.rms_norm(x, w, 1e-5), ref.rms_norm(x.double(), w.double(), 1e-5), dtype, "rms_norm")


@dtypes
@pytest.mark.parametrize("shape", SHAPES[:3], ids=str)
def test_add_rms_norm(dtype, shape):
    g = gen(2)
    x, r = randn(*shape, seed_gen=g, dtype=dtype), randn(*shape, seed_gen=g, dtype=dtype, scale=2.0)
    w = randn(shape[-1], seed_gen=g, dtype=dtype) + 1
    out, s = tri.add_rms_norm(x, r, w, 1e-6)
    ref_out, ref_s = ref.add_rms_norm(x, r, w, 1e-6)
    assert torch.equal(s, ref_s)  # the sum is one rounding of the same two values
    # the specification normalises the *rounded* sum: measure both against fp64 applied to that sum
    assert_fa_close(out, ref_out, ref.rms_norm(ref_s.double(), w.double(), 1e-6), dtype, "add_rms_norm")


def test_rms_norm_mixed_weight_dtype_and_fp64_fallback():
    g = gen(3)
    x, w = randn(5, 48, seed_gen=g, dtype=torch.float16), randn(48, seed_gen=g)  # fp32 weight promotes
    out = tri.rms_norm(x, w, 1e-5)
    assert out.dtype == torch.float32
    assert_fa_close(out, ref.rms_norm(x, w, 1e-5), ref.rms_norm(x.double(), w.double(), 1e-5), torch.float16)
    x64 = x.double()
    assert torch.equal(tri.rms_norm(x64, w.double(), 1e-5), ref.rms_norm(x64, w.double(), 1e-5))


def test_norm_empty_input():
    x = torch.empty(0, 16, device=DEVICE)
    assert tri.rms_norm(x, torch.ones(16, device=DEVICE), 1e-5).shape == (0, 16)


ROPE_CASES = [(1, 1, 1, 16), (7, 4, 2, 48), (5, 3, 1, 128)]  # (N, H, Hk, D): one token, GQA, D=128


@dtypes
@pytest.mark.parametrize("rotate_fp32", [True, False], ids=["fp32_rotate", "dtype_rotate"])
@pytest.mark.parametrize("case", ROPE_CASES, ids=str)
def test_rope(dtype, rotate_fp32, case):
    n, h, hk, d = case
    g = gen(4)
    q, k = randn(n, h, d, seed_gen=g, dtype=dtype), randn(n, hk, d, seed_gen=g, dtype=dtype)
    pos = torch.randint(0, 4096, (n,), generator=g).to(DEVICE)
    oq, ok = rope_tri.rope(q, k, pos, 500000.0, rotate_fp32)
    rq, rk = rope_ref.rope(q, k, pos, 500000.0, rotate_fp32)
    q64, k64 = rope_ref.rope(q.double(), k.double(), pos, 500000.0, rotate_fp32)
    assert oq.dtype == dtype and ok.dtype == dtype
    assert_fa_close(oq, rq, q64, dtype, "rope q")
    assert_fa_close(ok, rk, k64, dtype, "rope k")


def test_rope_strided_views():
    """q and k as column slices of one fused qkv projection output (non-contiguous heads)."""
    g = gen(5)
    n, h, d = 6, 4, 32
    qkv = randn(n, 3 * h * d, seed_gen=g).view(n, 3 * h, d)  # [N, 3H, D]
    q, k = qkv[:, :h], qkv[:, h:2 * h]
    pos = torch.arange(n, device=DEVICE) * 37
    oq, ok = rope_tri.rope(q, k, pos, 10000.0, True)
    rq, rk = rope_ref.rope(q, k, pos, 10000.0, True)
    q64, k64 = rope_ref.rope(q.double(), k.double(), pos, 10000.0, True)
    assert_fa_close(oq, rq, q64, torch.float32, "q")
    assert_fa_close(ok, rk, k64, torch.float32, "k")


QK_NORM_CASES = [(1, 1, 1, 16), (7, 4, 2, 48), (5, 16, 16, 128)]  # (N, H, Hk, D): one token, GQA, MoE head shape


@dtypes
@pytest.mark.parametrize("rotate_fp32", [True, False], ids=["fp32_rotate", "dtype_rotate"])
@pytest.mark.parametrize("case", QK_NORM_CASES, ids=str)
def test_qk_norm_rope(dtype, rotate_fp32, case):
    """Per-head RMSNorm then RoPE in one launch, against the spec; q and k as strided views of one qkv output
    (the model's layout), weights away from 1 so a swapped or missing weight shows."""
    n, h, hk, d = case
    g = gen(6)
    qkv = randn(n, (h + 2 * hk) * d, seed_gen=g, dtype=dtype, scale=3.0).view(n, h + 2 * hk, d)
    q, k = qkv[:, :h], qkv[:, h:h + hk]
    qw, kw = randn(d, seed_gen=g, dtype=dtype), randn(d, seed_gen=g, dtype=dtype)
    cos, sin = rope_ref.rope_cos_sin(torch.randint(0, 4096, (n,), generator=g).to(DEVICE), d, 50000.0, dtype)
    oq, ok = rope_tri.qk_norm_rope(q, k, cos, sin, rotate_fp32, qw, kw, 1e-6)
    rq, rk = rope_ref.qk_norm_rope(q, k, cos, sin, rotate_fp32, qw, kw, 1e-6)
    q64, k64 = rope_ref.qk_norm_rope(q.double(), k.double(), cos.double(), sin.double(), rotate_fp32, qw.double(),
                                     kw.double(), 1e-6)
    assert oq.dtype == dtype and ok.dtype == dtype and oq.shape == q.shape and ok.shape == k.shape
    assert_fa_close(oq, rq, q64, dtype, "qk_norm_rope q")
    assert_fa_close(ok, rk, k64, dtype, "qk_norm_rope k")


def test_qk_norm_rope_uses_each_weight_and_the_whole_head():
    """k's weight only scales k; a head whose second half is zero still normalises by the whole head."""
    g = gen(7)
    n, h, d = 3, 2, 32
    q, k = randn(n, h, d, seed_gen=g), randn(n, h, d, seed_gen=g)
    q[:, :, d // 2:] = 0
    cos, sin = rope_ref.rope_cos_sin(torch.arange(n, device=DEVICE), d, 10000.0, torch.float32)
    ones = torch.ones(d, device=DEVICE)
    base_q, base_k = rope_tri.qk_norm_rope(q, k, cos, sin, True, ones, ones, 1e-6)
    oq, ok = rope_tri.qk_norm_rope(q, k, cos, sin, True, ones, 2 * ones, 1e-6)
    assert torch.equal(oq, base_q) and torch.allclose(ok, 2 * base_k, rtol=1e-6, atol=1e-6)
    rq, _ = rope_ref.qk_norm_rope(q, k, cos, sin, True, ones, ones, 1e-6)
    assert torch.allclose(base_q, rq, rtol=1e-5, atol=1e-6)
