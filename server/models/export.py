"""Write a model as a checkpoint directory in the exact HF format the loader reads (used by recipes/).

Expert stacks are split back into per-expert tensors; with ``shard_bytes`` the tensors are spread
over ``model-0000i-of-0000n.safetensors`` files plus ``model.safetensors.index.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from unmask.server.config import ModelConfig
from unmask.server.models.registry import model_class


def hf_state_dict(model: torch.nn.Module, cfg: ModelConfig, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """HF tensor name -> contiguous CPU tensor in ``dtype``."""
    cls, params = model_class(cfg), dict(model.named_parameters())
    out = {theirs: params[ours].detach().to("cpu", dtype).contiguous() for ours, theirs in cls.hf_names(cfg).items()}
    for ours, parts in cls.hf_fused_names(cfg).items():
        pieces = torch.split(params[ours].detach().to("cpu", dtype), [rows for _, rows in parts], dim=0)
        out.update({name: piece.contiguous() for (name, _), piece in zip(parts, pieces)})
    for ours, groups in cls.hf_stacked_names(cfg).items():
        stack = params[ours].detach().to("cpu", dtype)
        for j, names in enumerate(groups):
            parts = torch.split(stack[j], stack.shape[1] // len(names), dim=0)
            for name, part in zip(names, parts):
                out[name] = part.contiguous()
    return out


def save_hf_checkpoint(model, cfg: ModelConfig, config_json: dict, out_dir: str | Path,
                       dtype: torch.dtype = torch.bfloat16, shard_bytes: int | None = None) -> Path:
    """Write config.json and the weights of ``model`` into ``out_dir``; returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config_json, indent=2) + "\n")
    state = hf_state_dict(model, cfg, dtype)
    meta = {"format": "pt"}
    if shard_bytes is None:
        save_file(state, str(out / "model.safetensors"), metadata=meta)
        return out
    shards, cur, size = [], {}, 0
    for name, t in state.items():
        if cur and size + t.numel() * t.element_size() > shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = t
        size += t.numel() * t.element_size()
    shards.append(cur)
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata=meta)
        weight_map.update({name: fname for name in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out
