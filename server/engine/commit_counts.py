"""Commit counts: how many positions a step of the commit policy commits, and which ones among equal confidences.

Legend: B sequences of the step, W commit slots per sequence.

- The fixed schedules: LLaDA's (a block's masks split over its steps, ``commit_schedule``), LLaDA2's minimum
  counts (its block length split the same way), Dream's timestep rule (``dream_k``), LLaDA2.1 editing's one per
  step; ``step_k`` picks a sequence's count for its current step.
- ``ranked_counts``: the per-sequence count on device for the fixed schedule, the factor rule and LLaDA2's strict
  threshold with a minimum count, with the sequences whose k-th best ties the next;
  ``reference_topk`` resolves those ties in the reference's own ``torch.topk`` order.
- ``ranked_commits``: a step's commits from those counts (``ops.select_commits`` on the proposals' device, one copy
  to the host, then the ties and LLaDA2.1's edits).
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import torch

from unmask.kernels import ops

if TYPE_CHECKING:
    from unmask.server.engine.commit_policy import CommitPlan
    from unmask.server.engine.sequence import Sequence

NEG_INF = float("-inf")


def commit_schedule(num_masked: int, steps: int) -> list[int]:
    """LLaDA ``get_num_transfer_tokens``: n // s per step, plus one for the first n % s steps."""
    base, rem = divmod(num_masked, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


def step_k(seq: Sequence) -> int:
    """Tokens the fixed schedule commits at this step of the current block (Dream's ``alg``: its timestep rule)."""
    if seq.params.alg is not None:
        return dream_k(int(seq.masked_in_block().sum()), seq.step_in_block, seq.steps_per_block)
    if seq.editing is not None:  # LLaDA2.1: the minimum count is 1 while masks remain
        return int(bool(seq.masked_in_block().any()))
    return seq.plan[seq.step_in_block] if seq.step_in_block < len(seq.plan) else 0


DREAM_EPS = 1e-3
"""The last timestep of Dream's ``diffusion_generate`` schedule (its ``eps`` default)."""


@functools.lru_cache(maxsize=256)
def _dream_timesteps(steps: int) -> torch.Tensor:
    return torch.linspace(1, DREAM_EPS, steps + 1)  # [steps + 1] float32, as the reference


def dream_k(masked: int, step: int, steps: int) -> int:
    """Dream's commit count at ``step`` of ``steps`` with ``masked`` masks left: ``int(masked · (1 − s/t))`` in
    float32 as its ``diffusion_generate`` computes it, every mask at the last step."""
    if step >= steps - 1:
        return masked
    ts = _dream_timesteps(steps)
    t, s = ts[step], ts[step + 1]
    return int(torch.tensor(masked) / 1 * (1 - s / t))


def ranked_counts(conf: torch.Tensor, cand: torch.Tensor, plan: CommitPlan):
    """conf [B, W] (−inf off candidates), cand [B, W] -> (k [B] int64: how many best candidates each sequence
    commits, fixed schedule, factor rule or LLaDA2's strict threshold with a minimum count (every candidate with
    conf > τ when there are at least the schedule's k of them, else the min(k, n) best); tied [B] bool: a
    fixed-count k-th best equals the next one, so which of them commits is the reference's ``torch.topk``
    order, not ours)."""
    sorted_c = torch.sort(conf.double(), dim=1, descending=True).values  # [B, W], candidates first
    n = cand.sum(1)  # [B]
    k = plan.k.long()  # [B]
    if plan.uses_factor:
        k = torch.where(plan.factor > 0, factor_k(sorted_c, n, plan.factor), k)
    if plan.strict is not None:  # compared in the confidences' dtype, as the reference compares
        above = (conf > plan.strict.to(conf.dtype)[:, None]).sum(1)  # [B] (NaN: never above)
        k = torch.where(plan.strict.isnan(), k, torch.maximum(above, torch.minimum(k, n)))
    fixed = (plan.factor == 0) & (plan.threshold == 0) & (k > 0) & (k < n)
    last = sorted_c.gather(1, (k - 1).clamp(min=0)[:, None])[:, 0]  # [B] the k-th best
    nxt = sorted_c.gather(1, k.clamp(max=conf.shape[1] - 1)[:, None])[:, 0]  # [B] the (k+1)-th
    return k, fixed & (last == nxt)


def factor_k(sorted_c: torch.Tensor, n: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Fast-dLLM's factor rule as a count. sorted_c [B, W] float64 candidates' confidences c_0 ≥ c_1 ≥ …
    (then −inf), n [B] candidates, factor [B] -> k [B] int64: the first i ≥ 1 with c_i < 1 − f/(i+2), else
    all n; Fast-dLLM's quirk kept: a break at the last index accepts all."""
    i = torch.arange(sorted_c.shape[1], device=sorted_c.device)  # [W]
    limit = 1.0 - factor[:, None] / (i + 2).double()  # [B, W]
    fails = (i >= 1) & (i < n[:, None]) & (sorted_c < limit)  # [B, W]
    first = torch.where(fails.any(1), fails.int().argmax(1), n)  # [B]
    return torch.where(first == n - 1, n, first)


def reference_topk(plan: CommitPlan, tied: torch.Tensor, conf_bw: torch.Tensor, x0_bw: torch.Tensor,
                   k: torch.Tensor, out: list[tuple[list[int], list[int]]]) -> None:
    """Fixed-schedule commits exactly as the reference picks them, for the sequences whose k-th best confidence
    ties the next: ``torch.topk`` on the host over the row the reference ranks (``CommitPlan.topk_row``: the canvas
    [L] or, LLaDA2, the block; −inf off candidates), whose order among equal confidences is topk's own. One 2-D
    ``topk`` per (row length, k) group: row by row it picks the same indices, in the same order, as the
    reference's 1-D call on that row. A pick off the candidates (topk reaching −inf, where a candidate's own
    confidence can be −inf too: ``confidence_eos_eot_inf``) is dropped, as the reference's write of a position that
    is not masked leaves it unchanged. tied [T] host batch indices, conf_bw [B, W] (−inf off candidates) and
    x0_bw [B, W] (device), k [B] host -> ``out[i]`` replaced by (canvas positions, tokens)."""
    conf_h, x0_h, cand_h = conf_bw.cpu(), x0_bw.cpu(), plan.cand.cpu()  # [B, W] each (no copy on CPU)
    groups: dict[tuple[int, int], list[int]] = {}
    for i in tied.tolist():
        groups.setdefault((plan.topk_row[i][1], int(k[i])), []).append(i)
    for (length, kk), rows in groups.items():
        g = torch.tensor(rows)  # [G]
        origin = torch.tensor([plan.topk_row[i][0] for i in rows])[:, None]  # [G, 1]
        pos = plan.slot_pos[g]  # [G, W] canvas positions (padding slots: −1)
        at = torch.where(pos >= 0, pos - origin, length)  # [G, W] row positions, padding to a spare column
        canvas = torch.full((len(rows), length + 1), NEG_INF, dtype=conf_h.dtype).scatter_(1, at, conf_h[g])
        tokens = torch.zeros(len(rows), length + 1, dtype=x0_h.dtype).scatter_(1, at, x0_h[g])  # [G, L + 1]
        is_cand = torch.zeros(len(rows), length + 1, dtype=torch.bool).scatter_(1, at, cand_h[g])  # [G, L + 1]
        chosen = torch.topk(canvas[:, :length], kk, dim=1).indices  # [G, k] row positions
        kept = is_cand.gather(1, chosen).tolist()  # [G, k]
        for i, c, t, ok in zip(rows, (chosen + origin).tolist(), tokens.gather(1, chosen).tolist(), kept):
            out[i] = ([p for p, keep in zip(c, ok) if keep], [x for x, keep in zip(t, ok) if keep])


def ranked_commits(plan: CommitPlan, conf_bw: torch.Tensor, x0_bw: torch.Tensor, edits: torch.Tensor | None):
    """conf_bw / x0_bw [B, W] (−inf off candidates), edits [B, W] or None -> per sequence (canvas positions, tokens):
    counts and threshold picks on the proposals' device (``select_commits``), one device -> host copy, then
    fixed-count ties in the reference's order (``reference_topk``) and LLaDA2.1's edits."""
    w = conf_bw.shape[1]
    k, tied = ranked_counts(conf_bw, plan.cand, plan)  # [B], [B]
    commit = ops.select_commits(conf_bw, plan.cand, k.to(torch.int32), plan.threshold.to(conf_bw.dtype))
    picks = torch.where(commit, x0_bw, -1)  # [B, W] committed tokens, −1 elsewhere
    parts = [picks, tied[:, None].long(), k[:, None]] + ([] if edits is None else [edits])
    picked = torch.cat(parts, 1).cpu()  # [B, W + 2 (+ W)]
    out = []
    for pos, tok in zip(plan.slot_pos, picked[:, :w]):
        hit = tok >= 0
        out.append((pos[hit].tolist(), tok[hit].tolist()))
    tied = picked[:, w].nonzero(as_tuple=True)[0]  # [T] host
    if tied.numel():
        reference_topk(plan, tied, conf_bw, x0_bw, picked[:, w + 1], out)
    if edits is not None:
        for i, (pos, tok) in enumerate(zip(plan.slot_pos, picked[:, w + 2:])):
            hit = tok >= 0
            if hit.any():
                out[i] = (out[i][0] + pos[hit].tolist(), out[i][1] + tok[hit].tolist())
    return out
