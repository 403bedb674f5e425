"""Skinny GEMM (x·Wᵀ for at most 64 rows): Triton vs the PyTorch specification under the fp64 error model, with
and without K splits, odd sizes, strided rows, and the UNMASK_GEMM switch."""
import pytest
import torch

from tests.kernels.tolerance import DEVICE, assert_fa_close, dtypes, gen, randn
from unmask.kernels.backend import KernelBackendError
from unmask.kernels.options import resolve
from unmask.kernels.torch_ref import linear as ref
from unmask.kernels.triton_ops import _common
from unmask.kernels.triton_ops import linear as tri

CASES = [  # (M, K, N, splits): one row, K and N off the tiles, a split count that leaves a short last split
    (1, 64, 48, 1),
    (32, 256, 96, 1),
    (32, 256, 96, 3),
    (17, 100, 70, 2),
    (64, 128, 32, 4),
]


def check(x, w, splits, dtype, what):
    out = tri.linear_fwd(x, w, splits=splits)
    assert out.dtype == dtype and out.shape == (x.shape[0], w.shape[0])
    assert_fa_close(out, ref.linear(x, w), ref.linear(x.double(), w.double()), dtype, what)


@dtypes
@pytest.mark.parametrize("case", CASES, ids=str)
def test_skinny_linear(dtype, case):
    m, k, n, splits = case
    g = gen(m + k + n)
    x, w = randn(m, k, seed_gen=g, dtype=dtype), randn(n, k, seed_gen=g, dtype=dtype, scale=k ** -0.5)
    check(x, w, splits, dtype, f"linear {case}")


@pytest.mark.parametrize("case", [c for c in CASES if c[3] > 1], ids=str)
def test_in_kernel_split_sum_equals_separate_kernel(case):
    """The last-arriving split's sum and the split-sum kernel add the same partials in the same order: equal
    bits; the arrival counters are back to zero afterwards (a CUDA-graph replay reuses them)."""
    m, k, n, splits = case
    g = gen(m + k + n)
    x, w = randn(m, k, seed_gen=g), randn(n, k, seed_gen=g, scale=k ** -0.5)
    serial = tri.linear_fwd(x, w, splits=splits, serial=True)
    assert torch.equal(serial, tri.linear_fwd(x, w, splits=splits, serial=False))
    assert not _common._counters[(x.device.type, x.device.index)].any()


def test_in_kernel_split_sum_under_contention():
    """Many splits racing for the same tiles, call after call: every result equals the split-sum kernel's. On a
    GPU the splits run concurrently (a missing release/acquire would show as stale partials); the interpreter
    runs programs one by one, so there it checks the bookkeeping only (fewer repeats, smaller sizes)."""
    gpu = DEVICE.type == "cuda"
    m, k, n, splits, repeats = (32, 4096, 4096, 8, 30) if gpu else (8, 256, 64, 4, 2)
    g = gen(6)
    dtype = torch.bfloat16 if gpu else torch.float32
    x, w = randn(m, k, seed_gen=g, dtype=dtype), randn(n, k, seed_gen=g, dtype=dtype, scale=k ** -0.5)
    want = tri.linear_fwd(x, w, splits=splits, serial=False)
    for _ in range(repeats):
        assert torch.equal(tri.linear_fwd(x, w, splits=splits, serial=True), want)


def test_strided_rows_and_split_determinism():
    """x as a column slice of a wider activation (row stride > K); a split result is the same bits every run."""
    g = gen(3)
    wide = randn(8, 200, seed_gen=g)
    x, w = wide[:, 40:168], randn(24, 128, seed_gen=g)
    check(x, w, 2, torch.float32, "strided x")
    assert torch.equal(tri.linear_fwd(x, w, splits=3), tri.linear_fwd(x, w, splits=3))


def test_edges():
    g = gen(4)
    w = randn(16, 32, seed_gen=g)
    assert tri.linear_fwd(torch.zeros(0, 32, device=DEVICE), w).shape == (0, 16)
    assert torch.equal(tri.linear_fwd(torch.zeros(2, 0, device=DEVICE), torch.zeros(16, 0, device=DEVICE)),
                       torch.zeros(2, 16, device=DEVICE))
    with pytest.raises(ValueError, match="at most 64 rows"):
        tri.linear_fwd(randn(65, 32, seed_gen=g), w)


def test_switch_routes_only_small_batches(monkeypatch):
    """UNMASK_GEMM=triton sends M <= 64 to the skinny kernel and taller inputs to torch; off, torch serves all."""
    g = gen(5)
    w = randn(40, 64, seed_gen=g)
    small, tall = randn(8, 64, seed_gen=g), randn(70, 64, seed_gen=g)
    monkeypatch.setenv("UNMASK_GEMM", "cublas")
    assert torch.equal(tri.linear(small, w), ref.linear(small, w))
    monkeypatch.setenv("UNMASK_GEMM", "triton")
    assert torch.equal(tri.linear(small, w), tri.linear_fwd(small, w))
    assert torch.equal(tri.linear(tall, w), ref.linear(tall, w))


def test_gemm_setting(monkeypatch):
    monkeypatch.setenv("UNMASK_GEMM", " Triton ")
    assert resolve().gemm == "triton"
    monkeypatch.delenv("UNMASK_GEMM")
    assert resolve().gemm == "cublas"
    monkeypatch.setenv("UNMASK_GEMM", "cutlass")
    with pytest.raises(KernelBackendError, match="UNMASK_GEMM='cutlass'"):
        resolve()
