"""LLaDA2.0 / LLaDA2.1 (inclusionAI LLaDA2.0-mini / -flash, LLaDA2.1-mini / -flash): ``LLaDA2MoeModelLM``.

Same skeleton as LLaDA-MoE with the published ``modeling_llada2_moe.py`` semantics: one fused QKV projection
(``attention.query_key_value``, rows q heads, k heads, v heads: our ``qkv_proj`` layout as published), per-head
QK RMSNorm before a partial rotary (the leading ``partial_rotary_factor``·head_dim dims), GQA, the first
``first_k_dense_replace`` layers dense, then sigmoid group-limited routing with expert bias over stacked experts
plus shared experts; **block-causal** attention (``ModelConfig.attention_pattern``): the runner passes each
sequence's block size through ``AttentionMetadata.attn_blocks``.
"""
from __future__ import annotations

from unmask.server.config import ModelConfig
from unmask.server.models.llada import LLaDAModelLM


class LLaDA2MoeModelLM(LLaDAModelLM):
    """LLaDA2; the math differences live in the shared layers, switched by ModelConfig."""

    HF_TOP = {"embed": "model.word_embeddings.weight", "norm.weight": "model.norm.weight", "lm_head": "lm_head.weight"}
    HF_LEAVES = {"attn_norm.weight": "input_layernorm.weight", "attn.qkv_proj": "attention.query_key_value.weight",
                 "attn.o_proj": "attention.dense.weight", "attn.q_norm.weight": "attention.query_layernorm.weight",
                 "attn.k_norm.weight": "attention.key_layernorm.weight",
                 "ff_norm.weight": "post_attention_layernorm.weight"}
    HF_LAYER_PREFIX = "model.layers.{i}."

    @classmethod
    def hf_names(cls, cfg: ModelConfig) -> dict[str, str]:
        """Internal parameter name -> HF tensor name, for parameters stored as one HF tensor (the shared table,
        then each layer's dense MLP or router, expert bias and shared-expert down projection)."""
        names = super().hf_names(cfg)
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}.mlp."
            if cfg.is_dense_layer(i):
                names[f"blocks.{i}.ffn.down_proj"] = p + "down_proj.weight"
                continue
            names[f"blocks.{i}.ffn.gate"] = p + "gate.weight"
            names[f"blocks.{i}.ffn.expert_bias"] = p + "gate.expert_bias"
            if cfg.num_shared_experts:
                names[f"blocks.{i}.ffn.shared.down_proj"] = p + "shared_experts.down_proj.weight"
        return names

    @staticmethod
    def hf_fused_names(cfg: ModelConfig) -> dict[str, list[tuple[str, int]]]:
        """Fused parameter -> the HF tensors (name, rows) concatenated along dim 0: gate/up of the dense layers
        and of the shared experts."""
        out = {}
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}.mlp."
            if cfg.is_dense_layer(i):
                inter, ours, theirs = cfg.intermediate_size, f"blocks.{i}.ffn.gate_up_proj", p
            elif cfg.num_shared_experts:
                inter = cfg.expert_intermediate_size * cfg.num_shared_experts
                ours, theirs = f"blocks.{i}.ffn.shared.gate_up_proj", p + "shared_experts."
            else:
                continue
            out[ours] = [(theirs + "gate_proj.weight", inter), (theirs + "up_proj.weight", inter)]
        return out

    @staticmethod
    def hf_stacked_names(cfg: ModelConfig) -> dict[str, list[list[str]]]:
        """Stacked parameter -> for each expert j, the HF tensors concatenated (dim 0) into slot j."""
        out = {}
        for i in range(cfg.num_layers):
            if cfg.is_dense_layer(i):
                continue
            p = f"model.layers.{i}.mlp.experts"
            out[f"blocks.{i}.ffn.w_gate_up"] = [[f"{p}.{j}.gate_proj.weight", f"{p}.{j}.up_proj.weight"]
                                                for j in range(cfg.num_experts)]
            out[f"blocks.{i}.ffn.w_down"] = [[f"{p}.{j}.down_proj.weight"] for j in range(cfg.num_experts)]
        return out
