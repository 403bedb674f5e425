"""LLaDA-MoE (LLaDA-MoE-7B-A1B Base/Instruct): ``LLaDAMoEModelLM``.

Same skeleton as dense LLaDA with per-head QK RMSNorm before RoPE (cos/sin in the activation dtype)
and a sparse MoE in every layer (LLADA-SPEC.md §4). HF tensor names: ``model.layers.*``; q/k/v are
fused at load time into qkv_proj [(H + 2Hk)·Dh, D] and expert tensors stacked into w_gate_up [E, 2I, D] and
w_down [E, D, I].
"""
from __future__ import annotations

from unmask.server.config import ModelConfig
from unmask.server.models.llada import LLaDAModelLM


class LLaDAMoEModelLM(LLaDAModelLM):
    """LLaDA-MoE; the math differences live in the shared layers, switched by ModelConfig."""

    HF_TOP = {"embed": "model.embed_tokens.weight", "norm.weight": "model.norm.weight", "lm_head": "lm_head.weight"}
    HF_LEAVES = {"attn_norm.weight": "input_layernorm.weight", "attn.o_proj": "self_attn.o_proj.weight",
                 "attn.q_norm.weight": "self_attn.q_norm.weight", "attn.k_norm.weight": "self_attn.k_norm.weight",
                 "ff_norm.weight": "post_attention_layernorm.weight", "ffn.gate": "mlp.gate.weight"}
    HF_LAYER_PREFIX = "model.layers.{i}."
    HF_FUSED = {"attn.qkv_proj": (("self_attn.q_proj.weight", "q"), ("self_attn.k_proj.weight", "kv"),
                                  ("self_attn.v_proj.weight", "kv"))}

    @staticmethod
    def hf_stacked_names(cfg: ModelConfig) -> dict[str, list[list[str]]]:
        """Stacked parameter -> for each expert j, the HF tensors concatenated (dim 0) into slot j."""
        out = {}
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}.mlp.experts"
            out[f"blocks.{i}.ffn.w_gate_up"] = [[f"{p}.{j}.gate_proj.weight", f"{p}.{j}.up_proj.weight"]
                                                for j in range(cfg.num_experts)]
            out[f"blocks.{i}.ffn.w_down"] = [[f"{p}.{j}.down_proj.weight"] for j in range(cfg.num_experts)]
        return out
