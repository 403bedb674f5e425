"""Host heap policy of a CPU engine: freed activation memory stays in the process for the next step.

A CPU step allocates and frees its activations (megabytes per tensor at a batch of 32) through the C library's
malloc. glibc serves blocks above a dynamic threshold with fresh ``mmap`` pages and hands a freed heap top back
to the OS once it exceeds the trim threshold, so every step touches new pages again: on the 2-core dev CPU the
embedded dense model at C=32, exact, took 1.2-1.8 million minor page faults and 1.7-2.6 s of kernel time per
64 requests on top of 5.9-6.6 s of user time (benchmarks/README.md, #28). Raising both thresholds once keeps
the freed memory in the heap: the faults drop to none and the kernel time with them. This is the effect
PyTorch's CPU tuning guides get from preloading jemalloc or tcmalloc; glibc's own ``mallopt`` does it in place.
The process's resident memory then stays at its peak working set, as a CUDA caching allocator's does.
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger("unmask.engine")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20
"""Blocks up to this size come from the heap: glibc's largest accepted value on 64-bit (HEAP_MAX_SIZE / 2)."""
TRIM_THRESHOLD_BYTES = (1 << 31) - 1
"""A freed heap top is returned to the OS only beyond this (the largest value of the C int argument)."""
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def _user_tuned() -> bool:
    """True when the environment already sets glibc's malloc thresholds (its variables or tunables)."""
    return any(k in os.environ for k in USER_SETTINGS) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")


def retain_freed_host_memory() -> bool:
    """Raise glibc malloc's mmap and trim thresholds for this process (idempotent). Returns True when applied;
    False when the C library is not glibc (nothing to tune), when the environment sets its own malloc
    thresholds (the user's choice wins), or when glibc refuses a value."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or _user_tuned():
        return False
    libc = ctypes.CDLL(None)
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and libc.mallopt(
        M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    if not ok:
        log.warning("glibc refused the malloc thresholds; freed host memory goes back to the OS after each step")
    return ok
