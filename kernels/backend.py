"""Which implementation serves an op: ``triton`` (CUDA tensors and Triton importable) or ``torch``.

``UNMASK_KERNELS=torch`` forces the PyTorch reference everywhere; ``UNMASK_KERNELS=triton`` forces the
Triton kernels for every op that has one, on any device (CPU tensors then need ``TRITON_INTERPRET=1``),
and raises if Triton cannot be imported. Unset (or ``auto``): Triton for CUDA tensors when it imports,
torch otherwise. The setting is ``KernelOptions.backend`` (``options.py`` reads the environment): an engine
resolves it once and runs each step inside ``options.use``, so a step's ops do not read the environment; a bare
call outside an engine reads it per call. Triton modules are imported lazily so CPU-only installs never touch
them.
"""
import functools
import importlib

import torch

from unmask.kernels import options
from unmask.kernels import torch_ref  # noqa: F401  (package marker)
from unmask.kernels.options import KernelBackendError

_TRITON_MODULES = ("attention", "moe", "remask", "select", "norm", "rope", "act", "linear", "qlinear")

__all__ = ["KernelBackendError", "active_backend", "pick", "triton_table"]


@functools.lru_cache(maxsize=None)
def triton_table() -> dict:
    """Name -> Triton implementation for every op the triton_ops package provides ({} if Triton is absent)."""
    try:
        import triton  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means "no Triton"
        return {}
    table = {}
    for mod_name in _TRITON_MODULES:
        try:
            mod = importlib.import_module(f"unmask.kernels.triton_ops.{mod_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"unmask.kernels.triton_ops.{mod_name}":
                continue
            raise
        for name in getattr(mod, "__all__", ()):
            table[name] = getattr(mod, name)
    return table


def pick(op_name: str, ref_fn, device: torch.device):
    """Return the implementation of ``op_name`` for tensors on ``device``."""
    mode = options.active().backend
    if mode == "torch":
        return ref_fn
    if mode == "triton":
        table = triton_table()
        if not table:
            raise KernelBackendError("UNMASK_KERNELS=triton but Triton cannot be imported")
        return table.get(op_name, ref_fn)
    if device.type == "cuda":
        return triton_table().get(op_name, ref_fn)
    return ref_fn


def active_backend(op_name: str, device: torch.device) -> str:
    """'triton' or 'torch': which implementation ``op_name`` runs on ``device`` right now."""
    ref = object()
    return "torch" if pick(op_name, ref, device) is ref else "triton"
