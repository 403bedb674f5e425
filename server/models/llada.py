"""Dense LLaDA (LLaDA-8B Base/Instruct, LLaDA-1.5): ``LLaDAModelLM``.

Legend: N packed tokens, D hidden, V vocab. RMSNorm, NeoX RoPE in fp32, bidirectional MHA, SwiGLU,
untied LM head (LLADA-SPEC.md §3). HF tensor names: ``model.transformer.*``; q/k/v and ff_proj/up_proj
are fused at load time into qkv_proj [(H + 2Hk)·Dh, D] and gate_up_proj [2I, D] (split back on export).
"""
from __future__ import annotations

import torch
from torch import nn

from unmask.kernels import ops
from unmask.server.config import ModelConfig
from unmask.server.models.attention_meta import AttentionMetadata
from unmask.server.models.layers import DecoderBlock, RMSNorm
from unmask.server.models.parallel import TensorParallel, embed_lookup


def name_table(num_layers: int, top: dict[str, str], leaves: dict[str, str], layer_prefix: str) -> dict[str, str]:
    """Internal parameter name -> HF tensor name: ``top`` as given, plus ``blocks.{i}.<ours>`` ->
    ``layer_prefix.format(i=i) + <theirs>`` for every layer i and every (ours, theirs) in ``leaves``."""
    names = dict(top)
    for i in range(num_layers):
        for ours, theirs in leaves.items():
            names[f"blocks.{i}.{ours}"] = layer_prefix.format(i=i) + theirs
    return names


class LLaDAModelLM(nn.Module):
    """Embedding -> blocks -> final norm; ``compute_logits`` applies the LM head to chosen rows only.

    With ``tp`` (tensor parallel, ``parallel.py``) the module is one rank's shard: its heads, MLP units or experts
    and its vocabulary rows [vocab_start, vocab_start + V/N) of the embedding and LM head."""

    def __init__(self, cfg: ModelConfig, tp: TensorParallel | None = None):
        super().__init__()
        self.cfg, self.tp = cfg, tp
        local = cfg if tp is None else tp.local_config(cfg)
        self.vocab_start, vocab_stop = (0, cfg.vocab_size) if tp is None else tp.vocab_range(cfg)
        self.embed = nn.Parameter(torch.empty(vocab_stop - self.vocab_start, cfg.hidden_size))
        self.blocks = nn.ModuleList(DecoderBlock(local, i, tp) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Parameter(torch.empty(vocab_stop - self.vocab_start, cfg.hidden_size))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                out_rows: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [N] int64, positions [N] int64 -> final hidden states [N, D] (after the final norm), or
        [M, D] of ``out_rows`` [M] int64 alone. Every row's state is needed until the last block's attention
        (its keys); after it only the wanted rows are computed (each row's attention output, output projection,
        MLP and norm read that row alone, so they are the rows a full forward would give, up to float rounding)."""
        x = embed_lookup(self.embed, input_ids, self.tp, self.vocab_start)  # [N, D]
        cfg = self.cfg
        rope = ops.rope_cos_sin(positions, cfg.rotary_dim or cfg.head_dim, cfg.rope_theta, x.dtype)  # 2 x [N, R]
        residual, last = None, len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x, residual = block(x, residual, rope, meta, out_rows if i == last else None)  # the stream is x + residual
        if residual is None:  # no layers
            return self.norm(x if out_rows is None else x[out_rows])
        return ops.add_rms_norm(x, residual, self.norm.weight, self.norm.eps)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [M, D] -> logits [M, V] in the model dtype (no upcast, as the reference); a tensor-parallel
        shard returns its vocabulary slice [M, V/N]."""
        return ops.linear(hidden, self.lm_head)

    HF_TOP = {"embed": "model.transformer.wte.weight", "norm.weight": "model.transformer.ln_f.weight",
              "lm_head": "model.transformer.ff_out.weight"}
    """Model-level parameters stored as one HF tensor (LLADA-SPEC.md §3)."""
    HF_LEAVES = {"attn_norm.weight": "attn_norm.weight", "attn.o_proj": "attn_out.weight",
                 "ff_norm.weight": "ff_norm.weight", "ffn.down_proj": "ff_out.weight"}
    """Per-layer parameters stored as one HF tensor: ours (under ``blocks.{i}.``) -> theirs (under the prefix)."""
    HF_LAYER_PREFIX = "model.transformer.blocks.{i}."
    HF_FUSED = {"attn.qkv_proj": (("q_proj.weight", "q"), ("k_proj.weight", "kv"), ("v_proj.weight", "kv")),
                "ffn.gate_up_proj": (("ff_proj.weight", "ffn"), ("up_proj.weight", "ffn"))}
    """Per-layer parameters fused at load time: ours -> the HF tensors (name, row kind) concatenated in order."""

    @classmethod
    def hf_names(cls, cfg: ModelConfig) -> dict[str, str]:
        """Internal parameter name -> HF tensor name, for parameters stored as one HF tensor."""
        return name_table(cfg.num_layers, cls.HF_TOP, cls.HF_LEAVES, cls.HF_LAYER_PREFIX)

    @classmethod
    def hf_fused_names(cls, cfg: ModelConfig) -> dict[str, list[tuple[str, int]]]:
        """Fused parameter -> the HF tensors (name, rows) concatenated along dim 0, in order."""
        rows = {"q": cfg.num_heads * cfg.head_dim, "kv": cfg.num_kv_heads * cfg.head_dim,
                "ffn": cfg.intermediate_size}
        return {f"blocks.{i}.{ours}": [(cls.HF_LAYER_PREFIX.format(i=i) + theirs, rows[kind]) for theirs, kind in parts]
                for i in range(cfg.num_layers) for ours, parts in cls.HF_FUSED.items()}

    @staticmethod
    def hf_stacked_names(cfg: ModelConfig) -> dict[str, list[list[str]]]:
        """Internal stacked parameter -> per-expert list of HF tensor names concatenated along dim 0 (none here)."""
        return {}
