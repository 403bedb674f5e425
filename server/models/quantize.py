"""Quantized weights at load time: which parameters, how their HF tensors become one ``QuantizedWeight``.

Every linear layer inside the blocks (fused q/k/v, o, gate/up, down) and every MoE expert stack is quantized;
embeddings, norms and the MoE router stay in the model dtype, the LM head only with ``quantize_lm_head``.
Each HF tensor is quantized on its own as it is read (on the target device), then the parts are concatenated
(fused rows) or stacked (experts): per-row scales make that identical to quantizing the fused matrix, and the
dense model never exists in full. A compressed-tensors checkpoint (``compressed.py``) hands over its parts
already quantized. The model keeps the QuantizedWeight as a plain attribute in place of the parameter, so the
layers pass it to ``ops.linear`` / ``ops.fused_moe`` unchanged.

Tensor parallelism (``parallel.py``): a rank reads only its slice of each HF tensor and ends up with exactly the
one-device QuantizedWeight's slice. Column-parallel slices (rows) are quantized as read: per-row and per-group scales
do not depend on the other rows. A row-parallel slice [N, K/N] (input features) is quantized with the one-device
scales: per channel (fp8, int8) from the absmax over the whole row, this rank's partial absmax combined over the
ranks by an all-reduce(MAX) (``TensorParallel.row_absmax``), the scales [N, 1] then held by every rank (group size
K/N, the shard's own K); int4 with G = int4_group(K) of the full K, so K/N must be a multiple of G, else
UnsupportedConfigError naming the tensor, K, N and G (``TensorParallel.group_chunk``).
"""
from __future__ import annotations

import torch
from torch import nn

from unmask.kernels.quant import FORMATS, QuantizedWeight, absmax, int4_group, quantize, weight_nbytes

ROUTER_LEAVES = ("gate", "router")
"""Parameter leaves kept dense although they are matrices: MoE routers (routing is precision-sensitive)."""


def check_format(fmt: str | None) -> str | None:
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"quantization={fmt!r}: expected one of {', '.join(FORMATS)}")
    return fmt


def targets(model: nn.Module, quantize_lm_head: bool) -> set[str]:
    """Internal names of the parameters to quantize."""
    out = set()
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if name.startswith("blocks.") and p.dim() >= 2 and leaf not in ROUTER_LEAVES:
            out.add(name)
        elif name == "lm_head" and quantize_lm_head:
            out.add(name)
    return out


def set_weight(model: nn.Module, name: str, value) -> None:
    """Put ``value`` (a dense tensor -> a frozen Parameter; a QuantizedWeight -> a plain attribute) at ``name``."""
    owner, _, leaf = name.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    if isinstance(value, QuantizedWeight):
        module._parameters.pop(leaf, None)
        setattr(module, leaf, value)
    else:
        module.__dict__.pop(leaf, None)
        module._parameters[leaf] = nn.Parameter(value, requires_grad=False)


def cat_rows(parts: list[QuantizedWeight]) -> QuantizedWeight:
    """Row-wise concatenation of [Nᵢ, K] weights of one format and group size -> [ΣNᵢ, K]."""
    first = parts[0]
    if any(p.fmt != first.fmt or p.group_size != first.group_size for p in parts):
        raise ValueError("fused tensors must share one quantization format and group size")
    if len(parts) == 1:
        return first
    return QuantizedWeight(torch.cat([p.data for p in parts]), torch.cat([p.scales for p in parts]), first.fmt,
                           first.group_size)


def stack(parts: list[QuantizedWeight]) -> QuantizedWeight:
    """[N, K] weights of the E experts -> one [E, N, K] QuantizedWeight."""
    return QuantizedWeight(torch.stack([p.data for p in parts]), torch.stack([p.scales for p in parts]),
                           parts[0].fmt, parts[0].group_size)


class LoadTimeQuantizer:
    """Reads a dense HF tensor (all of it, or a tensor-parallel rank's slice: ``reader`` is the loader's ``_Reader``)
    and quantizes it on ``device`` (``quantized`` is what the loader calls per part)."""

    def __init__(self, reader, fmt: str, device: torch.device, dtype: torch.dtype):
        self.reader, self.fmt, self.device, self.dtype = reader, fmt, device, dtype

    def _read(self, name: str, dim: int | None = None, parts: list[int] | None = None,
              rank: int | None = None) -> torch.Tensor:
        # through the model dtype first: quantizing a bf16 model's weights starts from the bf16 values
        t = self.reader.get_parts(name, parts) if parts is not None else self.reader.get(name, dim, rank)
        return t.to(self.device, self.dtype)

    def quantized(self, name: str, dim: int | None = None, parts: list[int] | None = None) -> QuantizedWeight:
        """HF tensor ``name`` [N, K] -> QuantizedWeight of the whole tensor (``dim`` None), of this rank's rows
        (``dim`` 0, or its rows of each of ``parts``), or of its K/N columns (``dim`` 1, row-parallel) with the
        full weight's scales: per-channel ones from the whole rows' absmax, int4 groups of G = int4_group(K)."""
        w = self._read(name, dim, parts)
        if dim != 1:
            return quantize(w, self.fmt)
        tp = self.reader.tp
        k = w.shape[-1] * tp.size
        if self.fmt == "int4":
            g = int4_group(k)
            tp.group_chunk(k, g, f"int4 tensor {name!r}")
            return quantize(w, self.fmt, group_size=g)
        amax = tp.row_absmax(absmax(w, self.fmt), lambda r: absmax(self._read(name, dim, rank=r), self.fmt))
        return quantize(w, self.fmt, amax=amax)


def quantized_weights(model: nn.Module) -> dict[str, QuantizedWeight]:
    """Internal name -> every QuantizedWeight of ``model`` (plain attributes in place of parameters)."""
    return {f"{mod_name}.{leaf}".lstrip("."): w for mod_name, mod in model.named_modules()
            for leaf, w in vars(mod).items() if isinstance(w, QuantizedWeight)}


def dequantized_copy(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Internal name -> dense ``dtype`` tensor for every QuantizedWeight of ``model`` (for references and tests)."""
    return {name: w.dequantize(dtype) for name, w in quantized_weights(model).items()}


def dequantize_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Replace every QuantizedWeight of ``model`` by its dense ``dtype`` weight, in place; returns the model."""
    for name, w in dequantized_copy(model, dtype).items():
        set_weight(model, name, w)
    return model


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Resident bytes of the model's weights: 'quantized' (QuantizedWeights), 'dense' (parameters), 'total'."""
    quant = sum(weight_nbytes(w) for w in quantized_weights(model).values())
    dense = sum(weight_nbytes(p) for p in model.parameters())
    return {"quantized": quant, "dense": dense, "total": quant + dense}
