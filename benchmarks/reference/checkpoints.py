"""Tiny random checkpoints in the exact HF formats (written with literal HF tensor names, independently of
the loader's name tables) and their special-token ids, for the tests and the benchmarks."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, decoders

VOCAB = 96
MASK_ID, EOS_ID, EOT_ID, BOS_ID = 95, 94, 93, 92
SPECIALS = {"<|mdm_mask|>": MASK_ID, "<|endoftext|>": EOS_ID, "<|eot_id|>": EOT_ID, "<|startoftext|>": BOS_ID,
            "<|start_header_id|>": 91, "<|end_header_id|>": 90}
MOE_SPECIALS = {"<|mask|>": MASK_ID, "<|endoftext|>": EOS_ID, "<|role_end|>": EOT_ID, "<|startoftext|>": BOS_ID,
                "<role>": 91, "</role>": 90}


def dense_config(d=32, layers=2, heads=4, inter=48, vocab=VOCAB) -> dict:
    return {"architectures": ["LLaDAModelLM"], "model_type": "llada", "d_model": d, "n_layers": layers,
            "n_heads": heads, "n_kv_heads": heads, "mlp_hidden_size": inter, "mlp_ratio": 4, "vocab_size": vocab,
            "embedding_size": vocab, "max_sequence_length": 512, "rope": True, "rope_theta": 500000.0,
            "rope_full_precision": True, "layer_norm_type": "rms", "rms_norm_eps": 1e-5,
            "layer_norm_with_affine": True, "bias_for_layer_norm": False, "activation_type": "silu",
            "block_type": "llama", "include_bias": False, "include_qkv_bias": False, "attention_layer_norm": False,
            "weight_tying": False, "scale_logits": False, "input_emb_norm": False, "alibi": False,
            "multi_query_attention": None, "mask_token_id": MASK_ID, "eos_token_id": EOS_ID, "pad_token_id": EOS_ID}


def moe_config(d=32, layers=2, heads=4, experts=8, top_k=2, inter=16, vocab=VOCAB) -> dict:
    return {"architectures": ["LLaDAMoEModelLM"], "model_type": "llada", "hidden_size": d,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads,
            "num_experts": experts, "num_experts_per_tok": top_k, "expert_intermediate_size": inter,
            "dense_intermediate_size": 4 * d, "shared_expert_intermediate_size": None, "vocab_size": vocab,
            "max_position_embeddings": 512, "rope_theta": 50000.0, "rope_scaling": None,
            "partial_rotary_factor": 1.0, "rms_norm_eps": 1e-5, "qk_layernorm": True, "hidden_act": "silu",
            "attention_bias": False, "clip_qkv": None, "tie_word_embeddings": False, "norm_topk_prob": False,
            "moe_layer_freq": 1, "moe_router_enable_expert_bias": False, "eos_token_id": EOS_ID, "pad_token_id": EOS_ID}


def dense_tensors(cfg: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    d, i, v = cfg["d_model"], cfg["mlp_hidden_size"], cfg["embedding_size"]
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64) * 0.3  # noqa: E731
    t = {"model.transformer.wte.weight": r(v, d), "model.transformer.ln_f.weight": 1 + r(d),
         "model.transformer.ff_out.weight": r(v, d)}
    for n in range(cfg["n_layers"]):
        p = f"model.transformer.blocks.{n}."
        t.update({p + "attn_norm.weight": 1 + r(d), p + "q_proj.weight": r(d, d), p + "k_proj.weight": r(d, d),
                  p + "v_proj.weight": r(d, d), p + "attn_out.weight": r(d, d), p + "ff_norm.weight": 1 + r(d),
                  p + "ff_proj.weight": r(i, d), p + "up_proj.weight": r(i, d), p + "ff_out.weight": r(d, i)})
    return t


def moe_tensors(cfg: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    d, i, v, e = cfg["hidden_size"], cfg["expert_intermediate_size"], cfg["vocab_size"], cfg["num_experts"]
    hd = d // cfg["num_attention_heads"]
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64) * 0.3  # noqa: E731
    t = {"model.embed_tokens.weight": r(v, d), "model.norm.weight": 1 + r(d), "lm_head.weight": r(v, d)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        t.update({p + "input_layernorm.weight": 1 + r(d), p + "post_attention_layernorm.weight": 1 + r(d),
                  p + "self_attn.q_proj.weight": r(d, d), p + "self_attn.k_proj.weight": r(d, d),
                  p + "self_attn.v_proj.weight": r(d, d), p + "self_attn.o_proj.weight": r(d, d),
                  p + "self_attn.q_norm.weight": 1 + r(hd), p + "self_attn.k_norm.weight": 1 + r(hd),
                  p + "mlp.gate.weight": r(e, d)})
        for j in range(e):
            q = f"{p}mlp.experts.{j}."
            t.update({q + "gate_proj.weight": r(i, d), q + "up_proj.weight": r(i, d), q + "down_proj.weight": r(d, i)})
    return t


LLADA_TEMPLATE = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}")
MOE_TEMPLATE = (
    "{% for message in messages %}{{ '<role>' + message['role'] | upper + '</role>' + message['content']"
    " + '<|role_end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<role>ASSISTANT</role>' }}{% endif %}")


def write_tokenizer(path: Path, specials: dict[str, int]) -> None:
    """A byte-ish word-level tokenizer: ids 0..63 are printable characters, the specials on top."""
    chars = [chr(c) for c in range(32, 96)]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update(specials)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=" "))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(specials))
    data = json.loads(tok.to_str())
    assert all(t["id"] == specials[t["content"]] for t in data["added_tokens"])
    (path / "tokenizer.json").write_text(json.dumps(data))
    moe = "<|mask|>" in specials
    config = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
              "chat_template": MOE_TEMPLATE if moe else LLADA_TEMPLATE, "add_bos_token": False}
    (path / "tokenizer_config.json").write_text(json.dumps(config))


def write_checkpoint(path: Path, family: str = "dense", seed: int = 0, shards: int = 1, **dims) -> Path:
    """Write a random checkpoint in HF format (bf16-free: float64 weights so float64 tests are exact)."""
    path.mkdir(parents=True, exist_ok=True)
    cfg = dense_config(**dims) if family == "dense" else moe_config(**dims)
    gen = torch.Generator().manual_seed(seed)
    tensors = dense_tensors(cfg, gen) if family == "dense" else moe_tensors(cfg, gen)
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    write_tokenizer(path, SPECIALS if family == "dense" else MOE_SPECIALS)
    return save_weights(path, tensors, shards)


def save_weights(path: Path, tensors: dict[str, torch.Tensor], shards: int = 1) -> Path:
    """``model.safetensors``, or ``shards`` files named as the hub names them plus ``model.safetensors.index.json``."""
    names = list(tensors)
    if shards == 1:
        save_file(tensors, str(path / "model.safetensors"))
        return path
    weight_map = {}
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::shards]}
        save_file(part, str(path / fname))
        weight_map.update({n: fname for n in part})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path
