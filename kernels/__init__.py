"""unmask.kernels: the op interface (``ops``), its PyTorch specification and its Triton fast paths."""
