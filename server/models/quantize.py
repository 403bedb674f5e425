"""Quantized weights at load time: which parameters, how their HF tensors become one ``QuantizedWeight``.

Every linear layer inside the blocks (fused q/k/v, o, gate/up, down) and every MoE expert stack is quantized;
embeddings, norms and the MoE router stay in the model dtype, the LM head only with ``quantize_lm_head``.
Each HF tensor is quantized on its own as it is read (on the target device), then the parts are concatenated
(fused rows) or stacked (experts): per-row scales make that identical to quantizing the fused matrix, and the
dense model never exists in full. A compressed-tensors checkpoint (``compressed.py``) hands over its parts
already quantized. The model keeps the QuantizedWeight as a plain attribute in place of the parameter, so the
layers pass it to ``ops.linear`` / ``ops.fused_moe`` unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from unmask.kernels.quant import FORMATS, QuantizedWeight, quantize, weight_nbytes

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
    """Reads a dense HF tensor and quantizes it on ``device`` (``quantized`` is what the loader calls per part)."""

    def __init__(self, reader, fmt: str, device: torch.device, dtype: torch.dtype):
        self.reader, self.fmt, self.device, self.dtype = reader, fmt, device, dtype

    def quantized(self, name: str) -> QuantizedWeight:
        # through the model dtype first: quantizing a bf16 model's weights starts from the bf16 values
        return quantize(self.reader.get(name).to(self.device, self.dtype), self.fmt)


def dequantized_copy(model: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Internal name -> dense ``dtype`` tensor for every QuantizedWeight of ``model`` (for references and tests)."""
    return {f"{mod_name}.{leaf}".lstrip("."): w.dequantize(dtype)
            for mod_name, mod in model.named_modules() for leaf, w in vars(mod).items()
            if isinstance(w, QuantizedWeight)}


def dequantize_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Replace every QuantizedWeight of ``model`` by its dense ``dtype`` weight, in place; returns the model."""
    for name, w in dequantized_copy(model, dtype).items():
        set_weight(model, name, w)
    return model


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Resident bytes of the model's weights: 'quantized' (QuantizedWeights), 'dense' (parameters), 'total'."""
    quant = sum(weight_nbytes(w) for mod in model.modules() for w in vars(mod).values()
                if isinstance(w, QuantizedWeight))
    dense = sum(weight_nbytes(p) for p in model.parameters())
    return {"quantized": quant, "dense": dense, "total": quant + dense}
