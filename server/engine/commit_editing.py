"""LLaDA2.1's token editing, a rule of the commit policy: which committed positions a step rewrites, and when an
editing block ends.

Legend: B sequences of the step, W commit slots per sequence.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from unmask.server.engine.commit_policy import CommitPlan
    from unmask.server.engine.sequence import Sequence


def editing_block_finished(seq: Sequence, masked_left: int, changed: bool) -> bool:
    """LLaDA2.1 editing, after a step: the block ends when the step changed nothing, or when it is full and its
    ``max_post_steps`` edit-only steps have run (the reference's checks, moved to the end of the step). A cap of
    block_length + max_post_steps steps bounds a model that keeps proposing the mask token."""
    p = seq.params
    return (not changed or (masked_left == 0 and seq.post_steps >= p.max_post_steps)
            or seq.step_in_block >= p.block_length + p.max_post_steps)


def edit_slots(plan: CommitPlan, conf_bw: torch.Tensor, x0_bw: torch.Tensor) -> torch.Tensor:
    """LLaDA2.1's edits: committed (unmasked) slots whose proposal differs from their token with confidence above
    the editing threshold (compared in the confidences' dtype). conf_bw/x0_bw [B, W] -> [B, W] int64 proposed
    token where a slot is rewritten, else −1."""
    current, thr = plan.editing
    edit = (~plan.cand & (current >= 0) & (x0_bw != current)
            & (conf_bw > thr.to(conf_bw.dtype)[:, None]))  # [B, W] (NaN threshold: never)
    return torch.where(edit, x0_bw, -1)


