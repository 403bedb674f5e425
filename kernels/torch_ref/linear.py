"""The projections of every layer and the LM head: y = x · Wᵀ with W stored as [out, in] (HF layout), dense or a
``QuantizedWeight`` (``kernels/quant.py``).

Legend: M rows, K input features, N output features.
"""
import torch

from unmask.kernels.quant import QuantizedWeight

DEQUANT_ROWS = 4096
"""Output rows dequantized at a time by the reference path (bounds its temporary to DEQUANT_ROWS·K values)."""


def linear(x: torch.Tensor, weight) -> torch.Tensor:
    """x [M, K], weight [N, K] (dense or QuantizedWeight) -> x @ weight.T [M, N] in x.dtype (torch's GEMM:
    cuBLAS on CUDA)."""
    if isinstance(weight, QuantizedWeight):
        return quantized_linear(x, weight)
    return x @ weight.t()


def quantized_linear(x: torch.Tensor, w: QuantizedWeight) -> torch.Tensor:
    """x @ dequantize(w).T [M, N] in x.dtype: per-channel int8 with fp32 rows on CPU through torch's weight-packed
    int8 matmul (``torch._weight_int8pack_mm``: q·x in fp32, times the channel scale); every other case
    dequantizes DEQUANT_ROWS output rows at a time into x.dtype and multiplies. float64 activations (the exact-mode oracle
    setting) dequantize the whole weight: exactly x @ dequantize(w, float64).T, bit for bit (a BLAS GEMM's
    blocking, hence its rounding, depends on N)."""
    n = w.shape[0]
    if (w.fmt == "int8" and w.group_size == w.shape[1] and x.device.type == "cpu" and x.dtype == torch.float32
            and x.shape[0] > 0):
        return torch._weight_int8pack_mm(x.contiguous(), w.data, w.scales[:, 0].contiguous())
    if n <= DEQUANT_ROWS or x.dtype == torch.float64:
        return x @ w.dequantize(x.dtype).t()
    out = torch.empty((x.shape[0], n), dtype=x.dtype, device=x.device)  # [M, N]
    for lo in range(0, n, DEQUANT_ROWS):
        hi = min(n, lo + DEQUANT_ROWS)
        out[:, lo:hi] = x @ w.rows(lo, hi).dequantize(x.dtype).t()
    return out
