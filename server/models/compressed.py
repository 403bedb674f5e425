"""compressed-tensors checkpoints (what llm-compressor writes and vLLM users download), loaded quantized.

Detected from ``config.json``'s ``quantization_config`` (``quant_method: compressed-tensors``, status
``compressed``), one config group, symmetric weights:
- ``float-quantized`` 8-bit float weights (FP8 / FP8_DYNAMIC): ``<name>`` float8_e4m3fn [N, K] and
  ``<name>_scale`` [N, 1] (channel) or [N, K/G] (group) -> ``QuantizedWeight('fp8')`` as stored.
- ``pack-quantized`` 4- or 8-bit ints (W4A16, W8A16): ``<name>_packed`` int32 [N, K·bits/32] holding q + 2^(bits-1)
  in ``bits``-wide fields from the low bits up, ``<name>_scale``, ``<name>_shape`` -> ``QuantizedWeight('int4'
  | 'int8')`` (repacked to nibbles / int8 on load, never dequantized).
Activation quantization in the scheme (FP8_DYNAMIC's per-token inputs) is not applied: activations stay in the
model dtype (weight-only serving of the same weights). Anything else raises a CheckpointError naming it.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from unmask.kernels.quant import QuantizedWeight, pack_int4
from unmask.server.config import CheckpointError

_SIDE_SUFFIXES = ("weight_scale", "weight_shape", "weight_zero_point", "weight_global_scale", "input_scale")


@dataclasses.dataclass(frozen=True)
class Scheme:
    fmt: str
    """'fp8', 'int8' or 'int4'."""
    bits: int
    """Bits per weight value in the checkpoint."""
    packed: bool
    """Stored as ``weight_packed`` int32 words (pack-quantized)."""

    def describe(self) -> str:
        return f"compressed-tensors {'pack' if self.packed else 'float'}-quantized {self.fmt}"


def _unsupported(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: compressed-tensors checkpoint with {what} is not supported (FP8 float-quantized "
                           "and W8A16 / W4A16 pack-quantized, symmetric, one config group are)")


def scheme(path: Path) -> Scheme | None:
    """The checkpoint's quantization scheme, or None for a dense checkpoint."""
    raw = json.loads((Path(path) / "config.json").read_text()).get("quantization_config")
    if not raw:
        return None
    if raw.get("quant_method") != "compressed-tensors":
        raise CheckpointError(f"{path}: quantization_config.quant_method={raw.get('quant_method')!r} is not supported "
                              "(compressed-tensors is)")
    if raw.get("quantization_status", "compressed") != "compressed":
        raise _unsupported(path, f"quantization_status={raw.get('quantization_status')!r}")
    groups = list((raw.get("config_groups") or {}).values())
    if len(groups) != 1:
        raise _unsupported(path, f"{len(groups)} config groups")
    w, fmt = groups[0].get("weights") or {}, groups[0].get("format") or raw.get("format")
    if not w.get("symmetric", False) or w.get("actorder") not in (None, "static") or w.get("dynamic"):
        raise _unsupported(path, "asymmetric, activation-ordered or dynamic weights")
    if w.get("strategy") not in ("channel", "group"):
        raise _unsupported(path, f"weight strategy {w.get('strategy')!r}")
    bits, kind = w.get("num_bits"), w.get("type")
    if fmt == "float-quantized" and kind == "float" and bits == 8:
        return Scheme("fp8", 8, False)
    if fmt == "pack-quantized" and kind == "int" and bits in (4, 8):
        return Scheme("int4" if bits == 4 else "int8", bits, True)
    raise _unsupported(path, f"format {fmt!r}, {bits}-bit {kind} weights")


class CompressedReader:
    """Over a plain tensor reader: ``names`` are the logical HF names (``x.weight`` for ``x.weight_packed`` +
    side tensors), ``quantized(name)`` a QuantizedWeight, ``get(name)`` a dense tensor (dequantized in fp32 for
    a quantized tensor the model keeps dense, such as a quantized router)."""

    def __init__(self, reader, scheme: Scheme, device: torch.device):
        self.reader, self.scheme, self.device = reader, scheme, device
        self.names = logical_names(reader.files)

    def is_quantized(self, name: str) -> bool:
        return f"{name}_scale" in self.reader.files

    def get(self, name: str) -> torch.Tensor:
        if self.is_quantized(name):
            return self.quantized(name).dequantize(torch.float32)
        return self.reader.get(name)

    def close(self) -> None:
        self.reader.close()

    def quantized(self, name: str) -> QuantizedWeight:
        s = self.scheme
        scales = self.reader.get(f"{name}_scale").float()
        if s.packed:
            n, k = (int(v) for v in self.reader.get(f"{name}_shape").tolist())
            q = unpack_int32(self.reader.get(f"{name}_packed"), s.bits)[:, :k]  # [N, K] int16
            data = pack_int4(q) if s.fmt == "int4" else q.to(torch.int8)
        else:
            data = self.reader.get(name)
            n, k = data.shape
            if data.dtype != torch.float8_e4m3fn:
                raise CheckpointError(f"tensor {name!r} has dtype {data.dtype}, expected float8_e4m3fn")
        if scales.dim() != 2 or scales.shape[0] != n or k % scales.shape[1]:
            raise CheckpointError(f"tensor {name}_scale has shape {list(scales.shape)}, which does not fit [{n}, {k}]")
        return QuantizedWeight(data.contiguous().to(self.device), scales.contiguous().to(self.device), s.fmt,
                               k // scales.shape[1])


def unpack_int32(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """int32 [N, W] with 32/bits fields per word (field i at bits [bits·i, bits·(i+1)), value q + 2^(bits-1))
    -> q int16 [N, W·32/bits]."""
    per = 32 // bits
    shifts = torch.arange(per, dtype=torch.int32) * bits  # [per]
    fields = (packed[..., None] >> shifts) & ((1 << bits) - 1)  # [N, W, per]
    return fields.flatten(-2).to(torch.int16) - (1 << (bits - 1))


def logical_names(files: dict) -> set[str]:
    """HF tensor names as a dense checkpoint would have them."""
    out = set()
    for name in files:
        if name.endswith("weight_packed"):
            out.add(name[: -len("_packed")])
        elif not name.endswith(_SIDE_SUFFIXES):
            out.add(name)
    return out
