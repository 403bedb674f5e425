"""silu_mul (SwiGLU over a fused gate/up row): Triton vs the PyTorch specification (fp64 error model)."""
import pytest
import torch

from tests.kernels.tolerance import DEVICE, assert_fa_close, dtypes, gen, randn
from unmask.kernels.torch_ref import act as ref
from unmask.kernels.triton_ops import act as tri

SHAPES = [(1, 2), (3, 74), (5, 2 * 1100), (2, 2 * 4096)]  # one row and I=1, odd I, I not a tile multiple


@dtypes
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_silu_mul(dtype, shape):
    x = randn(*shape, seed_gen=gen(4), dtype=dtype, scale=4.0)  # both tails of silu
    out = tri.silu_mul(x)
    assert out.dtype == dtype and out.shape == (shape[0], shape[1] // 2)
    assert_fa_close(out, ref.silu_mul(x), ref.silu_mul(x.double()), dtype, f"silu_mul {shape}")


def test_silu_mul_strided_rows_empty_and_fp64():
    g = gen(5)
    wide = randn(4, 100, seed_gen=g)
    x = wide[:, :64]  # row stride 100: the GEMM output slice a caller may pass
    assert_fa_close(tri.silu_mul(x), ref.silu_mul(x), ref.silu_mul(x.double()), torch.float32, "strided")
    assert tri.silu_mul(torch.empty(0, 8, device=DEVICE)).shape == (0, 4)
    x64 = randn(3, 10, seed_gen=g, dtype=torch.float64)
    assert torch.equal(tri.silu_mul(x64), ref.silu_mul(x64))
