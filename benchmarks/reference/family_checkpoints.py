"""Tiny random LLaDA2 (``LLaDA2MoeModelLM``) and Dream (``DreamModel``) checkpoints in their exact HF formats:
config keys of the published configuration classes, literal HF tensor names and shapes (written independently of
the loader's name tables), optional sharding with ``model.safetensors.index.json``."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from benchmarks.reference.checkpoints import EOS_ID, MASK_ID, MOE_SPECIALS, VOCAB, save_weights, write_tokenizer

DREAM_SPECIALS = {"<|mask|>": MASK_ID, "<|endoftext|>": EOS_ID, "<|im_end|>": 93, "<|im_start|>": 92,
                  "<|beginoftext|>": 91, "<|dummy|>": 90}


def llada2_config(d=32, layers=3, heads=4, kv_heads=2, head_dim=8, experts=8, top_k=2, n_group=4, topk_group=2,
                  moe_inter=16, inter=48, shared=1, dense_layers=1, rotary=0.5, vocab=VOCAB) -> dict:
    return {"architectures": ["LLaDA2MoeModelLM"], "model_type": "llada2_moe", "vocab_size": vocab, "hidden_size": d,
            "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "head_dim": head_dim, "hidden_act": "silu", "use_qkv_bias": False,
            "use_bias": False, "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "max_position_embeddings": 512,
            "rope_theta": 600000.0, "rope_scaling": None, "partial_rotary_factor": rotary, "num_experts": experts,
            "num_shared_experts": shared, "num_experts_per_tok": top_k, "n_group": n_group, "topk_group": topk_group,
            "moe_intermediate_size": moe_inter, "first_k_dense_replace": dense_layers, "use_qk_norm": True,
            "moe_router_enable_expert_bias": True, "routed_scaling_factor": 2.5, "score_function": "sigmoid",
            "norm_topk_prob": True, "num_nextn_predict_layers": 0, "pad_token_id": EOS_ID, "eos_token_id": EOS_ID}


def dream_config(d=32, layers=2, heads=4, kv_heads=2, inter=48, vocab=VOCAB) -> dict:
    return {"architectures": ["DreamModel"], "model_type": "Dream", "vocab_size": vocab, "hidden_size": d,
            "intermediate_size": inter, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "hidden_act": "silu", "max_position_embeddings": 512,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_scaling": None, "tie_word_embeddings": False,
            "use_sliding_window": False, "sliding_window": None, "attention_dropout": 0.0,
            "mask_token_id": MASK_ID, "pad_token_id": EOS_ID, "bos_token_id": 91, "eos_token_id": EOS_ID}


def _mlp(p: str, d: int, i: int, r) -> dict[str, torch.Tensor]:
    return {p + "gate_proj.weight": r(i, d), p + "up_proj.weight": r(i, d), p + "down_proj.weight": r(d, i)}


def llada2_tensors(cfg: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    d, v, hd = cfg["hidden_size"], cfg["vocab_size"], cfg["head_dim"]
    h, hk, e = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_experts"]
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64) * 0.3  # noqa: E731
    t = {"model.word_embeddings.weight": r(v, d), "model.norm.weight": 1 + r(d), "lm_head.weight": r(v, d)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        t.update({p + "input_layernorm.weight": 1 + r(d), p + "post_attention_layernorm.weight": 1 + r(d),
                  p + "attention.query_key_value.weight": r((h + 2 * hk) * hd, d),
                  p + "attention.dense.weight": r(d, h * hd), p + "attention.query_layernorm.weight": 1 + r(hd),
                  p + "attention.key_layernorm.weight": 1 + r(hd)})
        if n < cfg["first_k_dense_replace"]:
            t.update(_mlp(p + "mlp.", d, cfg["intermediate_size"], r))
            continue
        t.update({p + "mlp.gate.weight": r(e, d), p + "mlp.gate.expert_bias": r(e)})
        for j in range(e):
            t.update(_mlp(f"{p}mlp.experts.{j}.", d, cfg["moe_intermediate_size"], r))
        if cfg["num_shared_experts"]:
            t.update(_mlp(p + "mlp.shared_experts.", d, cfg["moe_intermediate_size"] * cfg["num_shared_experts"], r))
    return t


def dream_tensors(cfg: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    d, v = cfg["hidden_size"], cfg["vocab_size"]
    hd = d // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64) * 0.3  # noqa: E731
    t = {"model.embed_tokens.weight": r(v, d), "model.norm.weight": 1 + r(d), "lm_head.weight": r(v, d)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        t.update({p + "input_layernorm.weight": 1 + r(d), p + "post_attention_layernorm.weight": 1 + r(d),
                  p + "self_attn.q_proj.weight": r(d, d), p + "self_attn.q_proj.bias": r(d),
                  p + "self_attn.k_proj.weight": r(kv, d), p + "self_attn.k_proj.bias": r(kv),
                  p + "self_attn.v_proj.weight": r(kv, d), p + "self_attn.v_proj.bias": r(kv),
                  p + "self_attn.o_proj.weight": r(d, d)})
        t.update(_mlp(p + "mlp.", d, cfg["intermediate_size"], r))
    return t


FAMILIES = {"llada2": (llada2_config, llada2_tensors, MOE_SPECIALS), "dream": (dream_config, dream_tensors, DREAM_SPECIALS)}


def write_family_checkpoint(path: Path, family: str, seed: int = 0, shards: int = 1, **dims) -> Path:
    """Write a random ``family`` ('llada2' or 'dream') checkpoint in HF format, float64 weights."""
    make_cfg, make_tensors, specials = FAMILIES[family]
    path.mkdir(parents=True, exist_ok=True)
    cfg = make_cfg(**dims)
    tensors = make_tensors(cfg, torch.Generator().manual_seed(seed))
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    write_tokenizer(path, specials)
    return save_weights(path, tensors, shards)
