"""Quantized GEMM (fp8 / int8 / int4 weights) under the interpreter against the PyTorch specification: skinny
(M <= 64, with K splits on group boundaries) and tiled (M > 64) shapes, per-channel and grouped scales.

The interpreter loads float8_e4m3fn (Triton 3.6 and 3.9 convert it to fp32 on load), so fp8 runs the same kernel
path as on a GPU; what it cannot show is the GPU's own fp8 -> bf16 conversion instruction, which gpu_check.sh
covers. The reference is the dequantized GEMM in float64 (``quantized_linear`` on float64 activations)."""
import pytest
import torch

from tests.kernels.tolerance import DEVICE, EPS, dtypes, gen, randn
from unmask.kernels import quant
from unmask.kernels.torch_ref import qlinear as ref
from unmask.kernels.triton_ops import qlinear as tri

CASES = [  # (M, K, N, splits, group): one row; odd N; K split on group boundaries; tiled M; per channel
    (1, 128, 48, 1, 32),
    (32, 256, 96, 2, 64),
    (17, 192, 70, 3, 32),
    (80, 128, 40, 1, 128),
]


def _weight(fmt, n, k, group, g):
    w = randn(n, k, seed_gen=g, scale=k ** -0.5)
    if fmt == "int4":
        q = torch.randint(-8, 8, (n, k), generator=g)
        scales = torch.rand(n, k // group, generator=g) * 0.02 + 0.01
        return quant.QuantizedWeight(quant.pack_int4(q).to(DEVICE), scales.to(DEVICE), "int4", group)
    return quant.quantize(w, fmt)  # per channel


@dtypes
@pytest.mark.parametrize("fmt", quant.FORMATS)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_quantized_linear(dtype, fmt, case):
    m, k, n, splits, group = case
    g = gen(m + k + n)
    x = randn(m, k, seed_gen=g, dtype=dtype)
    w = _weight(fmt, n, k, group, g)
    out = tri.quantized_linear_fwd(x, w, splits=splits)
    assert out.dtype == dtype and out.shape == (m, n)
    want = ref.quantized_linear(x.double(), w)  # x @ dequantize(w).T in float64
    # products are exact (codes are small integers, scales fp32); the error is the accumulation's and the output
    # rounding's: K·eps·Σ|x·w| bounds the first, eps·|y| the second
    bound = EPS[dtype] * (k * (x.double().abs() @ w.dequantize(torch.float64).abs().t()) + want.abs()) + 1e-30
    assert ((out.double() - want).abs() <= bound).all(), (out.double() - want).abs().max()


def test_ops_linear_dispatches_quantized_weights():
    from unmask.kernels import backend, ops
    w = quant.quantize(torch.randn(32, 64), "int8")
    x = torch.randn(4, 64)
    assert backend.active_backend("quantized_linear", x.device) in ("torch", "triton")
    torch.testing.assert_close(ops.linear(x, w), ref.quantized_linear(x.double(), w).float(), rtol=1e-5, atol=1e-5)
