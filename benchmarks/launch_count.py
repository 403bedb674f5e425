"""Kernels one model forward issues on the GPU path, counted on CPU: the forward runs with the Triton backend
under ``TRITON_INTERPRET=1`` inside a dispatch mode that counts every aten compute op (views, allocations and
metadata ops excluded) and every Triton kernel launch. On a GPU each counted item is one kernel launch (a
GEMM may be one cuBLAS kernel or a few), so the per-layer figure is what the step's CUDA graph replays.

    TRITON_INTERPRET=1 python -m benchmarks.launch_count --family dense --layers 2 4

Prints the counts at each depth and the per-layer difference, by op.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.reference.checkpoints import write_checkpoint
from unmask.server.models.attention_meta import AttentionMetadata, packed_positions
from unmask.server.models.loader import load_model

NOT_KERNELS = {"view", "view_as", "_unsafe_view", "slice", "t", "transpose", "select", "expand", "reshape", "unsqueeze",
               "squeeze", "detach", "detach_", "alias", "as_strided", "empty", "empty_like", "empty_strided", "split",
               "split_with_sizes", "permute", "lift_fresh", "promote_types", "is_same_size", "_to_copy_meta"}
AS_ON_CUDA = {"_linear_pointwise": "matmul"}
"""CPU-only ops counted as what a CUDA run issues in their place: the CPU reference's fp32 oneDNN GEMM is a matmul."""


class _Counter(TorchDispatchMode):
    """Counts aten compute ops; Triton launches are counted by the patched interpreter entry point."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()
        self.in_kernel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        name = AS_ON_CUDA.get(name, name)
        if not self.in_kernel and name not in NOT_KERNELS:
            self.counts[f"aten.{name}"] += 1
        return func(*args, **(kwargs or {}))


def count_forward(family: str, layers: int, tokens: int) -> Counter:
    """Counter of kernels (aten.* and triton.*) for one cache-free forward of ``tokens`` tokens. Needs
    ``UNMASK_KERNELS=triton`` and ``TRITON_INTERPRET=1`` set before the Triton modules were first imported."""
    from triton.runtime.interpreter import InterpretedFunction

    with tempfile.TemporaryDirectory(prefix="unmask-launch-") as tmp:
        model, _ = load_model(write_checkpoint(Path(tmp), family, seed=0, layers=layers), dtype=torch.float32)
    counter = _Counter()
    original = InterpretedFunction.run

    def run(self, *args, **kwargs):  # one launch; the interpreter's own tensor traffic is not a kernel
        counter.counts[f"triton.{self.fn.__name__}"] += 1
        counter.in_kernel += 1
        try:
            return original(self, *args, **kwargs)
        finally:
            counter.in_kernel -= 1

    InterpretedFunction.run = run
    try:
        ids = torch.randint(0, 60, (tokens,))
        with torch.inference_mode(), counter:
            model(ids, packed_positions([tokens]), AttentionMetadata.packed([tokens]))
    finally:
        InterpretedFunction.run = original
    return counter.counts


def main() -> None:
    # before the first op call imports the Triton modules (they read TRITON_INTERPRET when decorated)
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("UNMASK_KERNELS", "triton")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=["dense", "moe"], default="dense")
    ap.add_argument("--layers", type=int, nargs=2, default=[2, 4])
    ap.add_argument("--tokens", type=int, default=40)
    args = ap.parse_args()
    a, b = (count_forward(args.family, n, args.tokens) for n in args.layers)
    for n, c in zip(args.layers, (a, b)):
        print(f"{n} layers: {sum(c.values())} kernels")
    per_layer = {k: (b[k] - a[k]) / (args.layers[1] - args.layers[0]) for k in sorted(set(a) | set(b))}
    per_layer = {k: v for k, v in per_layer.items() if v}
    print(f"per layer: {sum(per_layer.values()):g} kernels  " + ", ".join(f"{k} {v:g}" for k, v in per_layer.items()))
    once = {k: a[k] - per_layer.get(k, 0) * args.layers[0] for k in a}
    print("per forward, outside the layers: " + ", ".join(f"{k} {v:g}" for k, v in sorted(once.items()) if v))


if __name__ == "__main__":
    main()
