"""Quantized weight format: what ``ops.linear`` and ``ops.fused_moe`` accept in place of a dense weight.

Legend: E experts (absent for a plain linear), N output features, K input features, G group size.

Three formats, all weight-only (activations stay in the model dtype), symmetric, with fp32 scales
[.., N, K/G] (G input features share a scale; G = K is per output channel, scales [.., N, 1]), all dequantized
as ``W[n, k] = float32(q[n, k]) · scale[n, k // G]`` computed in fp32 (the one definition every path follows):
- ``fp8``: q float8_e4m3fn [.., N, K]; load-time: per channel, absmax / 448.
- ``int8``: q int8 [.., N, K]; load-time: per channel, absmax / 127.
- ``int4``: q in [-8, 7] stored as q + 8 in nibbles, uint8 [.., N, K/2] (low nibble: even k, high: odd k);
  load-time: G = 128 (64 or 32 when K is not a multiple of 128), absmax / 7.
compressed-tensors checkpoints (float-quantized FP8, pack-quantized W8A16 / W4A16 with channel or group
scales) map onto these layouts without dequantizing (``server/models/compressed.py``).
A tensor-parallel shard holds the full weight's values and scales, sliced (``server/models/quantize.py``): a
row-parallel shard (K/N of the input features) is quantized with the whole rows' absmax (``quantize(amax=)``) and,
for int4, the G of the full K; its per-channel scales are then [.., N, 1] with G = K/N, the shard's own K.
"""
from __future__ import annotations

import dataclasses

import torch

FORMATS = ("fp8", "int8", "int4")
INT4_GROUP = 128
_FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max


@dataclasses.dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A quantized [.., N, K] weight: data, scales, format, group size (see the module docstring)."""

    data: torch.Tensor
    """fp8: float8_e4m3fn [.., N, K]; int8: int8 [.., N, K]; int4: uint8 [.., N, K/2] (two nibbles each)."""
    scales: torch.Tensor
    """fp32 [.., N, K/G]."""
    fmt: str
    """'fp8', 'int8' or 'int4'."""
    group_size: int
    """Input features sharing one scale (K: per output channel)."""

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ValueError(f"quantization format {self.fmt!r}: expected one of {', '.join(FORMATS)}")

    @property
    def shape(self) -> torch.Size:
        """The dense weight's shape [.., N, K]."""
        k = self.data.shape[-1] * (2 if self.fmt == "int4" else 1)
        return torch.Size((*self.data.shape[:-1], k))

    @property
    def device(self) -> torch.device:
        return self.data.device

    def dim(self) -> int:
        return self.data.dim()

    @property
    def nbytes(self) -> int:
        """Resident bytes: data plus scales."""
        return self.data.numel() * self.data.element_size() + self.scales.numel() * self.scales.element_size()

    def __getitem__(self, e: int) -> "QuantizedWeight":
        """Expert ``e`` of a stacked [E, N, K] weight, as a [N, K] QuantizedWeight (views, no copy)."""
        return QuantizedWeight(self.data[e], self.scales[e], self.fmt, self.group_size)

    def rows(self, lo: int, hi: int) -> "QuantizedWeight":
        """Output rows lo:hi of a [N, K] weight (views)."""
        return QuantizedWeight(self.data[lo:hi], self.scales[lo:hi], self.fmt, self.group_size)

    def int_values(self) -> torch.Tensor:
        """q as int8 [.., N, K] (int8, int4) or the fp8 codes as float32 (fp8)."""
        if self.fmt == "int4":
            lo = (self.data & 0xF).to(torch.int8) - 8
            hi = (self.data >> 4).to(torch.int8) - 8
            return torch.stack((lo, hi), dim=-1).flatten(-2)
        return self.data.float() if self.fmt == "fp8" else self.data

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dense weight [.., N, K]: fp32(q) · scale in fp32, then cast to ``dtype``."""
        s = self.scales.float().repeat_interleave(self.group_size, dim=-1)  # [.., N, K]
        return (self.int_values().float() * s).to(dtype)


def int4_group(k: int) -> int:
    """INT4 group size for K input features: 128, else the largest of 64/32 dividing K."""
    for g in (INT4_GROUP, 64, 32):
        if k % g == 0:
            return g
    raise ValueError(f"int4 needs K divisible by 32, got K={k}")


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """q int [.., N, K] in [-8, 7] -> uint8 [.., N, K/2] (low nibble: even k)."""
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def absmax(w: torch.Tensor, fmt: str, group_size: int | None = None) -> torch.Tensor:
    """Dense [.., N, K] -> fp32 absmax of each block of values sharing one scale: [.., N, 1] per output channel
    (fp8, int8), [.., N, K/G] per group (int4; G = ``group_size``, else ``int4_group(K)``)."""
    w32 = w.detach().float().abs()
    if fmt != "int4":
        return w32.amax(-1, keepdim=True)
    k = w32.shape[-1]
    g = group_size or int4_group(k)
    if k % g:
        raise ValueError(f"int4 group size {g} does not divide K={k}")
    return w32.unflatten(-1, (k // g, g)).amax(-1)


def quantize(w: torch.Tensor, fmt: str, group_size: int | None = None,
             amax: torch.Tensor | None = None) -> QuantizedWeight:
    """Dense [.., N, K] (any float dtype) -> QuantizedWeight on the same device (round to nearest, symmetric).
    ``group_size``: int4 only, G (default ``int4_group(K)``). ``amax``: the fp32 absmax that sets the scales,
    shaped as ``absmax`` returns it (default: this ``w``'s own); a row-parallel shard of a per-channel weight passes
    the whole rows' absmax, so its values and scales are the full weight's, sliced."""
    if fmt not in FORMATS:
        raise ValueError(f"quantization {fmt!r}: expected one of {', '.join(FORMATS)}")
    w32 = w.detach().float()
    k = w32.shape[-1]
    amax = absmax(w32, fmt, group_size) if amax is None else amax
    if fmt == "int4":
        g = k // amax.shape[-1]
        grouped = w32.unflatten(-1, (k // g, g))  # [.., N, K/G, G]
        scale = (amax / 7.0).clamp_min(1e-12)  # [.., N, K/G]
        q = torch.round(grouped / scale[..., None]).clamp(-8, 7).flatten(-2)
        return QuantizedWeight(pack_int4(q).contiguous(), scale.contiguous(), fmt, g)
    amax = amax.clamp_min(1e-12)  # [.., N, 1]
    if fmt == "int8":
        scale = amax / 127.0
        q = torch.round(w32 / scale).clamp(-127, 127).to(torch.int8)
    else:
        scale = amax / _FP8_MAX
        q = (w32 / scale).clamp(-_FP8_MAX, _FP8_MAX).to(torch.float8_e4m3fn)
    return QuantizedWeight(q.contiguous(), scale.contiguous(), fmt, k)


def weight_nbytes(w) -> int:
    """Resident bytes of a dense tensor or a QuantizedWeight."""
    return w.nbytes if isinstance(w, QuantizedWeight) else w.numel() * w.element_size()
