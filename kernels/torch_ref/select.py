"""Which candidate positions of each sequence to commit this step (LLaDA top-k / Fast-dLLM threshold rule).

Legend: B sequences, W candidate slots per sequence (e.g. the current block's positions).

Sequence b commits, among its candidates (``cand[b]``):
- threshold[b] > 0 (Fast-dLLM parallel decoding): every candidate with ``conf >= threshold[b]``, and
  always the single best candidate, so every step makes progress;
- otherwise (LLaDA's fixed schedule): the ``k[b]`` best candidates (fewer if there are fewer).
"Best" orders candidates by confidence, descending, ties to the lower slot index (deterministic, unlike
``torch.topk``). A non-candidate is never committed, whatever its confidence.
"""
import torch


def candidate_rank(conf: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """conf [B, W] float, cand [B, W] bool -> rank [B, W] int64: position of each slot when candidates come
    first, by conf descending, ties by lower index (two stable sorts: by conf, then candidates first)."""
    by_conf = torch.sort(conf, dim=1, descending=True, stable=True).indices  # [B, W]
    cand_first = torch.sort((~cand).gather(1, by_conf).to(torch.uint8), dim=1, stable=True).indices  # [B, W]
    order = by_conf.gather(1, cand_first)  # [B, W] slot ids, best first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(conf.shape[1], device=conf.device).expand_as(order))
    return rank


def select_commits(conf: torch.Tensor, cand: torch.Tensor, k: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """conf [B, W] float, cand [B, W] bool, k [B] int, threshold [B] float -> commit [B, W] bool.

    threshold[b] > 0: cand & (conf >= threshold[b] | best candidate); else: cand & (rank < k[b]).
    """
    rank = candidate_rank(conf, cand)  # [B, W]
    by_threshold = (conf >= threshold[:, None]) | (rank == 0)  # [B, W]
    by_count = rank < k.to(torch.int64)[:, None]  # [B, W]
    return cand & torch.where((threshold > 0)[:, None], by_threshold, by_count)
