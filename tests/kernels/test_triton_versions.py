"""The Triton (and torch) this run uses is one the project declares, and the interpreter checks a kernel bug
class that only newer Triton releases reject (CI runs this folder on Triton 3.6.0 and on the newest release)."""
import importlib.metadata
import os
import sys
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


def _declared() -> dict:
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return {r.name: r for r in map(Requirement, deps)}


@pytest.mark.parametrize("name", ["torch", "triton"])
def test_installed_version_is_declared(name):
    req = _declared()[name]
    if req.marker is not None and not req.marker.evaluate():
        pytest.skip(f"{name} is not a dependency on this platform")
    installed = Version(importlib.metadata.version(name))
    assert req.specifier.contains(installed, prereleases=True), f"{name} {installed} outside {req} (pyproject.toml)"


@pytest.mark.skipif(not INTERPRETING, reason="interpreter behaviour")
def test_scalar_condition_mask_is_rejected_on_every_version():
    """``mask=<scalar comparison>`` on a block of pointers fails in Triton 3.9's interpreter; conftest makes 3.6's
    fail the same way, and the block-comparison form the kernels use passes on both."""
    import triton
    import triton.language as tl

    @triton.jit
    def copy(flag_ptr, src_ptr, dst_ptr, BLOCK: tl.constexpr, SCALAR_MASK: tl.constexpr):
        flag = tl.load(flag_ptr)
        offs = tl.arange(0, BLOCK)
        if SCALAR_MASK:
            live = flag >= 0
        else:
            live = (tl.zeros([BLOCK], tl.int32) + flag) >= 0  # as moe._block_rows
        tl.store(dst_ptr + offs, tl.load(src_ptr + offs, mask=live, other=0), mask=offs < BLOCK)

    flag, src = torch.tensor([1], dtype=torch.int32), torch.arange(16, dtype=torch.int32)
    dst = torch.zeros_like(src)
    copy[(1,)](flag, src, dst, BLOCK=16, SCALAR_MASK=False)
    assert torch.equal(dst, src)
    with pytest.raises(Exception, match="mask has unsupported dtype"):
        copy[(1,)](flag, src, torch.zeros_like(src), BLOCK=16, SCALAR_MASK=True)
    flag[0] = -1
    dst.fill_(7)
    copy[(1,)](flag, src, dst, BLOCK=16, SCALAR_MASK=False)
    assert torch.equal(dst, torch.zeros_like(src))
