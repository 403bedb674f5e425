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
A tensor-parallel rank reads its slice as stored (``CompressedReader.quantized``): rows slice the values, packed words
and scale rows; a row-parallel K/N slice keeps channel scales [N, 1] whole and slices group scales along K/G (K/N
must be a multiple of G), unpacking only the words that span its columns and cutting them exactly at the split.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from unmask.kernels.quant import QuantizedWeight, pack_int4
from unmask.server.config import CheckpointError, UnsupportedConfigError

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
    """Over a plain tensor reader (the loader's ``_Reader``): ``names`` are the logical HF names (``x.weight`` for
    ``x.weight_packed`` + side tensors), ``quantized(name)`` a QuantizedWeight, ``get(name)`` a dense tensor
    (dequantized in fp32 for a quantized tensor the model keeps dense, such as a quantized router); both take a
    tensor-parallel rank's slice as the plain reader does (``dim``, row ``parts``)."""

    def __init__(self, reader, scheme: Scheme, device: torch.device):
        self.reader, self.scheme, self.device = reader, scheme, device
        self.names = logical_names(reader.files)

    @property
    def tp(self):
        return self.reader.tp

    def is_quantized(self, name: str) -> bool:
        return f"{name}_scale" in self.reader.files

    def get(self, name: str, dim: int | None = None) -> torch.Tensor:
        if self.is_quantized(name):
            return self.quantized(name, dim).dequantize(torch.float32)
        return self.reader.get(name, dim)

    def get_parts(self, name: str, rows: list[int]) -> torch.Tensor:
        if self.is_quantized(name):
            return self.quantized(name, parts=rows).dequantize(torch.float32)
        return self.reader.get_parts(name, rows)

    def close(self) -> None:
        self.reader.close()

    def quantized(self, name: str, dim: int | None = None, parts: list[int] | None = None) -> QuantizedWeight:
        """Stored tensor ``name`` [N, K] -> QuantizedWeight as stored: whole (``dim`` None), this rank's rows (``dim``
        0, or its rows of each of ``parts``) with their scale rows, or its K/N columns (``dim`` 1, row-parallel):
        channel scales [N, 1] whole, group scales [N, K/G] sliced along K/G (K/N must be a multiple of G), packed
        words unpacked around the split and cut at it exactly."""
        s, r = self.scheme, self.reader
        k = int(r.get(f"{name}_shape")[1]) if s.packed else r.shape(name)[1]
        if dim == 1:
            scales, data = self._columns(name, k)
        else:
            rows = (lambda t: r.get_parts(t, parts)) if parts is not None else (lambda t: r.get(t, dim))
            scales = rows(f"{name}_scale")
            data = unpack_int32(rows(f"{name}_packed"), s.bits)[:, :k] if s.packed else rows(name)  # [N, K]
        n, k = data.shape
        if s.fmt == "fp8" and data.dtype != torch.float8_e4m3fn:
            raise CheckpointError(f"tensor {name!r} has dtype {data.dtype}, expected float8_e4m3fn")
        if scales.dim() != 2 or scales.shape[0] != n or k % scales.shape[1]:
            raise CheckpointError(f"tensor {name}_scale has shape {list(scales.shape)}, which does not fit [{n}, {k}]")
        if s.packed:
            data = pack_int4(data) if s.fmt == "int4" else data.to(torch.int8)
        return QuantizedWeight(data.contiguous().to(self.device), scales.float().contiguous().to(self.device), s.fmt,
                               k // scales.shape[1])

    def _columns(self, name: str, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's K/N columns of stored tensor ``name`` -> (scales [N, 1] or [N, K/N/G], values [N, K/N]: fp8
        codes, or the unpacked ints of the words spanning them)."""
        s, r, tp = self.scheme, self.reader, self.reader.tp
        groups = r.shape(f"{name}_scale")[-1]
        if k % groups:
            raise CheckpointError(f"tensor {name}_scale has {groups} columns, which does not divide K = {k}")
        g = k // groups
        lo, hi = tp.group_chunk(k, g if groups > 1 else 1, f"tensor {name!r}")
        if s.fmt == "int4" and (hi - lo) % 2:
            raise UnsupportedConfigError(f"tensor {name!r}: tensor parallel size {tp.size} splits its K = {k} input "
                                         f"features into {hi - lo} per rank, an odd number (int4 packs pairs)")
        scales = r.get(f"{name}_scale") if groups == 1 else r.span(f"{name}_scale", 1, lo // g, hi // g)
        if not s.packed:
            return scales, r.span(name, 1, lo, hi)
        per = 32 // s.bits
        first = lo // per
        words = r.span(f"{name}_packed", 1, first, -(-hi // per))
        return scales, unpack_int32(words, s.bits)[:, lo - first * per:hi - first * per]


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
