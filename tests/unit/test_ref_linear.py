"""The CPU reference GEMM (kernels/torch_ref/linear.py): oneDNN for fp32 inference, ``x @ W.T`` otherwise."""
import pytest
import torch

from unmask.kernels.torch_ref import linear as ref


def within_summation_bound(y: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    """y [M, N] fp32 is x @ w.T summed in some order: |y − exact| <= K·eps·(|x| @ |w|.T), the classic bound on
    rounding in a K-term dot product, against the exact product computed in fp64."""
    exact = x.double() @ w.double().t()
    bound = x.shape[1] * torch.finfo(torch.float32).eps * (x.double().abs() @ w.double().abs().t())
    assert bool(((y.double() - exact).abs() <= bound).all())


@pytest.mark.skipif(not ref.ONEDNN, reason="row-count invariance from 2 rows is oneDNN's property; a torch build "
                    "without oneDNN runs fp32 through x @ W.T, whose BLAS rows depend on the row count below 8 rows")
@pytest.mark.parametrize("k, n", [(96, 288), (384, 96), (96, 960), (200, 130)])
def test_fp32_inference_rows_do_not_depend_on_the_row_count(k, n):
    g = torch.Generator().manual_seed(k + n)
    x, w = torch.randn(700, k, generator=g), torch.randn(n, k, generator=g)
    with torch.inference_mode():
        full = ref.linear(x, w)  # [700, N]
        within_summation_bound(full, x, w)
        for m, start in ((2, 0), (3, 11), (8, 100), (33, 300), (257, 443)):
            assert torch.equal(ref.linear(x[start:start + m].clone(), w), full[start:start + m]), (m, start)


def test_strided_rows_and_no_rows():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 384, generator=g)
    wide = torch.randn(40, 768, generator=g)
    with torch.inference_mode():
        x = wide[:, :384]  # a column slice: rows 768 apart
        within_summation_bound(ref.linear(x, w), x, w)
        assert ref.linear(torch.empty(0, 384), w).shape == (0, 96)


def test_autograd_and_fp64_take_the_plain_matmul():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(24, 16, generator=g, requires_grad=True)
    x = torch.randn(5, 16, generator=g)
    y = ref.linear(x, w)
    assert torch.equal(y, x @ w.t())
    y.sum().backward()  # the trainer's path: differentiable
    torch.testing.assert_close(w.grad, x.sum(0).expand(24, 16))
    x64, w64 = x.double(), w.detach().double()
    with torch.inference_mode():
        assert torch.equal(ref.linear(x64, w64), x64 @ w64.t())
