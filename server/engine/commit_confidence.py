"""Confidence rules that replace the remask confidence for some rows before the commit selection: the
reference's ``confidence_eos_eot_inf`` (LLADA-SPEC.md §1.5) and Dream's ``topk_margin`` / ``entropy`` (its
``sample_tokens``). Legend: M logit rows, V vocab, R rows a rule applies to.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from unmask.server.engine.commit_counts import NEG_INF

if TYPE_CHECKING:
    from unmask.server.engine.commit_policy import CommitPlan


def eos_eot_confidence(plan: CommitPlan, logits: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor,
                       eos_id: int, eot_id: int | None) -> torch.Tensor:
    """The reference's ``confidence_eos_eot_inf`` as it behaves (LLADA-SPEC.md §1.5): the confidence is
    softmax(logits)[x0] with the EoT logit −inf, and the EOS logit too at T = 0. conf [M] -> [M] (a copy)."""
    rows = plan.eos_eot_rows
    lf = logits[rows].to(torch.promote_types(logits.dtype, torch.float32))  # [R, V] a copy
    if eot_id is not None:
        lf[:, eot_id] = NEG_INF
    lf[:, eos_id] = torch.where(plan.eos_eot_greedy, NEG_INF, lf[:, eos_id])
    c = torch.softmax(lf, dim=-1).gather(1, x0[rows, None])[:, 0].to(logits.dtype)  # [R], rounded as remask
    conf = conf.clone()
    conf[rows] = c.to(conf.dtype)
    return conf


def dream_confidence(plan: CommitPlan, logits: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
    """Dream's ``topk_margin`` (top-1 minus top-2 probability) and ``entropy`` (Σ p·log(p + 1e−10)) confidences of
    the plan's Dream rows, from softmax(logits / T) (T = 0: the logits) in the logits dtype, as its
    ``sample_tokens``. conf [M] -> [M] (a copy)."""
    rows, entropy, temp = plan.dream_conf
    lf = logits[rows] / torch.where(temp > 0, temp, 1.0).to(logits.dtype)[:, None]  # [R, V]
    probs = torch.softmax(lf, dim=-1)  # [R, V]
    top2 = torch.topk(probs, 2, dim=-1).values  # [R, 2]
    c = torch.where(entropy, (probs * torch.log(probs + 1e-10)).sum(-1), top2[:, 0] - top2[:, 1])  # [R]
    conf = conf.clone()
    conf[rows] = c.to(conf.dtype)
    return conf
