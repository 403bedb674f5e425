"""LLaDA-MoE routing and expert mixture (LLADA-SPEC.md §4).

Legend: T tokens, D hidden, E experts, I expert intermediate size, K experts per token.
"""
import torch
import torch.nn.functional as F

from unmask.kernels.torch_ref.linear import linear


def moe_route(router_logits: torch.Tensor, top_k: int, out_dtype: torch.dtype):
    """router_logits [T, E] -> (topk_weights [T, K] out_dtype, topk_ids [T, K] int64).

    Softmax in fp32 (fp64 for fp64 input), top-k of the probabilities, **no renormalisation** (the HF
    LLaDA-MoE block hard-codes ``norm_topk_prob = False``), weights cast to the activation dtype.
    """
    probs = torch.softmax(router_logits.to(torch.promote_types(router_logits.dtype, torch.float32)), dim=-1)
    w, ids = torch.topk(probs, top_k, dim=-1)  # [T, K]
    return w.to(out_dtype), ids


def moe_route_grouped(router_logits: torch.Tensor, expert_bias: torch.Tensor, top_k: int, n_group: int,
                      topk_group: int, scaling: float, out_dtype: torch.dtype):
    """LLaDA2's router. router_logits [T, E] (fp32 in the published gate), expert_bias [E] -> (topk_weights [T, K]
    out_dtype, topk_ids [T, K] int64).

    scores = sigmoid(logits) (fp32, fp64 for fp64 input); selection uses scores + expert_bias: each of the
    ``n_group`` groups of E/n_group experts is rated by the sum of its two best biased scores, the ``topk_group``
    best groups stay eligible, and the top-k biased scores among them are picked. Weights are the *unbiased*
    scores of the picks, renormalised to sum 1 (+1e-20) when K > 1, times ``scaling`` (routed_scaling_factor).
    """
    cdt = torch.promote_types(router_logits.dtype, torch.float32)
    scores = torch.sigmoid(router_logits.to(cdt))  # [T, E]
    biased = scores + expert_bias.to(cdt)  # [T, E]
    t, e = biased.shape
    grouped = biased.view(t, n_group, e // n_group)  # [T, G, E/G]
    group_score = grouped.topk(min(2, e // n_group), dim=-1).values.sum(-1)  # [T, G]
    keep = torch.zeros_like(group_score, dtype=torch.bool)
    keep.scatter_(1, group_score.topk(topk_group, dim=-1).indices, True)  # [T, G]
    eligible = keep[:, :, None].expand_as(grouped).reshape(t, e)  # [T, E]
    ids = biased.masked_fill(~eligible, float("-inf")).topk(top_k, dim=-1).indices  # [T, K]
    w = scores.gather(1, ids)  # [T, K]
    if top_k > 1:
        w = w / (w.sum(-1, keepdim=True) + 1e-20)
    return (w * scaling).to(out_dtype), ids


def fused_moe(x, w_gate_up, w_down, topk_weights, topk_ids):
    """x [T, D], w_gate_up [E, 2I, D] (gate rows then up rows), w_down [E, D, I],
    topk_weights [T, K], topk_ids [T, K] -> [T, D] in x.dtype. The expert stacks may be ``QuantizedWeight``s
    (each expert's GEMMs then follow ``linear.quantized_linear``).

    out[t] = Σ_k w[t,k] · down_e(silu(gate_e(x_t)) ⊙ up_e(x_t)) with e = ids[t,k], accumulated expert
    by expert in order 0..E-1 in x.dtype, as the HF block's ``index_add_`` loop does.
    """
    out = torch.zeros_like(x)
    inter = w_down.shape[2]
    for e in torch.unique(topk_ids).tolist():
        tok, slot = torch.nonzero(topk_ids == e, as_tuple=True)  # [n], [n]
        gu = linear(x[tok], w_gate_up[e])  # [n, 2I]
        h = F.silu(gu[:, :inter]) * gu[:, inter:]  # [n, I]
        y = linear(h, w_down[e]) * topk_weights[tok, slot, None]  # [n, D]
        out.index_add_(0, tok, y)
    return out
