"""Remasking strategies: which masked positions of the current block a step commits.

Legend: L canvas length. ``conf`` holds −inf for positions that are not candidates
(already committed). Fixed schedule = LLaDA (top-k with k from ``commit_schedule``, per-row 1-D
``torch.topk`` over the full canvas row like the reference, so ties break the same way); threshold and
factor = Fast-dLLM's parallel rules (LLADA-SPEC.md §5.1).
"""
from __future__ import annotations

import torch

from unmask.server.engine.params import DiffusionParams


def select_fixed(conf: torch.Tensor, k: int) -> list[int]:
    """conf [L] -> canvas positions of the k most confident candidates (1-D topk, the reference's tie order)."""
    if k <= 0:
        return []
    return torch.topk(conf, k).indices.tolist()


def select_threshold(conf: torch.Tensor, tau: float) -> list[int]:
    """Commit every candidate with conf ≥ τ, OR the single most confident (Fast-dLLM, 2025-11 fix)."""
    cand = conf > float("-inf")
    if not bool(cand.any()):
        return []
    chosen = cand & (conf >= tau)
    chosen[int(torch.argmax(conf))] = True
    return chosen.nonzero(as_tuple=True)[0].tolist()


def select_factor(conf: torch.Tensor, f: float) -> list[int]:
    """Sort candidates by conf descending c₁ ≥ c₂ ≥ …; accept the first n while c_n ≥ 1 − f/(n+1)
    (the first always). Reproduces Fast-dLLM's quirk: a break at the last index accepts all."""
    cand_idx = (conf > float("-inf")).nonzero(as_tuple=True)[0]
    n = cand_idx.numel()
    if n == 0:
        return []
    order = torch.argsort(conf[cand_idx], descending=True, stable=True)
    sorted_c = conf[cand_idx][order].tolist()
    top = n
    for i in range(1, n):
        if sorted_c[i] < 1.0 - f / (i + 2):
            top = i
            break
    if top == n - 1:
        top = n
    return cand_idx[order[:top]].tolist()


def choose_commits(params: DiffusionParams, conf: torch.Tensor, k: int) -> list[int]:
    """Dispatch on the request's rule. conf [L] over the canvas (−inf = not a candidate) -> positions."""
    if params.threshold is not None:
        return select_threshold(conf, params.threshold)
    if params.factor is not None:
        return select_factor(conf, params.factor)
    return select_fixed(conf, k)
