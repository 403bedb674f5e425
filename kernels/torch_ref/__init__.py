"""Pure-PyTorch specification of every op in ``unmask.kernels.ops`` (also the CPU path)."""
