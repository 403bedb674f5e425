"""Load a checkpoint directory exactly as published on the Hugging Face hub.

``config.json`` + ``model.safetensors`` or shards listed in ``model.safetensors.index.json``; tensor
names of LLADA-SPEC.md §3-4, no conversion step. Tensors are read one at a time and copied into
preallocated parameters (MoE experts straight into their stacked slot), so the weights never exist
twice in full. Any missing, unexpected or mis-shaped tensor raises ``CheckpointError`` naming it.
Quantized weights (``--quantization`` at load time, or a compressed-tensors checkpoint) are assembled per
parameter by ``quantize.py`` / ``compressed.py``: the model is built on the meta device and each weight is
allocated (or quantized) as it is read. A tensor-parallel rank (``tp``, ``parallel.py``) reads only its slice of
each split tensor (``safe_open(...).get_slice``) and only its experts under expert parallelism; quantized, it holds
exactly the one-device quantized weights' slices (values and scales; the rules are in ``quantize.py``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import safe_open

from unmask.server.config import CheckpointError, ModelConfig
from unmask.server.models import compressed, quantize
from unmask.server.models.parallel import TensorParallel
from unmask.server.models.registry import build_model, model_class


def weight_files(path: Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file holding it."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no 'weight_map' object")
        files = {name: path / fname for name, fname in weight_map.items()}
        for f in sorted(set(files.values())):
            if not f.is_file():
                raise CheckpointError(f"{f}: shard listed in model.safetensors.index.json is missing")
        return files
    single = path / "model.safetensors"
    if not single.is_file():
        raise CheckpointError(f"{path}: neither model.safetensors nor model.safetensors.index.json found")
    with safe_open(str(single), framework="pt") as f:
        return {name: single for name in f.keys()}


def _check_shape(name: str, got, want) -> None:
    if tuple(got) != tuple(want):
        raise CheckpointError(f"tensor {name!r} has shape {list(got)}, expected {list(want)}")


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.bfloat16,
               quantization: str | None = None, quantize_lm_head: bool = False, tp: TensorParallel | None = None):
    """Load ``path`` -> (model in eval mode without grads, ModelConfig). ``quantization``: None, 'fp8', 'int8' or
    'int4' (``quantize.py``); a compressed-tensors checkpoint is loaded quantized as stored. ``tp``: load one
    rank's shard (its slices only). Quantizing a row-parallel tensor to fp8/int8 at load time takes one
    all-reduce(MAX) of its row absmax in the process group (every rank loads the same tensors in the same order),
    or, without a process group, reads the other ranks' slices of it one at a time."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    cfg = ModelConfig.from_pretrained(path)
    cls = model_class(cfg)
    files = weight_files(path)
    scheme = compressed.scheme(path)
    if scheme is not None and quantization is not None:
        raise CheckpointError(f"{path}: the checkpoint is already quantized ({scheme.describe()}); drop --quantization")
    fmt = quantize.check_format(quantization)
    quantized = scheme is not None or fmt is not None
    if tp is not None:
        tp.check(cfg)
    model = build_model(cfg, device="meta" if quantized else device, dtype=dtype, init_std=None, tp=tp)
    params = dict(model.named_parameters())
    plain, fused, stacked = cls.hf_names(cfg), cls.hf_fused_names(cfg), cls.hf_stacked_names(cfg)
    expected = (set(plain.values()) | {n for parts in fused.values() for n, _ in parts}
                | {n for groups in stacked.values() for g in groups for n in g})
    names = files.keys() if scheme is None else compressed.logical_names(files)
    missing = sorted(expected - names)
    if missing:
        raise CheckpointError(f"{path}: missing tensor {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = sorted(names - expected)
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor {extra[0]!r}" + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""))
    reader = _Reader(files, tp)
    if tp is not None and tp.expert_parallel:  # whole experts per rank: only this rank's slots
        first, stop = tp.expert_range(cfg)
        stacked = {ours: groups[first:stop] for ours, groups in stacked.items()}
    split = tp.split_dim if tp is not None else (lambda ours: None)
    row_parts = (lambda ours: tp.row_parts(ours, cfg)) if tp is not None else (lambda ours: None)
    qnames, source = set(), None
    if quantized:
        reader, source, qnames = _quantized_setup(model, params, plain, fused, stacked, reader, scheme, fmt,
                                                  quantize_lm_head, torch.device(device), dtype)
    with torch.no_grad():
        for ours in sorted(qnames):
            qw = _assemble(ours, plain, fused, stacked, source, split(ours), row_parts(ours))
            _check_shape(ours, qw.shape, params[ours].shape)
            quantize.set_weight(model, ours, qw)
        plain = {k: v for k, v in plain.items() if k not in qnames}
        fused = {k: v for k, v in fused.items() if k not in qnames}
        stacked = {k: v for k, v in stacked.items() if k not in qnames}
        for ours, theirs in plain.items():
            parts = row_parts(ours)
            t = reader.get(theirs, split(ours)) if parts is None else reader.get_parts(theirs, parts)
            _check_shape(theirs, t.shape, params[ours].shape)
            params[ours].copy_(t)
        for ours, parts in fused.items():
            _fill_fused(params[ours], parts, reader, split(ours))
        for ours, groups in stacked.items():
            _fill_stacked(params[ours], groups, reader, split(ours))
    reader.close()
    model.eval().requires_grad_(False)
    return model, cfg


def _quantized_setup(model, params, plain, fused, stacked, reader, scheme, fmt, quantize_lm_head, device, dtype):
    """-> (reader of dense tensors, source of quantized parts, names to quantize); allocates every dense
    parameter of the meta-built model on ``device`` (``params`` is updated in place)."""
    if scheme is not None:
        reader = source = compressed.CompressedReader(reader, scheme, device)
        parts = {**{k: [v] for k, v in plain.items()}, **{k: [n for n, _ in v] for k, v in fused.items()},
                 **{k: [n for g in v for n in g] for k, v in stacked.items()}}
        qnames = {n for n in quantize.targets(model, True) if all(source.is_quantized(t) for t in parts[n])}
    else:
        source = quantize.LoadTimeQuantizer(reader, fmt, device, dtype)
        qnames = quantize.targets(model, quantize_lm_head)
    for name, p in list(params.items()):
        if name not in qnames:
            params[name] = torch.empty(p.shape, device=device, dtype=dtype)
            quantize.set_weight(model, name, params[name])
    return reader, source, qnames


def _assemble(ours, plain, fused, stacked, source, dim, parts):
    """The QuantizedWeight of internal parameter ``ours`` from its HF parts (one, fused rows, or experts), each
    this rank's slice: split along ``dim`` (None: whole), or its rows of each of ``parts`` (one tensor of q/k/v)."""
    if ours in plain:
        return source.quantized(plain[ours], dim, parts)
    if ours in fused:
        return quantize.cat_rows([source.quantized(n, dim) for n, _ in fused[ours]])
    return quantize.stack([quantize.cat_rows([source.quantized(n, dim) for n in names]) for names in stacked[ours]])


def _fill_fused(param: torch.Tensor, parts: list[tuple[str, int]], reader, dim: int | None = None) -> None:
    """param [R, C] (or a fused bias [R]) = cat(dim 0) of the named tensors, each checked against its expected
    [rows, C] ([rows]); with ``dim`` 0, each tensor's slice of this rank (rows / N)."""
    row = 0
    for name, rows in parts:
        t = reader.get(name, dim)
        rows = rows // reader.tp.size if dim == 0 else rows
        _check_shape(name, t.shape, (rows, *param.shape[1:]))
        param[row:row + rows].copy_(t)
        row += rows
    _check_shape(f"{[n for n, _ in parts]}", (row, *param.shape[1:]), param.shape)


def _fill_stacked(param: torch.Tensor, groups: list[list[str]], reader, dim: int | None = None) -> None:
    """param [E, R, C]: slot j = cat(dim 0) of the tensors named in groups[j] (each sliced along ``dim``)."""
    for j, names in enumerate(groups):
        row = 0
        for name in names:
            t = reader.get(name, dim)
            if t.dim() != 2 or t.shape[1] != param.shape[2] or row + t.shape[0] > param.shape[1]:
                raise CheckpointError(f"tensor {name!r} has shape {list(t.shape)}, which does not fit "
                                      f"expert slot [{param.shape[1]}, {param.shape[2]}]")
            param[j, row:row + t.shape[0]].copy_(t)
            row += t.shape[0]
        _check_shape(f"{names}", (row, param.shape[2]), param.shape[1:])


class _Reader:
    """Keeps each safetensors file open once while tensors are read from it; with ``tp``, reads a rank's slice."""

    def __init__(self, files: dict[str, Path], tp: TensorParallel | None = None):
        self.files, self.handles, self.tp = files, {}, tp

    def _handle(self, name: str):
        f = self.files[name]
        if f not in self.handles:
            try:
                self.handles[f] = safe_open(str(f), framework="pt")
            except Exception as exc:  # noqa: BLE001 - surface the file at fault
                raise CheckpointError(f"{f}: cannot read safetensors file ({exc})") from exc
        return self.handles[f]

    def shape(self, name: str) -> list[int]:
        """The shape of tensor ``name`` (from the file's header; nothing is read)."""
        return self._handle(name).get_slice(name).get_shape()

    def span(self, name: str, dim: int, lo: int, hi: int) -> torch.Tensor:
        """Indices [lo, hi) of tensor ``name`` along ``dim`` (only those are read)."""
        try:
            return self._handle(name).get_slice(name)[(slice(None),) * dim + (slice(lo, hi),)]
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{self.files[name]}: tensor {name!r} cannot be read ({exc})") from exc

    def get(self, name: str, dim: int | None = None, rank: int | None = None) -> torch.Tensor:
        """The tensor ``name``, or with ``dim`` only the chunk of this rank (or of ``rank``) along that dim."""
        if dim is not None:
            tp = self.tp if rank is None else dataclasses.replace(self.tp, rank=rank)
            return self.span(name, dim, *tp.chunk(self.shape(name)[dim], f"dim {dim} of tensor {name!r}"))
        try:
            return self._handle(name).get_tensor(name)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{self.files[name]}: tensor {name!r} cannot be read ({exc})") from exc

    def get_parts(self, name: str, rows: list[int]) -> torch.Tensor:
        """Tensor ``name`` whose dim 0 is parts of ``rows`` rows each: this rank's chunk of every part, in order."""
        part, parts, start = self._handle(name).get_slice(name), [], 0
        if part.get_shape()[0] != sum(rows):
            raise CheckpointError(f"tensor {name!r} has {part.get_shape()[0]} rows, expected {sum(rows)}")
        for n in rows:
            lo, hi = self.tp.chunk(n, f"a part of tensor {name!r}")
            parts.append(part[start + lo:start + hi])
            start += n
        return torch.cat(parts)

    def close(self) -> None:
        self.handles.clear()
