"""Dream (Dream-org/Dream-v0-Base-7B, Dream-v0-Instruct-7B): ``DreamModel``.

A Qwen2 body (published ``modeling_dream.py``): GQA, q/k/v projections with bias, full NeoX RoPE with cos/sin
in the activation dtype, SwiGLU MLP, RMSNorm, untied LM head, **bidirectional** attention. Dream predicts the
token at position i from the hidden state at i − 1 (its ``generate`` shifts the logits right by one, position 0
keeping its own): ``forward`` returns the hidden states already shifted within each packed sequence, so the
runner's logit rows need no family rule. In a cached block step the fed segment starts at the block, whose first
row then keeps its own state (as Fast-dLLM's Dream cache does); refresh steps start at position 0 and are exact.
HF tensor names: ``model.layers.*``; q/k/v weights and biases are fused at load time into qkv_proj / qkv_bias.
"""
from __future__ import annotations

import torch

from unmask.server.models.attention_meta import AttentionMetadata
from unmask.server.models.llada import LLaDAModelLM


def shift_source(n: int, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """[N] int64 for N packed rows of sequences cu_seqlens [B+1]: row i reads row i − 1 of its own sequence;
    each sequence's first row keeps its own."""
    src = torch.arange(n, device=cu_seqlens.device) - 1  # [N]
    starts = cu_seqlens[:-1].long()
    src[starts[starts < n]] = starts[starts < n]
    return src


class DreamModel(LLaDAModelLM):
    """Dream-7B; the Qwen2 differences (bias, GQA) live in the shared layers, switched by ModelConfig."""

    HF_TOP = {"embed": "model.embed_tokens.weight", "norm.weight": "model.norm.weight", "lm_head": "lm_head.weight"}
    HF_LEAVES = {"attn_norm.weight": "input_layernorm.weight", "attn.o_proj": "self_attn.o_proj.weight",
                 "ff_norm.weight": "post_attention_layernorm.weight", "ffn.down_proj": "mlp.down_proj.weight"}
    HF_LAYER_PREFIX = "model.layers.{i}."
    HF_FUSED = {**{f"attn.qkv_{ours}": tuple((f"self_attn.{n}_proj.{theirs}", rows)
                                             for n, rows in (("q", "q"), ("k", "kv"), ("v", "kv")))
                   for ours, theirs in (("proj", "weight"), ("bias", "bias"))},
                "ffn.gate_up_proj": (("mlp.gate_proj.weight", "ffn"), ("mlp.up_proj.weight", "ffn"))}
    """q/k/v weights into qkv_proj and q/k/v biases into qkv_bias, gate/up into gate_up_proj."""

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                out_rows: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [N] int64, positions [N] int64 -> [N, D] final hidden states (or [M, D] of ``out_rows`` [M]
        int64), row i holding the state that predicts position i (Dream's one-position logits shift)."""
        src = shift_source(input_ids.shape[0], meta.cu_seqlens_q)  # [N]
        if out_rows is None:
            return super().forward(input_ids, positions, meta)[src]
        return super().forward(input_ids, positions, meta, src[out_rows])

