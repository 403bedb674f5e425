"""GEMM with a quantized weight (``kernels/quant.py``): the specification of ``triton_ops/qlinear.py`` and the CPU path.

Legend: M rows, K input features, N output features.
"""
import torch

from unmask.kernels.quant import QuantizedWeight

DEQUANT_ROWS = 4096
"""Output rows dequantized at a time by the reference path (bounds its temporary to DEQUANT_ROWS·K values)."""
INT8PACK_MAX_ROWS = 8
"""Most rows sent to ``torch._weight_int8pack_mm`` (fp32): measured on the 2-core CPU at K=512, N=1408 it is 1.4×
slower than the fp32 GEMM at 32 rows and 35× slower at 1300 (a decode kernel); dequantizing is faster there."""


def quantized_linear(x: torch.Tensor, w: QuantizedWeight) -> torch.Tensor:
    """x @ dequantize(w).T [M, N] in x.dtype: per-channel int8 with at most INT8PACK_MAX_ROWS fp32 rows on CPU
    through torch's weight-packed int8 matmul (``torch._weight_int8pack_mm``: q·x, times the channel scale); every
    other case dequantizes DEQUANT_ROWS output rows at a time into x.dtype and multiplies. float64 activations
    (the exact-mode oracle setting) dequantize the whole weight: exactly x @ dequantize(w, float64).T, bit for
    bit (a BLAS GEMM's blocking, hence its rounding, depends on N)."""
    n = w.shape[0]
    if (w.fmt == "int8" and w.group_size == w.shape[1] and x.device.type == "cpu" and x.dtype == torch.float32
            and 0 < x.shape[0] <= INT8PACK_MAX_ROWS):
        return torch._weight_int8pack_mm(x.contiguous(), w.data, w.scales[:, 0].contiguous())
    if n <= DEQUANT_ROWS or x.dtype == torch.float64:
        return x @ w.dequantize(x.dtype).t()
    out = torch.empty((x.shape[0], n), dtype=x.dtype, device=x.device)  # [M, N]
    for lo in range(0, n, DEQUANT_ROWS):
        hi = min(n, lo + DEQUANT_ROWS)
        out[:, lo:hi] = x @ w.rows(lo, hi).dequantize(x.dtype).t()
    return out
