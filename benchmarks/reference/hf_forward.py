"""Independent float64 forwards of LLaDA2 (``modeling_llada2_moe.py``) and Dream (``modeling_dream.py``), written
from the published modeling code's semantics in its own layout ([B, H, L, Dh] tensors, 4-D additive masks, HF
tensor names read straight from the checkpoint, per-expert loops); nothing here uses unmask's model code or
kernels. The forward tests hold ``unmask``'s models to these to 1e-6.

Legend: B batch, L length, D hidden, H/Hk heads, Dh head dim, R rotary dims, E experts, K top-k, V vocab.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def load_tensors(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json, every tensor by HF name in float64) of a checkpoint directory (single file or shards)."""
    cfg = json.loads((path / "config.json").read_text())
    files = sorted(path.glob("*.safetensors"))
    tensors = {}
    for f in files:
        tensors.update({k: v.double() for k, v in load_file(str(f)).items()})
    return cfg, tensors


def _rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _rope(q, k, pos, dim, theta):
    """q [B, H, L, Dh], k [B, Hk, L, Dh]: HF default RoPE over the leading ``dim`` dims (partial rotary)."""
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    emb = torch.cat([pos[:, None] * inv[None], pos[:, None] * inv[None]], -1)  # [L, R]
    cos, sin = emb.cos(), emb.sin()

    def rot(x):
        xr, xp = x[..., :dim], x[..., dim:]
        return torch.cat([xr * cos + _rotate_half(xr) * sin, xp], -1)
    return rot(q), rot(k)


def _attend(q, k, v, mask):
    """q [B, H, L, Dh], k/v [B, Hk, L, Dh], mask [L, L] additive -> [B, L, H·Dh] (eager attention, repeat_kv)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    w = torch.softmax(q @ k.transpose(2, 3) * q.shape[-1] ** -0.5 + mask, dim=-1)
    o = w @ v  # [B, H, L, Dh]
    return o.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def _swiglu(x, t, p):
    return (torch.nn.functional.silu(x @ t[p + "gate_proj.weight"].T) * (x @ t[p + "up_proj.weight"].T)) @ t[p + "down_proj.weight"].T


def block_causal_mask(length: int, block: int) -> torch.Tensor:
    """[L, L] additive: 0 where key block <= query block, −inf elsewhere (the reference generate's tril of blocks)."""
    nb = -(-length // block)
    tri = torch.tril(torch.ones(nb, nb)).repeat_interleave(block, 0).repeat_interleave(block, 1)[:length, :length]
    return torch.where(tri > 0, 0.0, float("-inf")).double()


def _llada2_moe(x, t, p, c):
    """The published gate + moe_infer: sigmoid scores, group-limited top-k on biased scores, renormalised."""
    e, g, k = c["num_experts"], c["n_group"], c["num_experts_per_tok"]
    scores = torch.sigmoid(x @ t[p + "gate.weight"].T)  # [T, E]
    biased = scores + t[p + "gate.expert_bias"]
    gs = biased.view(-1, g, e // g).topk(2, dim=-1)[0].sum(-1)  # [T, G]
    gmask = torch.zeros_like(gs).scatter_(1, torch.topk(gs, c["topk_group"], dim=-1, sorted=False)[1], 1)
    smask = gmask[:, :, None].expand(-1, g, e // g).reshape(-1, e)
    _, idx = torch.topk(biased.masked_fill(~smask.bool(), float("-inf")), k, dim=-1)  # [T, K]
    w = scores.gather(1, idx)
    w = (w / (w.sum(-1, keepdim=True) + 1e-20) if k > 1 else w) * c["routed_scaling_factor"]
    out = torch.zeros_like(x)
    for tok in range(x.shape[0]):
        for j in range(k):
            out[tok] += w[tok, j] * _swiglu(x[tok:tok + 1], t, f"{p}experts.{int(idx[tok, j])}.")[0]
    if c.get("num_shared_experts"):
        out = out + _swiglu(x, t, p + "shared_experts.")
    return out


def llada2_logits(cfg: dict, t: dict[str, torch.Tensor], ids: torch.Tensor, block: int) -> torch.Tensor:
    """ids [B, L] -> logits [B, L, V]: LLaDA2MoeModelLM with the block-causal mask of block size ``block``."""
    b, n = ids.shape
    h, hk, hd, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["rms_norm_eps"]
    rot = int(hd * cfg.get("partial_rotary_factor", 1.0))
    pos, mask = torch.arange(n, dtype=torch.float64), block_causal_mask(n, block)
    x = t["model.word_embeddings.weight"][ids]  # [B, L, D]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        qkv = (_rms(x, t[p + "input_layernorm.weight"], eps) @ t[p + "attention.query_key_value.weight"].T)
        q, k, v = qkv.view(b, n, h + 2 * hk, hd).split([h, hk, hk], dim=-2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, L, Dh]
        q = _rms(q, t[p + "attention.query_layernorm.weight"], eps)
        k = _rms(k, t[p + "attention.key_layernorm.weight"], eps)
        q, k = _rope(q, k, pos, rot, cfg["rope_theta"])
        x = x + _attend(q, k, v, mask) @ t[p + "attention.dense.weight"].T
        y = _rms(x, t[p + "post_attention_layernorm.weight"], eps).reshape(b * n, -1)
        ffn = _swiglu(y, t, p + "mlp.") if i < cfg["first_k_dense_replace"] else _llada2_moe(y, t, p + "mlp.", cfg)
        x = x + ffn.view(b, n, -1)
    return _rms(x, t["model.norm.weight"], eps) @ t["lm_head.weight"].T


def dream_logits(cfg: dict, t: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """ids [B, L] -> logits [B, L, V] as Dream's ``generate`` uses them: the model's logits shifted right by one
    (position 0 keeps its own), bidirectional attention."""
    b, n = ids.shape
    h, hk, eps = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["rms_norm_eps"]
    hd = cfg["hidden_size"] // h
    pos, mask = torch.arange(n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64)
    x = t["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        y = _rms(x, t[p + "input_layernorm.weight"], eps)

        def proj(name, heads):
            w = y @ t[f"{p}self_attn.{name}_proj.weight"].T + t[f"{p}self_attn.{name}_proj.bias"]
            return w.view(b, n, heads, hd).transpose(1, 2)
        q, k = _rope(proj("q", h), proj("k", hk), pos, hd, cfg["rope_theta"])
        x = x + _attend(q, k, proj("v", hk), mask) @ t[p + "self_attn.o_proj.weight"].T
        x = x + _swiglu(_rms(x, t[p + "post_attention_layernorm.weight"], eps), t, p + "mlp.")
    logits = _rms(x, t["model.norm.weight"], eps) @ t["lm_head.weight"].T
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
