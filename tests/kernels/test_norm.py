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
