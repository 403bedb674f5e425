"""config.json contents of the tiny checkpoints, in the published LLaDA / LLaDA-MoE key sets.

Dense keys follow LLADA-SPEC.md §3 (LLaDA-8B-Instruct's config.json with tiny dimensions); MoE keys
follow §4 (LLaDA-MoE-7B-A1B's configuration class; no ``mask_token_id``: the mask is the tokenizer's
``<|mask|>``). LLaDA2 keys follow ``configuration_llada2_moe.py`` (LLaDA2.0-mini's config.json: block-causal MoE
with grouped sigmoid routing and expert bias, a shared expert, the first layer dense, partial rotary, QK-norm;
no ``mask_token_id`` either). ``vocab_size`` / ``embedding_size`` are rounded up past the tokenizer's last id, leaving
unused logit rows as the real checkpoints do.
"""
from __future__ import annotations

from tokenizers import Tokenizer

SIZES = {
    "llada": dict(d_model=96, n_layers=4, n_heads=4, mlp_hidden_size=384),
    "llada_moe": dict(hidden_size=96, num_hidden_layers=4, num_attention_heads=4, num_experts=8,
                      num_experts_per_tok=2, expert_intermediate_size=128),
    "llada2": dict(hidden_size=96, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                   num_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, moe_intermediate_size=128,
                   intermediate_size=384, num_shared_experts=1, first_k_dense_replace=1),
}
"""Default model dimensions per family (overridable from the trainer's command line)."""

MAX_POSITIONS = 512


def padded_vocab(tok: Tokenizer, multiple: int = 64) -> int:
    """Embedding rows: the tokenizer size rounded up to ``multiple``."""
    n = tok.get_vocab_size(with_added_tokens=True)
    return -(-n // multiple) * multiple


def dense_config(tok: Tokenizer, d_model: int, n_layers: int, n_heads: int, mlp_hidden_size: int) -> dict:
    """config.json of a dense LLaDAModelLM (every key of LLaDA-8B-Instruct's config)."""
    vocab = padded_vocab(tok)
    return {
        "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                     "AutoModel": "modeling_llada.LLaDAModelLM",
                     "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": d_model,
        "embedding_dropout": 0.0, "embedding_size": vocab, "eos_token_id": tok.token_to_id("<|endoftext|>"),
        "flash_attention": False, "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None,
        "init_device": "meta", "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False,
        "layer_norm_type": "rms", "layer_norm_with_affine": True, "mask_token_id": tok.token_to_id("<|mdm_mask|>"),
        "max_sequence_length": MAX_POSITIONS, "mlp_hidden_size": mlp_hidden_size, "mlp_ratio": 4,
        "model_type": "llada", "multi_query_attention": None, "n_heads": n_heads, "n_kv_heads": n_heads,
        "n_layers": n_layers, "pad_token_id": tok.token_to_id("<|endoftext|>"), "precision": "amp_bf16",
        "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True,
        "rope_theta": 10000.0, "scale_logits": False, "transformers_version": "4.46.3", "use_cache": False,
        "vocab_size": vocab, "weight_tying": False,
    }


def moe_config(tok: Tokenizer, hidden_size: int, num_hidden_layers: int, num_attention_heads: int,
               num_experts: int, num_experts_per_tok: int, expert_intermediate_size: int) -> dict:
    """config.json of an LLaDAMoEModelLM (the keys of LLaDA-MoE's configuration class)."""
    return {
        "architectures": ["LLaDAMoEModelLM"], "model_type": "llada",
        "auto_map": {"AutoConfig": "configuration_lladamoe.LLaDAMoEConfig",
                     "AutoModel": "modeling_lladamoe.LLaDAMoEModel",
                     "AutoModelForCausalLM": "modeling_lladamoe.LLaDAMoEModelLM"},
        "vocab_size": padded_vocab(tok), "hidden_size": hidden_size,
        "dense_intermediate_size": 4 * hidden_size, "expert_intermediate_size": expert_intermediate_size,
        "shared_expert_intermediate_size": None, "num_hidden_layers": num_hidden_layers,
        "num_attention_heads": num_attention_heads, "num_key_value_heads": num_attention_heads,
        "hidden_act": "silu", "max_position_embeddings": MAX_POSITIONS, "rms_norm_eps": 1e-05,
        "tie_word_embeddings": False, "rope_theta": 10000.0, "partial_rotary_factor": 1.0,
        "rope_scaling": None, "attention_bias": False, "attention_dropout": 0.0, "clip_qkv": None,
        "num_experts_per_tok": num_experts_per_tok, "num_experts": num_experts, "norm_topk_prob": False,
        "qk_layernorm": True, "moe_layer_freq": [1] * num_hidden_layers,
        "moe_router_enable_expert_bias": False, "moe_router_score_function": "softmax",
        "routed_scaling_factor": 1.0, "router_num_group": None, "router_topk_group": None,
        "router_aux_loss_coef": 0.01, "output_router_logits": False, "use_cache": False,
        "initializer_range": 0.02, "torch_dtype": "bfloat16", "transformers_version": "4.46.3",
        "bos_token_id": tok.token_to_id("<|startoftext|>"), "eos_token_id": tok.token_to_id("<|endoftext|>"),
        "pad_token_id": tok.token_to_id("<|endoftext|>"),
    }


def llada2_config(tok: Tokenizer, hidden_size: int, num_hidden_layers: int, num_attention_heads: int,
                  num_key_value_heads: int, head_dim: int, num_experts: int, num_experts_per_tok: int, n_group: int,
                  topk_group: int, moe_intermediate_size: int, intermediate_size: int, num_shared_experts: int,
                  first_k_dense_replace: int) -> dict:
    """config.json of an LLaDA2MoeModelLM (the keys of LLaDA2.0's configuration class). Published choices kept:
    half of each head rotated (``partial_rotary_factor`` 0.5), sigmoid scores, expert bias, top-k weights
    renormalised and scaled by 2.5; ``rope_theta`` is 10000 for a 512-position model (the published 600000 suits
    its long context)."""
    eos = tok.token_to_id("<|endoftext|>")
    return {
        "architectures": ["LLaDA2MoeModelLM"], "model_type": "llada2_moe",
        "auto_map": {"AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
                     "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
                     "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM"},
        "vocab_size": padded_vocab(tok), "hidden_size": hidden_size, "intermediate_size": intermediate_size,
        "num_hidden_layers": num_hidden_layers, "num_attention_heads": num_attention_heads,
        "num_key_value_heads": num_key_value_heads, "head_dim": head_dim, "hidden_act": "silu",
        "use_qkv_bias": False, "use_bias": False, "rms_norm_eps": 1e-06, "tie_word_embeddings": False,
        "max_position_embeddings": MAX_POSITIONS, "rope_theta": 10000.0, "rope_scaling": None,
        "partial_rotary_factor": 0.5, "num_experts": num_experts, "num_shared_experts": num_shared_experts,
        "num_experts_per_tok": num_experts_per_tok, "n_group": n_group, "topk_group": topk_group,
        "moe_intermediate_size": moe_intermediate_size, "first_k_dense_replace": first_k_dense_replace,
        "use_qk_norm": True, "moe_router_enable_expert_bias": True, "routed_scaling_factor": 2.5,
        "score_function": "sigmoid", "norm_topk_prob": True, "num_nextn_predict_layers": 0,
        "output_router_logits": False, "use_cache": False, "initializer_range": 0.02, "torch_dtype": "bfloat16",
        "transformers_version": "4.56.1", "bos_token_id": tok.token_to_id("<|startoftext|>"), "eos_token_id": eos,
        "pad_token_id": eos,
    }


_BUILDERS = {"llada": dense_config, "llada_moe": moe_config, "llada2": llada2_config}


def make_config(family: str, tok: Tokenizer, **dims) -> dict:
    """config.json for ``family`` ('llada', 'llada_moe' or 'llada2') with SIZES defaults overridden by ``dims``."""
    merged = {**SIZES[family], **{k: v for k, v in dims.items() if v is not None}}
    return _BUILDERS[family](tok, **merged)
