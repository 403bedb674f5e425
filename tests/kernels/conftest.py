"""Kernel tests run the Triton fast paths against their PyTorch specification.

Without CUDA the kernels run in Triton's CPU interpreter; ``TRITON_INTERPRET`` must be set before any
``@triton.jit`` function is decorated, i.e. before ``unmask.kernels.triton_ops`` is imported by the
test modules collected after this file. Without Triton (non-Linux) the folder is skipped.

Under the interpreter, loads and stores also insist on a boolean mask on every Triton version
(``_strict_interpreter_masks``): Triton 3.9's interpreter rejects a mask that is a scalar comparison broadcast
to a block ("mask has unsupported dtype"; it splats the comparison as an int32), which 3.6's accepts, so the
pinned environment catches that class of kernel bug too, not only the newest-Triton one.
"""
import functools
import importlib.util
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

collect_ignore_glob = [] if importlib.util.find_spec("triton") else ["test_*.py"]


def _strict_interpreter_masks() -> None:
    """Make the interpreter's masked load/store (and atomics) raise on a non-boolean mask, as Triton 3.9's does."""
    try:
        import numpy as np
        from triton.runtime import interpreter
    except ImportError:
        return
    builder = getattr(interpreter, "InterpreterBuilder", None)
    if builder is None or getattr(builder, "_unmask_strict_masks", False):
        return

    def strict(fn, position, name):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            mask = kwargs.get(name, args[position] if len(args) > position else None)
            data = getattr(mask, "data", None)
            if isinstance(data, np.ndarray) and data.dtype != np.bool_:
                raise ValueError(f"mask has unsupported dtype ({data.dtype}; a scalar condition broadcast into a "
                                 "mask: build the mask from a block comparison)")
            return fn(self, *args, **kwargs)
        return wrapper

    # (method, index of the mask among the arguments after self); the argument lists differ between versions
    for method, position in (("create_masked_load", 1), ("create_masked_store", 2), ("create_atomic_rmw", 3)):
        fn = getattr(builder, method, None)
        if fn is not None:
            setattr(builder, method, strict(fn, position, "mask"))
    builder._unmask_strict_masks = True


if os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0") and importlib.util.find_spec("triton"):
    _strict_interpreter_masks()
