"""LLaDA-MoE routing and the fused expert mixture (spec: ``torch_ref/moe.py``).

Legend: T tokens, D hidden, E experts, I expert width, K experts per token, A = T·K assignments
(a = t·K + k), MB M-blocks, BM/BN/BK tile sizes.

Pipeline of ``fused_moe`` (all on the device, no host sync, no atomics):
1. ``moe_align``: assignments sorted by expert and padded to BM-row blocks (see moe_align.py);
2. gate/up grouped GEMM: per (M-block, N-tile) two fp32 accumulators ``x·W_gateᵀ`` and ``x·W_upᵀ``,
   SwiGLU in the epilogue -> h [A, I];
3. down grouped GEMM: ``h·W_downᵀ`` times the routing weight in the epilogue -> y [A, D];
4. out[t] = Σ_k y[t·K + k] in fp32, in k order, rounded once (deterministic).
Epilogues round to the activation dtype where the spec does (gate/up outputs, silu, the product, the
down output, the weighting); the final sum is fp32 (the spec adds expert by expert in the activation
dtype, which is the less accurate order; tests bound both against float64).
"""
import torch
import triton
import triton.language as tl

from unmask.kernels.quant import QuantizedWeight
from unmask.kernels.torch_ref import moe as _ref
from unmask.kernels.triton_ops._common import FP_FUSION, interpreting, mma, next_pow2, upcast
from unmask.kernels.triton_ops.moe_align import moe_align
from unmask.kernels.triton_ops.qlinear import load_dequant

__all__ = ["moe_route", "fused_moe"]

# H100 configs by average assignments per expert (A / E): (max rows, BM, BN, BK, num_warps, num_stages).
# Small M streams weights (memory-bound: narrow M, long K tiles); large M becomes a real GEMM.
_H100_CONFIGS = (
    (16, 16, 64, 128, 4, 4),
    (48, 32, 64, 128, 4, 4),
    (160, 64, 64, 64, 4, 4),
    (1 << 62, 64, 128, 64, 8, 3),
)


@triton.jit
def _route_kernel(logits_ptr, w_ptr, ids_ptr, n_tok, n_exp, stride_l, TOPK: tl.constexpr, ROWS: tl.constexpr,
                  BLOCK_E: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # [R]
    r_ok = rows < n_tok
    rows64 = rows.to(tl.int64)
    e = tl.arange(0, BLOCK_E)  # [BE]
    mask = r_ok[:, None] & (e < n_exp)[None, :]
    x = tl.load(logits_ptr + rows64[:, None] * stride_l + e[None, :], mask=mask, other=float("-inf"))
    x = tl.where(r_ok[:, None], x.to(tl.float32), 0.0)  # [R, BE]; padding rows: harmless zeros
    p = tl.exp(x - tl.max(x, axis=1)[:, None])
    p = p / tl.sum(p, axis=1)[:, None]
    p = tl.where(mask, p, -2.0)  # padding lanes lose to every real probability
    for j in tl.static_range(TOPK):
        best, arg = tl.max(p, axis=1, return_indices=True, return_indices_tie_break_left=True)  # [R]
        tl.store(w_ptr + rows64 * TOPK + j, best.to(w_ptr.dtype.element_ty), mask=r_ok)
        tl.store(ids_ptr + rows64 * TOPK + j, arg.to(tl.int64), mask=r_ok)
        p = tl.where(e[None, :] == arg[:, None], -1.0, p)


def moe_route(router_logits: torch.Tensor, top_k: int, out_dtype: torch.dtype):
    """router_logits [T, E] -> (topk_weights [T, K] out_dtype, topk_ids [T, K] int64).

    fp32 softmax over experts, the K largest probabilities (ties to the lower expert id), no
    renormalisation. fp64 logits are served by the PyTorch reference.
    """
    if router_logits.dtype == torch.float64:
        return _ref.moe_route(router_logits, top_k, out_dtype)
    n_tok, n_exp = router_logits.shape
    w = torch.empty((n_tok, top_k), dtype=out_dtype, device=router_logits.device)  # [T, K]
    ids = torch.empty((n_tok, top_k), dtype=torch.int64, device=router_logits.device)  # [T, K]
    if n_tok:
        logits = router_logits if router_logits.stride(1) == 1 else router_logits.contiguous()
        block_e = next_pow2(n_exp)
        rows = max(1, min(32, 2048 // block_e))
        _route_kernel[(triton.cdiv(n_tok, rows),)](logits, w, ids, n_tok, n_exp, logits.stride(0), TOPK=top_k,
                                                   ROWS=rows, BLOCK_E=block_e, enable_fp_fusion=FP_FUSION, num_warps=4)
    return w, ids


@triton.jit
def _block_rows(sorted_ptr, block_expert_ptr, n_assign, BLOCK_M: tl.constexpr):
    """(expert, assignment ids [BM], valid [BM]) of this program's M-block; expert −1: nothing to do.

    The masks are built as [BM] comparisons: a scalar comparison broadcast into a mask is rejected by the
    interpreter of Triton 3.9 ("mask has unsupported dtype": it splats the comparison as an int32)."""
    pid_m = tl.program_id(0)
    expert = tl.load(block_expert_ptr + pid_m)
    live = (tl.zeros([BLOCK_M], tl.int32) + expert) >= 0  # [BM] expert >= 0 on every row
    a = tl.load(sorted_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M), mask=live, other=0)  # [BM]
    return expert, a, (a < n_assign) & live


@triton.jit
def _w_tile(w_base, s_base, n, kk, mask, stride_wn, stride_sn, QUANT: tl.constexpr, INT4: tl.constexpr,
            GROUP: tl.constexpr):
    """The expert's weight tile W[n, kk]ᵀ [BK, BN]: loaded as is, or (QUANT) dequantized from its codes and
    scales (``kernels/quant.py``) in fp32 inside the K loop."""
    if QUANT:
        return load_dequant(w_base, s_base, n[None, :], kk[:, None], mask, stride_wn, stride_sn, GROUP, INT4)
    return tl.load(w_base + n[None, :].to(tl.int64) * stride_wn + kk[:, None], mask=mask, other=0.0)


@triton.jit
def _gate_up_kernel(x_ptr, w_ptr, s_ptr, h_ptr, sorted_ptr, block_expert_ptr, n_assign, stride_x, stride_we, stride_wn,
                    stride_se, stride_sn, TOPK: tl.constexpr, DIM: tl.constexpr, INTER: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr,
                    IEEE: tl.constexpr, QUANT: tl.constexpr, INT4: tl.constexpr, GROUP: tl.constexpr):
    expert, a, a_ok = _block_rows(sorted_ptr, block_expert_ptr, n_assign, BLOCK_M)
    if expert < 0:
        return
    tok = (a // TOPK).to(tl.int64)  # [BM]
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] gate row (up row: INTER + n)
    n_ok = n < INTER
    w_base = w_ptr + expert.to(tl.int64) * stride_we
    s_base = s_ptr + expert.to(tl.int64) * stride_se
    acc_g = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, DIM, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)  # [BK]
        k_ok = kk < DIM
        xt = tl.load(x_ptr + tok[:, None] * stride_x + kk[None, :], mask=a_ok[:, None] & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & n_ok[None, :]  # [BK, BN]
        wg = _w_tile(w_base, s_base, n, kk, w_mask, stride_wn, stride_sn, QUANT, INT4, GROUP)
        wu = _w_tile(w_base, s_base, n + INTER, kk, w_mask, stride_wn, stride_sn, QUANT, INT4, GROUP)
        if QUANT:
            wg, wu = wg.to(xt.dtype), wu.to(xt.dtype)
        if UPCAST:
            xt, wg, wu = xt.to(tl.float32), wg.to(tl.float32), wu.to(tl.float32)
        acc_g = mma(xt, wg, acc_g, IEEE)  # [BM, BN]
        acc_u = mma(xt, wu, acc_u, IEEE)
    dt = h_ptr.dtype.element_ty
    g = acc_g.to(dt).to(tl.float32)  # the spec's gate/up GEMM output is in the activation dtype
    u = acc_u.to(dt).to(tl.float32)
    act = (g * tl.sigmoid(g)).to(dt).to(tl.float32)  # F.silu in the activation dtype
    h = (act * u).to(dt)
    tl.store(h_ptr + a.to(tl.int64)[:, None] * INTER + n[None, :], h, mask=a_ok[:, None] & n_ok[None, :])


@triton.jit
def _down_kernel(h_ptr, w_ptr, s_ptr, tw_ptr, y_ptr, sorted_ptr, block_expert_ptr, n_assign, stride_we, stride_wn,
                 stride_se, stride_sn, DIM: tl.constexpr, INTER: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr,
                 QUANT: tl.constexpr, INT4: tl.constexpr, GROUP: tl.constexpr):
    expert, a, a_ok = _block_rows(sorted_ptr, block_expert_ptr, n_assign, BLOCK_M)
    if expert < 0:
        return
    a64 = a.to(tl.int64)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] output feature
    n_ok = n < DIM
    w_base = w_ptr + expert.to(tl.int64) * stride_we
    s_base = s_ptr + expert.to(tl.int64) * stride_se
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, INTER, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)  # [BK]
        k_ok = kk < INTER
        ht = tl.load(h_ptr + a64[:, None] * INTER + kk[None, :], mask=a_ok[:, None] & k_ok[None, :], other=0.0)
        wt = _w_tile(w_base, s_base, n, kk, k_ok[:, None] & n_ok[None, :], stride_wn, stride_sn, QUANT, INT4,
                     GROUP)  # [BK, BN]
        if QUANT:
            wt = wt.to(ht.dtype)
        if UPCAST:
            ht, wt = ht.to(tl.float32), wt.to(tl.float32)
        acc = mma(ht, wt, acc, IEEE)
    dt = y_ptr.dtype.element_ty
    rw = tl.load(tw_ptr + a64, mask=a_ok, other=0.0).to(tl.float32)  # [BM] routing weight
    y = (acc.to(dt).to(tl.float32) * rw[:, None]).to(dt)  # (h @ W_downᵀ) in dtype, then × weight
    tl.store(y_ptr + a64[:, None] * DIM + n[None, :], y, mask=a_ok[:, None] & n_ok[None, :])


@triton.jit
def _topk_sum_kernel(y_ptr, out_ptr, n_tok, stride_o, TOPK: tl.constexpr, DIM: tl.constexpr, ROWS: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    t = tl.program_id(0) * ROWS + tl.arange(0, ROWS)  # [R]
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    mask = (t < n_tok)[:, None] & (d < DIM)[None, :]
    t64 = t.to(tl.int64)[:, None]
    acc = tl.zeros([ROWS, BLOCK_D], tl.float32)
    for j in tl.static_range(TOPK):
        acc += tl.load(y_ptr + (t64 * TOPK + j) * DIM + d[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + t64 * stride_o + d[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


def _config(n_assign: int, n_experts: int, dim: int, inter: int, elem_bytes: int):
    """(BM, BN gate/up, BN down, BK, num_warps, num_stages) for this batch. Under the interpreter: one
    small config whose N tiles cover the test widths (fewer programs is what makes the interpreter fast).
    fp32 (a test path on GPUs: IEEE products, no tensor cores) gets short K tiles and 2 stages so its
    tiles fit in shared memory and registers."""
    if interpreting():
        return 16, max(16, min(64, next_pow2(inter))), max(16, min(64, next_pow2(dim))), 32, 4, 1
    rows = n_assign / n_experts
    for limit, bm, bn, bk, warps, stages in _H100_CONFIGS:
        if rows <= limit:
            if elem_bytes > 2:
                return min(bm, 32), 64, 64, 32, 4, 2
            return bm, bn, bn, bk, warps, stages


def _operand(w, x: torch.Tensor):
    """(weight tensor, scales [E, N, K/G] (a dummy for dense), the kernel's QUANT/INT4/GROUP constexprs) of a
    dense [E, N, K] expert stack or a QuantizedWeight one (``kernels/quant.py``)."""
    if isinstance(w, QuantizedWeight):
        return (w.data.contiguous(), w.scales.contiguous(),
                dict(QUANT=True, INT4=w.fmt == "int4", GROUP=w.group_size))
    return w.contiguous(), torch.empty((1, 1), dtype=x.dtype, device=x.device), dict(QUANT=False, INT4=False, GROUP=1)


def fused_moe(x: torch.Tensor, w_gate_up: torch.Tensor, w_down: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
    """x [T, D], w_gate_up [E, 2I, D] (gate rows then up rows), w_down [E, D, I], topk_weights [T, K],
    topk_ids [T, K] int -> [T, D] x.dtype.

    out[t] = Σ_k w[t,k] · W_down[e] (silu(W_gate[e] x_t) ⊙ W_up[e] x_t), e = ids[t,k]; bf16/fp16/fp32
    (fp64 is served by the PyTorch reference). Deterministic: no atomics, fixed summation order. The stacks may
    be QuantizedWeights: each weight tile is dequantized in the K loop, so the codes are streamed once.
    """
    if x.dtype == torch.float64:
        return _ref.fused_moe(x, w_gate_up, w_down, topk_weights, topk_ids)
    n_tok, dim = x.shape
    n_exp, inter = w_down.shape[0], w_down.shape[2]
    top_k = topk_ids.shape[1]
    out = torch.empty_like(x)  # [T, D]
    if n_tok == 0:
        return out
    x = x if x.stride(1) == 1 else x.contiguous()
    (wgu, sgu, qgu), (wd, sd, qd) = _operand(w_gate_up, x), _operand(w_down, x)
    n_assign = n_tok * top_k
    bm, bn_up, bn_down, bk, warps, stages = _config(n_assign, n_exp, dim, inter, x.element_size())
    sorted_ids, block_expert = moe_align(topk_ids, n_exp, bm)  # [MB·BM], [MB]
    n_blocks = block_expert.numel()
    h = torch.empty((n_assign, inter), dtype=x.dtype, device=x.device)  # [A, I]
    y = torch.empty((n_assign, dim), dtype=x.dtype, device=x.device)  # [A, D]
    common = dict(BLOCK_M=bm, BLOCK_K=bk, UPCAST=upcast(x.dtype), IEEE=x.dtype == torch.float32 and not interpreting(),
                  enable_fp_fusion=FP_FUSION, num_warps=warps, num_stages=stages)
    _gate_up_kernel[(n_blocks, triton.cdiv(inter, bn_up))](
        x, wgu, sgu, h, sorted_ids, block_expert, n_assign, x.stride(0), wgu.stride(0), wgu.stride(1), sgu.stride(0),
        sgu.stride(1), TOPK=top_k, DIM=dim, INTER=inter, BLOCK_N=bn_up, **qgu, **common)
    _down_kernel[(n_blocks, triton.cdiv(dim, bn_down))](
        h, wd, sd, topk_weights.contiguous(), y, sorted_ids, block_expert, n_assign, wd.stride(0), wd.stride(1),
        sd.stride(0), sd.stride(1), DIM=dim, INTER=inter, BLOCK_N=bn_down, **qd, **common)
    block_d = min(1024, next_pow2(dim))
    rows = max(1, 2048 // block_d)
    _topk_sum_kernel[(triton.cdiv(n_tok, rows), triton.cdiv(dim, block_d))](
        y, out, n_tok, out.stride(0), TOPK=top_k, DIM=dim, ROWS=rows, BLOCK_D=block_d, enable_fp_fusion=FP_FUSION,
        num_warps=4)
    return out
