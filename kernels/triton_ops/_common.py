"""Host-side helpers shared by the Triton fast paths (no kernels, no driver calls at import time).

Interpreter rules (KERNELS.md §5): under ``TRITON_INTERPRET=1`` bf16 values are raw uint16, so every
kernel takes an ``UPCAST`` constexpr that turns loaded bf16 tiles into fp32 before any arithmetic or
``tl.dot``; multi-config autotune is never used (each op picks one config on the host).
"""
import functools
import os

import torch
import triton
import triton.language as tl


FP_FUSION = True
"""``enable_fp_fusion`` of every kernel launch: a*b+c may compile to one FMA (Triton's default through 3.9, the
setting every GPU result so far was measured with). Passed explicitly because Triton 3.9 warns that its default
turns to False in 3.10, which would change kernel results on the GPU with the Triton version (the interpreter
ignores it)."""


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")


def upcast(dtype: torch.dtype) -> bool:
    """Value for a kernel's UPCAST constexpr: bf16 under the interpreter must become fp32 after loading."""
    return interpreting() and dtype == torch.bfloat16


def next_pow2(n: int) -> int:
    """Smallest power of two >= max(n, 1)."""
    return triton.next_power_of_2(max(int(n), 1))


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (132 on an H100 SXM); 1 for CPU / the interpreter."""
    if device.type != "cuda":
        return 1
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


MAX_COUNTERS = 4096
"""Arrival counters per device (int32) for kernels whose last-finishing program of a group finishes the group's
work in the same launch (the skinny GEMM's split-K sum, split-KV attention's combine)."""

_counters: dict = {}


def arrival_counters(device: torch.device, needed: int) -> torch.Tensor | None:
    """The device's zeroed counters, allocated on first use outside CUDA-graph capture; None when ``needed``
    exceeds MAX_COUNTERS or they would first be allocated inside a capture. Every kernel that uses them returns
    the ones it touched to zero before it ends, so kernels in one stream order (the engine's) can share them;
    work issued concurrently from several streams must take the separate-kernel path instead."""
    key = (device.type, device.index)
    if needed > MAX_COUNTERS:
        return None
    if key not in _counters:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        _counters[key] = torch.zeros(MAX_COUNTERS, dtype=torch.int32, device=device)
    return _counters[key]


def row_major(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself if its last dimension is contiguous (stride 1), else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


@triton.jit
def mma(a, b, acc, IEEE: tl.constexpr):
    """acc + a @ b; ``IEEE`` (fp32 operands on a GPU) asks for true fp32 products instead of tf32."""
    if IEEE:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, b, acc)
    return acc
