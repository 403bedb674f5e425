"""Public kernel ops. Model and engine code call only these; each dispatches through ``backend.pick``
to its Triton kernel (``triton_ops``) or its PyTorch specification (``torch_ref``, named per op).

Legend: N packed tokens, B sequences, H/Hk query/key heads, D head dim, P pages, S page size,
T tokens into a MoE layer, E experts, I expert width, K experts per token, M masked rows, V vocab.
"""
import torch

from unmask.kernels import backend
from unmask.kernels.quant import QuantizedWeight
from unmask.kernels.torch_ref import act as _act
from unmask.kernels.torch_ref import attention as _attn
from unmask.kernels.torch_ref import linear as _linear
from unmask.kernels.torch_ref import moe as _moe
from unmask.kernels.torch_ref import norm as _norm
from unmask.kernels.torch_ref import qlinear as _qlinear
from unmask.kernels.torch_ref import remask as _remask
from unmask.kernels.torch_ref import rope as _rope
from unmask.kernels.torch_ref import select as _select


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [M, K], weight [N, K] -> x @ weight.T [M, N] x.dtype: every projection and the LM head. On CUDA torch's
    GEMM unless ``KernelOptions.gemm`` is ``triton`` (then the skinny kernel for M <= 64).
    Spec: ``torch_ref.linear.linear``."""
    if isinstance(weight, QuantizedWeight):
        return quantized_linear(x, weight)
    return backend.pick("linear", _linear.linear, x.device)(x, weight)


def quantized_linear(x: torch.Tensor, weight: QuantizedWeight) -> torch.Tensor:
    """x [M, K], weight QuantizedWeight [N, K] (``kernels/quant.py``) -> x @ dequantize(weight).T [M, N] x.dtype,
    the weight streamed in its quantized bytes. Spec: ``torch_ref.qlinear.quantized_linear``."""
    return backend.pick("quantized_linear", _qlinear.quantized_linear, x.device)(x, weight)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [N, D], weight [D] -> [N, D] x.dtype. Spec: ``torch_ref.norm.rms_norm``."""
    return backend.pick("rms_norm", _norm.rms_norm, x.device)(x, weight, eps)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float):
    """x, residual [N, D] -> (rms_norm(x + residual), x + residual). Spec: ``torch_ref.norm.add_rms_norm``."""
    return backend.pick("add_rms_norm", _norm.add_rms_norm, x.device)(x, residual, weight, eps)


def silu_mul(x: torch.Tensor) -> torch.Tensor:
    """x [N, 2I] (gate, then up columns) -> silu(gate) * up [N, I] x.dtype. Spec: ``torch_ref.act.silu_mul``."""
    return backend.pick("silu_mul", _act.silu_mul, x.device)(x)


def rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, theta: float, rotate_fp32: bool):
    """q [N, H, D], k [N, Hk, D], positions [N] int -> (q, k) NeoX-rotated. Spec: ``torch_ref.rope.rope``."""
    return backend.pick("rope", _rope.rope, q.device)(q, k, positions, theta, rotate_fp32)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """positions [N] int -> (cos [N, Dh], sin [N, Dh]) fp32 (fp64 for fp64 activations of ``dtype``). Always the
    PyTorch spec (``torch_ref.rope.rope_cos_sin``): built once per forward and shared by every layer."""
    return _rope.rope_cos_sin(positions, head_dim, theta, dtype)


def rope_apply(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotate_fp32: bool):
    """q [N, H, D], k [N, Hk, D], cos/sin [N, R] from ``rope_cos_sin`` -> (q, k) NeoX-rotated over the leading R
    dims (R < D: partial rotary, run by the PyTorch spec on every device). Spec: ``torch_ref.rope.rope_apply``."""
    fn = _rope.rope_apply if cos.shape[-1] < q.shape[-1] else backend.pick("rope_apply", _rope.rope_apply, q.device)
    return fn(q, k, cos, sin, rotate_fp32)


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotate_fp32: bool,
                 q_weight: torch.Tensor, k_weight: torch.Tensor, eps: float):
    """q [N, H, D], k [N, Hk, D], cos/sin [N, D] from ``rope_cos_sin``, q_weight/k_weight [D] -> (q, k): each
    head RMS-normalised over D, then NeoX-rotated (LLaDA-MoE). Spec: ``torch_ref.rope.qk_norm_rope``."""
    fn = (_rope.qk_norm_rope if cos.shape[-1] < q.shape[-1]  # partial rotary: the spec on every device
          else backend.pick("qk_norm_rope", _rope.qk_norm_rope, q.device))
    return fn(q, k, cos, sin, rotate_fp32, q_weight, k_weight, eps)


def attention(q, k, v, cu_seqlens_q, max_seqlen_q: int, scale: float, k_cache=None, v_cache=None,
              block_table=None, kv_lens=None, new_offsets=None, attn_blocks=None, cu_seqlens_k=None) -> torch.Tensor:
    """Bidirectional (or, per sequence, block-causal) varlen attention, optionally over a paged cache.

    q [N, H, D], k/v [N, Hk, D], cu_seqlens_q [B+1] int32; cache k/v [P, S, Hk, D], block_table
    [B, pages] int32, kv_lens [B] int32, new_offsets [B] int32; attn_blocks [B] int32 (0 = bidirectional,
    s > 0 = block-causal with blocks of s absolute positions) -> [N, H, D] q.dtype. A query subset
    (bidirectional): q [M, H, D] some queries of each sequence, k/v [N, Hk, D] its new keys at rows cu_seqlens_k
    [B+1] int32 -> [M, H, D]; without a cache ``max_seqlen_q`` then bounds the key counts too.
    Spec: ``torch_ref.attention.attention``.
    """
    fn = backend.pick("attention", _attn.attention, q.device)
    if cu_seqlens_k is not None:  # attn_blocks passed on: a block-causal subset is refused there, not dropped
        return fn(q, k, v, cu_seqlens_q, max_seqlen_q, scale, k_cache, v_cache, block_table, kv_lens, new_offsets,
                  attn_blocks, cu_seqlens_k=cu_seqlens_k)
    if attn_blocks is None:
        return fn(q, k, v, cu_seqlens_q, max_seqlen_q, scale, k_cache, v_cache, block_table, kv_lens, new_offsets)
    return fn(q, k, v, cu_seqlens_q, max_seqlen_q, scale, k_cache, v_cache, block_table, kv_lens, new_offsets,
              attn_blocks)


def kv_cache_write(k_cache, v_cache, k, v, slot_mapping) -> None:
    """Write k/v [N, Hk, D] into the paged cache [P, S, Hk, D] at slots [N] int64 (negative: skip).
    Spec: ``torch_ref.attention.kv_cache_write``."""
    backend.pick("kv_cache_write", _attn.kv_cache_write, k.device)(k_cache, v_cache, k, v, slot_mapping)


def moe_route(router_logits: torch.Tensor, top_k: int, out_dtype: torch.dtype):
    """router_logits [T, E] -> (weights [T, K] out_dtype, ids [T, K] int64); fp32 softmax, top-k,
    no renormalisation. Spec: ``torch_ref.moe.moe_route``."""
    return backend.pick("moe_route", _moe.moe_route, router_logits.device)(router_logits, top_k, out_dtype)


def moe_route_grouped(router_logits: torch.Tensor, expert_bias: torch.Tensor, top_k: int, n_group: int,
                      topk_group: int, scaling: float, out_dtype: torch.dtype):
    """router_logits [T, E], expert_bias [E] -> (weights [T, K] out_dtype, ids [T, K] int64): LLaDA2's sigmoid
    group-limited routing, the step ahead of ``fused_moe``. Always the PyTorch spec (a few [T, E] elementwise ops
    and two small top-k's): ``torch_ref.moe.moe_route_grouped``."""
    return _moe.moe_route_grouped(router_logits, expert_bias, top_k, n_group, topk_group, scaling, out_dtype)


def fused_moe(x, w_gate_up, w_down, topk_weights, topk_ids) -> torch.Tensor:
    """x [T, D], w_gate_up [E, 2I, D], w_down [E, D, I], weights/ids [T, K] -> [T, D] x.dtype.
    Spec: ``torch_ref.moe.fused_moe``."""
    return backend.pick("fused_moe", _moe.fused_moe, x.device)(x, w_gate_up, w_down, topk_weights, topk_ids)


def remask_confidence(logits: torch.Tensor, temperature: torch.Tensor, seeds: torch.Tensor):
    """logits [M, V], temperature [M] float, seeds [M] int64 -> (x0 [M] int64, conf [M] fp32/fp64).
    Spec: ``torch_ref.remask.remask_confidence``."""
    fn = backend.pick("remask_confidence", _remask.remask_confidence, logits.device)
    return fn(logits, temperature, seeds)


def remask_partial(logits: torch.Tensor, temperature: torch.Tensor, seeds: torch.Tensor, vocab_start: int):
    """Vocabulary-parallel remask, per rank: logits [M, Vs] (ids from vocab_start), temperature [M] float or None
    (every row greedy, no host sync) -> [M, 4] float64 (key, token, logit, lse). Always the PyTorch spec (a handful
    of row reductions): ``torch_ref.remask.remask_partial``."""
    return _remask.remask_partial(logits, temperature, seeds, vocab_start)


def remask_combine(parts: torch.Tensor, logits_dtype: torch.dtype):
    """parts [R, M, 4] of R slices -> (x0 [M] int64, conf [M]) as ``remask_confidence`` on the whole rows.
    Spec: ``torch_ref.remask.remask_combine``."""
    return _remask.remask_combine(parts, logits_dtype)


def select_commits(conf: torch.Tensor, cand: torch.Tensor, k: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """conf [B, W] float, cand [B, W] bool, k [B] int32, threshold [B] float -> commit [B, W] bool: per
    sequence, threshold[b] > 0 commits candidates with conf >= threshold[b] plus the best one, else the
    k[b] best candidates (ties to the lower index). Spec: ``torch_ref.select.select_commits``."""
    return backend.pick("select_commits", _select.select_commits, conf.device)(conf, cand, k, threshold)
