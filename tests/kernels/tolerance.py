"""Shared helpers for kernel tests: device, dtypes under test, and the dtype error model.

Error model (FlashAttention's test rule, KERNELS.md §1.4): with ``ref64`` the PyTorch specification run in
float64 and ``ref_lp`` the same specification run in the low precision under test, the kernel must satisfy
``max|out − ref64| <= 2 · max|ref_lp − ref64| + slack`` with ``slack`` one unit in the last place of the
dtype at the output's scale. The bound adapts to dtype and shape and is never tuned to a measured error.
"""
import os

import pytest
import torch

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# bf16 arithmetic is broken in the interpreter (KERNELS.md §5): bf16 cases need a GPU. On a GPU fp16 (same
# code as bf16, covered by the interpreter) is left out to keep the one-shot GPU check's compile time short;
# fp32 stays: its tight error bound catches indexing or race bugs that a bf16 tolerance could hide.
DTYPES = [torch.float32, torch.bfloat16] if DEVICE.type == "cuda" else [torch.float32, torch.float16]
DTYPE_IDS = [str(d).removeprefix("torch.") for d in DTYPES]
dtypes = pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)

EPS = {torch.float32: 2.0 ** -23, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}


def gen(seed: int) -> torch.Generator:
    """A CPU generator: inputs are drawn on the CPU and moved, so CPU and GPU runs see the same data."""
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed_gen: torch.Generator, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=seed_gen, dtype=torch.float64) * scale).to(dtype).to(DEVICE)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


def assert_fa_close(out: torch.Tensor, ref_lp: torch.Tensor, ref64: torch.Tensor, dtype: torch.dtype, what: str = ""):
    """The FA rule above; also rejects NaN/inf that the reference does not have."""
    assert out.shape == ref64.shape, (what, out.shape, ref64.shape)
    assert torch.isfinite(out).all() or not torch.isfinite(ref64).all(), f"{what}: non-finite output"
    err, err_lp = max_err(out, ref64), max_err(ref_lp, ref64)
    scale = max(1.0, ref64.abs().max().item()) if ref64.numel() else 1.0
    bound = 2 * err_lp + EPS[dtype] * scale
    assert err <= bound, f"{what}: |triton − fp64| = {err:.3g} > 2·{err_lp:.3g} + slack ({bound:.3g})"
