"""config.json parsers of the newer families: LLaDA2.0 / 2.1 (``LLaDA2MoeModelLM``) and Dream (``DreamModel``).

``config.from_dict`` dispatches here through ``config.ARCHITECTURES``. Key names are the published
configuration classes' (``configuration_llada2_moe.py``, Dream's Qwen2-style ``configuration_dream.py``); every
dimension comes from config.json, and a switch whose value would change the math in a way we do not implement
raises ``UnsupportedConfigError`` naming the key.
"""
from __future__ import annotations

from unmask.server.config import ModelConfig, UnsupportedConfigError, _check_switches, _require

_LLADA2_SWITCHES = (
    ("use_bias", False), ("use_qkv_bias", False), ("tie_word_embeddings", False), ("rope_scaling", None),
    ("hidden_act", "silu"), ("num_nextn_predict_layers", None), ("use_linear_attention", False),
)
_DREAM_SWITCHES = (
    ("tie_word_embeddings", False), ("use_sliding_window", False), ("rope_scaling", None), ("hidden_act", "silu"),
)


def _mask_id(raw: dict, specials: dict[str, int]) -> int:
    mask = raw.get("mask_token_id", specials.get("<|mask|>"))
    if mask is None:
        raise UnsupportedConfigError("config.json has no mask_token_id and tokenizer.json has no <|mask|> token")
    return int(mask)


def _rotary_dim(raw: dict, head_dim: int) -> int:
    """HF default RoPE: ``int(head_dim · partial_rotary_factor)`` leading dims (``rotary_dim`` if given)."""
    dim = raw.get("rotary_dim") or int(head_dim * float(raw.get("partial_rotary_factor") or 1.0))
    if dim <= 0 or dim > head_dim or dim % 2:
        raise UnsupportedConfigError(f"config.json: rotary dim {dim} is not an even number in 1..{head_dim}")
    return dim


def llada2(raw: dict, specials: dict[str, int], arch: str) -> ModelConfig:
    """LLaDA2.0 / 2.1 (Ling 2.0 MoE with block-causal attention): fused QKV, per-head QK-norm, partial rotary,
    sigmoid group-limited routing with expert bias, shared experts, the first k layers dense."""
    _check_switches(raw, _LLADA2_SWITCHES)
    score = raw.get("score_function", raw.get("moe_router_score_function", "sigmoid"))
    if score != "sigmoid":
        raise UnsupportedConfigError(f"config.json: score_function={score!r} is not supported (expected 'sigmoid')")
    if not raw.get("use_qk_norm", True):
        raise UnsupportedConfigError("config.json: use_qk_norm=false is not supported")
    d, h = int(_require(raw, "hidden_size")), int(_require(raw, "num_attention_heads"))
    hd = int(raw.get("head_dim") or d // h)
    e, groups = int(_require(raw, "num_experts")), int(raw.get("n_group") or 1)
    if e % groups:
        raise UnsupportedConfigError(f"config.json: num_experts={e} is not a multiple of n_group={groups}")
    return ModelConfig(
        family="llada2", architecture=arch, hidden_size=d, num_layers=int(_require(raw, "num_hidden_layers")),
        num_heads=h, num_kv_heads=int(raw.get("num_key_value_heads") or h), head_dim=hd,
        intermediate_size=int(_require(raw, "intermediate_size")), vocab_size=int(_require(raw, "vocab_size")),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)), rope_theta=float(raw.get("rope_theta", 10000.0)),
        rope_fp32=False, qk_norm=True, num_experts=e, num_experts_per_tok=int(_require(raw, "num_experts_per_tok")),
        expert_intermediate_size=int(_require(raw, "moe_intermediate_size")),
        max_position_embeddings=int(raw.get("max_position_embeddings", 4096)), mask_token_id=_mask_id(raw, specials),
        eos_token_id=int(_require(raw, "eos_token_id")), eot_token_id=specials.get("<|role_end|>"),
        bos_token_id=raw.get("bos_token_id"), attention_pattern="block_causal", rotary_dim=_rotary_dim(raw, hd),
        first_k_dense=int(raw.get("first_k_dense_replace") or 0),
        num_shared_experts=int(raw.get("num_shared_experts") or 0), routing="sigmoid_grouped", n_group=groups,
        topk_group=int(raw.get("topk_group") or 1), routed_scaling_factor=float(raw.get("routed_scaling_factor", 1.0)),
    )


def dream(raw: dict, specials: dict[str, int], arch: str) -> ModelConfig:
    """Dream-7B (Qwen2 body: GQA, q/k/v bias, full RoPE, bidirectional attention; logits shifted one position)."""
    _check_switches(raw, _DREAM_SWITCHES)
    d, h = int(_require(raw, "hidden_size")), int(_require(raw, "num_attention_heads"))
    return ModelConfig(
        family="dream", architecture=arch, hidden_size=d, num_layers=int(_require(raw, "num_hidden_layers")),
        num_heads=h, num_kv_heads=int(raw.get("num_key_value_heads") or h), head_dim=d // h,
        intermediate_size=int(_require(raw, "intermediate_size")), vocab_size=int(_require(raw, "vocab_size")),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)), rope_theta=float(raw.get("rope_theta", 10000.0)),
        rope_fp32=False, qk_norm=False, num_experts=0, num_experts_per_tok=0, expert_intermediate_size=0,
        max_position_embeddings=int(raw.get("max_position_embeddings", 4096)), mask_token_id=_mask_id(raw, specials),
        eos_token_id=int(_require(raw, "eos_token_id")), eot_token_id=specials.get("<|im_end|>"),
        bos_token_id=raw.get("bos_token_id"), qkv_bias=True, logits_shift=True,
    )


PARSERS = {"llada2": llada2, "dream": dream}
