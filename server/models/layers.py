"""Layers shared by every family (LLaDA, LLaDA-MoE, LLaDA2, Dream). All math goes through ``unmask.kernels.ops``.

Legend: N packed tokens, D hidden, H query heads, Hk key/value heads, Dh head dim, E experts,
I expert width, K experts per token, V vocab. Weights live as plain parameters; projections that read the
same input are fused at load time into one matrix (q/k/v -> ``qkv_proj``, gate/up -> ``gate_up_proj``), so
each is one GEMM. The model classes map the HF checkpoint's tensor names onto them.
"""
from __future__ import annotations

import torch
from torch import nn

from unmask.kernels import ops
from unmask.server.config import ModelConfig
from unmask.server.models.attention_meta import AttentionMetadata
from unmask.server.models.parallel import TensorParallel, local_expert_routes


def _param(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape))


class RMSNorm(nn.Module):
    """RMSNorm with an affine weight [D]."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = _param(dim)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] -> [N, D]."""
        return ops.rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    """Multi-head (GQA) attention with NeoX RoPE (optionally partial), optional per-head QK-norm (LLaDA-MoE, LLaDA2),
    optional q/k/v bias (Dream); bidirectional or block-causal as ``meta.attn_blocks`` says."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        d, hd = cfg.hidden_size, cfg.head_dim
        self.qkv_proj = _param((cfg.num_heads + 2 * cfg.num_kv_heads) * hd, d)  # rows: q, then k, then v
        self.o_proj = _param(d, cfg.num_heads * hd)
        if cfg.qkv_bias:
            self.qkv_bias = _param((cfg.num_heads + 2 * cfg.num_kv_heads) * hd)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(hd, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(hd, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], meta: AttentionMetadata,
                out_rows: torch.Tensor | None = None):
        """x [N, D], rope = (cos, sin) [N, R] each from ``ops.rope_cos_sin`` of the positions (R = Dh, or the
        rotary dims of a partial rotary) -> [N, D], or [M, D] for ``out_rows`` [M] int64 only: every row's keys
        and values (and cache writes) are still computed, the output projection runs on those rows alone, and so
        does the attention itself where the queries need no position (bidirectional): each output row is its softmax
        over the sequence's keys, the same whatever other queries the call holds."""
        cfg, n = self.cfg, x.shape[0]
        hq, hk = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        qkv = ops.linear(x, self.qkv_proj)  # [N, (H + 2Hk)·Dh]; the views below keep its row stride
        if cfg.qkv_bias:
            qkv = qkv + self.qkv_bias
        q = qkv[:, :hq].view(n, cfg.num_heads, cfg.head_dim)  # [N, H, Dh]
        k = qkv[:, hq:hq + hk].view(n, cfg.num_kv_heads, cfg.head_dim)  # [N, Hk, Dh]
        v = qkv[:, hq + hk:].view(n, cfg.num_kv_heads, cfg.head_dim)  # [N, Hk, Dh]
        if cfg.qk_norm:  # LLaDA-MoE: per-head RMSNorm over Dh, before RoPE (LLADA-SPEC.md §4), one kernel
            q, k = ops.qk_norm_rope(q, k, rope[0], rope[1], cfg.rope_fp32, self.q_norm.weight, self.k_norm.weight,
                                    self.q_norm.eps)
        else:
            q, k = ops.rope_apply(q, k, rope[0], rope[1], cfg.rope_fp32)
        cache = meta.kv_caches[self.layer_idx] if meta.kv_caches is not None else (None, None)
        if meta.slot_mapping is not None:
            ops.kv_cache_write(cache[0], cache[1], k, v, meta.slot_mapping)
        scale = cfg.head_dim ** -0.5
        if out_rows is not None and meta.attn_blocks is None:  # the output rows' queries alone
            return ops.linear(_row_subset_attention(q, k, v, meta, cache, scale, out_rows).flatten(1), self.o_proj)
        if meta.reads_cache:
            o = ops.attention(q, k, v, meta.cu_seqlens_q, meta.max_seqlen_q, scale,
                              cache[0], cache[1], meta.block_table, meta.kv_lens, meta.new_offsets, meta.attn_blocks)
        else:
            o = ops.attention(q, k, v, meta.cu_seqlens_q, meta.max_seqlen_q, scale, attn_blocks=meta.attn_blocks)
        o = o.reshape(n, -1)  # [N, H·Dh]
        return ops.linear(o if out_rows is None else o[out_rows], self.o_proj)  # [N or M, D]


def _row_subset_attention(q, k, v, meta: AttentionMetadata, cache: tuple, scale: float,
                          out_rows: torch.Tensor) -> torch.Tensor:
    """q [N, H, Dh], k/v [N, Hk, Dh], this layer's (k_cache, v_cache) or (None, None), out_rows [M] int64 packed rows
    in any order -> [M, H, Dh]: the attention outputs of those rows, each over all keys of its sequence (cached ones
    too), with the other queries never computed. The rows are sorted into packed order (a query subset per sequence,
    ``ops.attention``'s ``cu_seqlens_k``), then put back."""
    rows, order = torch.sort(out_rows)  # [M] packed order, [M] where each came from
    cu_q = torch.searchsorted(rows, meta.cu_seqlens_q.to(rows.dtype)).to(torch.int32)  # [B+1] rows before each start
    cached = (cache[0], cache[1], meta.block_table, meta.kv_lens, meta.new_offsets) if meta.reads_cache else ()
    o = ops.attention(q[rows], k, v, cu_q, meta.max_seqlen_q, scale, *cached, cu_seqlens_k=meta.cu_seqlens_q)
    return torch.empty_like(o).index_copy_(0, order, o)  # [M, H, Dh] in out_rows' order


class SwiGLU(nn.Module):
    """down(silu(gate(x)) ⊙ up(x)) — LLaDA's ff_proj / up_proj / ff_out."""

    def __init__(self, dim: int, inter: int):
        super().__init__()
        self.gate_up_proj = _param(2 * inter, dim)  # rows: gate, then up
        self.down_proj = _param(dim, inter)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] -> [N, D]."""
        return ops.linear(ops.silu_mul(ops.linear(x, self.gate_up_proj)), self.down_proj)  # [N, 2I] -> [N, I] -> [N, D]


class SparseMoE(nn.Module):
    """Expert layer. LLaDA-MoE: fp32-softmax router, top-k without renormalisation. LLaDA2: fp32 router logits,
    sigmoid group-limited routing with expert bias (``ops.moe_route_grouped``) and shared experts added.

    Expert weights are stacked at load time: w_gate_up [E, 2I, D] (gate rows, then up rows), w_down [E, D, I].
    Under expert parallelism (``tp.expert_parallel``) a rank stacks only its E/N experts (``parallel.py``).
    """

    def __init__(self, cfg: ModelConfig, tp: TensorParallel | None = None):
        super().__init__()
        e, i, d = cfg.num_experts, cfg.expert_intermediate_size, cfg.hidden_size
        self.cfg, self.top_k = cfg, cfg.num_experts_per_tok
        self.experts = (0, e) if tp is None else tp.expert_range(cfg)  # [first, stop) of the stacked experts
        held = self.experts[1] - self.experts[0]
        self.gate = _param(e, d)
        self.w_gate_up = _param(held, 2 * i, d)
        self.w_down = _param(held, d, i)
        if cfg.routing == "sigmoid_grouped":
            self.expert_bias = _param(e)
        if cfg.num_shared_experts:
            self.shared = SwiGLU(d, i * cfg.num_shared_experts if tp is None else tp.shared_width(cfg))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] -> [N, D]."""
        cfg = self.cfg
        if cfg.routing == "sigmoid_grouped":  # the published gate computes its logits in fp32
            cdt = torch.promote_types(x.dtype, torch.float32)
            logits = ops.linear(x.to(cdt), self.gate.to(cdt))  # [N, E]
            weights, ids = ops.moe_route_grouped(logits, self.expert_bias, self.top_k, cfg.n_group, cfg.topk_group,
                                                 cfg.routed_scaling_factor, x.dtype)  # [N, K], [N, K]
        else:
            weights, ids = ops.moe_route(ops.linear(x, self.gate), self.top_k, x.dtype)  # [N, K], [N, K]
        if self.experts != (0, cfg.num_experts):  # expert parallel: this rank's pairs only
            weights, ids = local_expert_routes(weights, ids, self.experts[0], self.experts[1] - self.experts[0])
        out = ops.fused_moe(x, self.w_gate_up, self.w_down, weights, ids)  # [N, D]
        return out + self.shared(x) if cfg.num_shared_experts else out


class DecoderBlock(nn.Module):
    """Pre-norm block: h = x + attn(norm1(x)); y = h + ffn(norm2(h)). The residual stream is carried as
    (branch output, residual) pairs so that every residual add is fused with the norm that follows it: a block
    returns (ffn(norm2(h)), h) and the next block, or the final norm, adds the two in its add+RMSNorm.

    Tensor parallel (``tp``, ``cfg`` this rank's local shapes): attention and FFN outputs are partial sums,
    each completed by one all-reduce (``parallel.py``)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int, tp: TensorParallel | None = None):
        super().__init__()
        self.tp = tp
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, layer_idx)
        self.ff_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.ffn = (SwiGLU(cfg.hidden_size, cfg.intermediate_size) if cfg.is_dense_layer(layer_idx)
                    else SparseMoE(cfg, tp))

    def forward(self, x, residual, rope, meta, out_rows=None):
        """x [N, D] the previous block's ffn output (the embeddings for the first block, with residual None),
        residual [N, D] or None, rope = (cos, sin) [N, Dh] -> (ffn output [N, D], residual [N, D]); the
        block's output is their sum. With ``out_rows`` [M] int64 (the last block: the rows whose logits are
        wanted) both outputs are [M, D]: attention reads every row, everything after it runs on M rows."""
        if residual is None:
            n, residual = self.attn_norm(x), x
        else:
            n, residual = ops.add_rms_norm(x, residual, self.attn_norm.weight, self.attn_norm.eps)  # x = sum
        a = self.attn(n, rope, meta, out_rows)  # [N or M, D]
        if out_rows is not None:
            residual = residual[out_rows]  # [M, D]
        if self.tp is not None:
            a = self.tp.all_reduce(a)
        n, residual = ops.add_rms_norm(a, residual, self.ff_norm.weight, self.ff_norm.eps)  # norm(h), h
        f = self.ffn(n)  # [N, D]
        return (f if self.tp is None else self.tp.all_reduce(f)), residual
