"""``first_argmax`` (the CPU remask's two-pass argmax) returns what ``torch.argmax`` returns, ties and NaN included."""
import pytest
import torch

from unmask.kernels.torch_ref import remask
from unmask.kernels.torch_ref.remask import ARGMAX_CHUNK, first_argmax


@pytest.fixture(autouse=True)
def two_passes_always(monkeypatch):
    """The cases below are small: test the two-pass path on them, not the single argmax small inputs take."""
    monkeypatch.setattr(remask, "ARGMAX_SMALL", 0)

WIDTHS = [1, 7, 2 * ARGMAX_CHUNK, 2 * ARGMAX_CHUNK + 1, 960, 1000, 4 * ARGMAX_CHUNK - 1, 5003]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("v", WIDTHS)
def test_equals_torch_argmax_with_ties(dtype, v):
    g = torch.Generator().manual_seed(v)
    x = torch.randint(-3, 4, (97, v), generator=g).to(dtype)  # few distinct values: most rows tie at the max
    assert torch.equal(first_argmax(x), torch.argmax(x, dim=-1))
    y = torch.randn(97, v, generator=g).to(dtype)
    assert torch.equal(first_argmax(y), torch.argmax(y, dim=-1))


@pytest.mark.parametrize("v", [960, 1000])
def test_special_values(v):
    x = torch.randn(8, v, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    x[0] = float("-inf")  # every column −inf: the first column
    x[1, [5, v - 1]] = float("inf")  # two +inf: the first
    x[2, [700, 900]] = float("nan")  # NaN wins, the first of them
    x[3, v - 1] = float("nan")  # a NaN in the short last chunk
    x[4, v - 1] = 100.0  # the maximum in the last column
    x[5, :] = 1.0  # all equal
    x[6, [3, 64, v - 2]] = 50.0  # ties across chunks
    assert torch.equal(first_argmax(x), torch.argmax(x, dim=-1))


def test_strided_and_empty_rows():
    x = torch.randn(300, 64, generator=torch.Generator().manual_seed(1)).t()  # [64, 300] with column stride 64
    assert torch.equal(first_argmax(x), torch.argmax(x, dim=-1))
    assert first_argmax(torch.empty(0, 960)).shape == (0,)
