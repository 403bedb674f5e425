"""Kernel tests run the Triton fast paths against their PyTorch specification.

Without CUDA the kernels run in Triton's CPU interpreter; ``TRITON_INTERPRET`` must be set before any
``@triton.jit`` function is decorated, i.e. before ``unmask.kernels.triton_ops`` is imported by the
test modules collected after this file. Without Triton (non-Linux) the folder is skipped.
"""
import importlib.util
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

collect_ignore_glob = [] if importlib.util.find_spec("triton") else ["test_*.py"]
