"""Kernel tunables: one frozen config, passed down from ``EngineConfig.kernels`` and read by the Triton ops
at call time (never at import).

The engine's runner resolves its options once (``resolve``: the config, then environment overrides) and
runs every forward inside ``use(options)``; code outside an engine (kernel benchmarks, tests calling ops
directly) gets ``resolve(KernelOptions())``, so the environment variables still steer a bare script. The
environment is read here only:

    UNMASK_KERNELS=auto|torch|triton             -> backend (``backend.py``)
    UNMASK_ATTN_LOOP=merged|segmented|prefetch   -> attn_loop
    UNMASK_GEMM=cublas|triton                    -> gemm
    UNMASK_SERIAL_COMBINE=0|1                    -> serial_combine
    UNMASK_STATIC_GRAPH_STEP=0|1                 -> static_graph_step
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os

BACKENDS = ("auto", "torch", "triton")
ATTN_LOOPS = ("merged", "segmented", "prefetch")
GEMMS = ("cublas", "triton")


class KernelBackendError(RuntimeError):
    """The requested kernel backend or option cannot be used."""


@dataclasses.dataclass(frozen=True)
class KernelOptions:
    attn_loop: str = "merged"
    """Cached attention's key loop: ``merged`` walks every key once with masked loads from both sources per
    tile (the loop timed on an H100); ``segmented`` walks the cached prefix, the new rows and the cached suffix
    as three single-source loops; ``prefetch`` is ``segmented`` with the cached loops pipelined in registers."""
    gemm: str = "cublas"
    """Projections and LM head on CUDA: ``cublas`` (torch's GEMM for every shape) or ``triton`` (the skinny
    Triton GEMM for M <= 64 rows, torch's above)."""
    serial_combine: bool = False
    """Split-KV attention partials merged inside the attention launch by the last split to finish (True), or
    by the separate combine kernel (False, the path timed on an H100 so far); both give the same bits."""
    static_graph_step: bool = False
    """Run the CUDA-graph block step's static buffers and padding eagerly instead of capturing them, on any
    device (on CPU this turns that path on): how the graphed path, single-device and per tensor-parallel rank,
    is tested without a GPU. Slower than either real path."""
    backend: str = "auto"
    """Which implementation serves each op (``backend.pick``): ``auto`` (Triton for CUDA tensors when it imports,
    the PyTorch spec otherwise), ``torch`` (the spec everywhere) or ``triton`` (every op with a kernel, any
    device). An engine resolves it once (``UNMASK_KERNELS`` as read when it was built); its steps read no
    environment per op."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise KernelBackendError(f"kernel backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.attn_loop not in ATTN_LOOPS:
            raise KernelBackendError(f"attention loop {self.attn_loop!r}: expected one of {', '.join(ATTN_LOOPS)}")
        if self.gemm not in GEMMS:
            raise KernelBackendError(f"gemm {self.gemm!r}: expected one of {', '.join(GEMMS)}")


def _env(name: str, choices: tuple[str, ...]) -> str | None:
    """The environment override ``name`` (trimmed, lower-case), None when unset; anything else raises."""
    raw = os.environ.get(name)
    value = raw.strip().lower() if raw is not None else ""
    if not value:
        return None
    if value not in choices:
        raise KernelBackendError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value


def _flag(name: str, default: bool) -> bool:
    """The boolean environment override ``name`` (0/1/false/true), ``default`` when unset."""
    value = _env(name, ("0", "1", "false", "true"))
    return default if value is None else value in ("1", "true")


def resolve(configured: KernelOptions | None = None) -> KernelOptions:
    """``configured`` (default: the defaults) with the environment overrides of the module docstring applied."""
    opts = configured or KernelOptions()
    loop, gemm = _env("UNMASK_ATTN_LOOP", ATTN_LOOPS), _env("UNMASK_GEMM", GEMMS)
    return dataclasses.replace(opts, attn_loop=loop or opts.attn_loop, gemm=gemm or opts.gemm,
                               serial_combine=_flag("UNMASK_SERIAL_COMBINE", opts.serial_combine),
                               static_graph_step=_flag("UNMASK_STATIC_GRAPH_STEP", opts.static_graph_step),
                               backend=_env("UNMASK_KERNELS", BACKENDS) or opts.backend)


_ACTIVE: contextvars.ContextVar[KernelOptions | None] = contextvars.ContextVar("unmask_kernel_options", default=None)


def active() -> KernelOptions:
    """The options in force for the current call: the innermost ``use``, else ``resolve()``."""
    return _ACTIVE.get() or resolve()


@contextlib.contextmanager
def use(options: KernelOptions):
    """Run the enclosed kernel calls with ``options`` (the engine's runner wraps each step in it)."""
    token = _ACTIVE.set(options)
    try:
        yield options
    finally:
        _ACTIVE.reset(token)
