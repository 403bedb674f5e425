"""The constrained commit rule (structured outputs), one rule of the commit policy; the grammar machinery (matchers,
masks, the compile cache) is in structured.py. Legend: B sequences of the step, W commit slots, G constrained ones.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from unmask.server.engine.commit_counts import step_k

if TYPE_CHECKING:
    from unmask.server.engine.commit_policy import CommitPlan
    from unmask.server.engine.sequence import Sequence


# A grammar is matched left to right, a diffusion step commits anywhere in its block. A constrained sequence
# therefore commits only a contiguous run starting at its leftmost masked position, so its committed text is
# always a valid prefix of the grammar and its canvas is always committed prefix + masks:
#
# 1. before the step, ``force_grammar`` commits the tokens the grammar forces (no forward needed for them);
# 2. the leftmost masked position's logits are masked by the matcher (``structured.MaskJob``, a bitmask applied
#    on device in ``apply_logit_rules``), so its proposal is always valid and always commits;
# 3. ``constrained_commits`` extends the run over the next positions while the preset's rule accepts them
#    (threshold: conf ≥ τ; factor: the i-th of the run has conf ≥ 1 − f/(i+2); fixed schedule: the step's k,
#    at least 1) *and* each proposal is a valid continuation of the tokens before it (``validate_tokens``).
#    Those positions' logits were not masked: when the model's proposal is allowed, it is exactly the token the
#    masked distribution gives with the same noise (argmax / Gumbel-max over a subset that contains the winner),
#    and its confidence is a lower bound of the masked one, so the run never commits more than the masked rule
#    would; the first disallowed proposal ends the run and becomes the next step's masked leftmost position.
# 4. once the grammar is complete and the model (or the grammar) ends it, the end token fills the rest of the
#    canvas; the request finishes as any request that produced EOS. If the budget runs out first, the output is
#    a valid but incomplete prefix and the finish reason is ``length``.
#
# A constrained block ends when it is full (not after ``steps_per_block``): a step may commit fewer tokens than
# the fixed schedule's k when a proposal is refused.


def force_grammar(seqs: list[Sequence]) -> list[tuple[list[int], list[int]]] | None:
    """Before a step: each constrained sequence's grammar-forced tokens, written into its canvas (so the forward
    sees them) -> per sequence (positions, tokens) committed, or None when no sequence is constrained."""
    if all(s.grammar is None for s in seqs):
        return None
    return [([], []) if s.grammar is None else _force_one(s) for s in seqs]


def _force_one(seq: Sequence) -> tuple[list[int], list[int]]:
    st, stats = seq.grammar, seq.grammar.compiler.stats
    t0 = time.perf_counter()
    positions, tokens, filled = [], [], 0
    while True:
        masked = (seq.canvas[seq.block_start:seq.block_end] == seq.mask_id).nonzero(as_tuple=True)[0]  # [n]
        forced = st.forced() if masked.numel() else []
        if not forced:
            break
        if st.ended():  # the grammar is complete: its end token fills every masked generation position
            pos, tok = _end_fill(seq)
            positions += pos
            tokens += tok
            filled = len(tok)
            break
        run = forced[:masked.numel()]
        pos = (masked[:len(run)] + seq.block_start).tolist()
        st.consume(run)
        seq.canvas[pos] = torch.tensor(run, dtype=seq.canvas.dtype)
        positions += pos
        tokens += run
        if len(run) < len(forced):
            break
    stats.forced_tokens += len(tokens) - filled  # end tokens are counted by _end_fill
    stats.host_s += time.perf_counter() - t0
    return positions, tokens


def _end_fill(seq: Sequence) -> tuple[list[int], list[int]]:
    """Commit the grammar's end token at every still-masked generation position (into the canvas)."""
    gen = torch.arange(seq.prompt_len, seq.gen_end)
    pos = gen[seq.canvas[seq.prompt_len:seq.gen_end] == seq.mask_id]  # [n]
    seq.canvas[pos] = seq.grammar.end_token
    seq.grammar.compiler.stats.end_tokens += pos.numel()
    return pos.tolist(), [seq.grammar.end_token] * pos.numel()


def merge_forced(commits: list[tuple[list[int], list[int]]], forced: list[tuple[list[int], list[int]]] | None):
    """The step's commits with each sequence's forced commits in front (``force_grammar``); in place."""
    if forced is not None:
        for i, (pos, tok) in enumerate(forced):
            if pos:
                commits[i] = (pos + commits[i][0], tok + commits[i][1])
    return commits


def run_length(seq: Sequence, conf: torch.Tensor) -> int:
    """How many positions of a constrained sequence's masked run (from its leftmost mask) the preset's rule
    accepts, before the grammar check. conf [n] float64 host: the run's confidences in position order."""
    p, n = seq.params, conf.numel()
    if n == 0:
        return 0
    if not p.parallel:
        return min(max(step_k(seq), 1), n)
    i = torch.arange(1, n, dtype=torch.float64)  # [n − 1] index in the run
    limit = torch.full_like(i, p.threshold) if p.threshold is not None else 1.0 - p.factor / (i + 2)
    fails = (conf[1:] < limit).nonzero(as_tuple=True)[0]
    return 1 + (int(fails[0]) if fails.numel() else n - 1)


def constrained_commits(plan: CommitPlan, conf_bw: torch.Tensor, x0_bw: torch.Tensor,
                        out: list[tuple[list[int], list[int]]]) -> None:
    """Replace each constrained sequence's commits in ``out`` by its contiguous valid run (rule above) and advance
    its matcher. conf_bw [B, W], x0_bw [B, W] on device; one extra device -> host copy of the constrained rows."""
    t0 = time.perf_counter()
    idx = torch.tensor([b for b, _ in plan.grammar], device=conf_bw.device)  # [G]
    host = torch.stack([conf_bw[idx].double(), x0_bw[idx].double()]).cpu()  # [2, G, W]
    for j, (b, seq) in enumerate(plan.grammar):
        st = seq.grammar
        slots = plan.slot_pos[b]
        run = slots[slots >= 0]  # [n] the masked run from the leftmost mask, ascending
        n = run_length(seq, host[0, j, :run.numel()])
        proposed = host[1, j, :n].long().tolist()
        ok = st.valid_prefix(proposed)
        st.compiler.stats.rejected_proposals += int(ok < n)
        tokens = proposed[:ok] if ok else [st.first_allowed()]  # the masked row is always valid; guard anyway
        positions = run[:len(tokens)].tolist()
        st.consume(tokens)
        st.compiler.stats.sampled_tokens += len(tokens)
        st.compiler.stats.sequence_steps += 1
        if st.ended():
            seq.canvas[positions] = torch.tensor(tokens, dtype=seq.canvas.dtype)
            end_pos, end_tok = _end_fill(seq)
            positions, tokens = positions + end_pos, tokens + end_tok
        out[b] = (positions, tokens)
    st.compiler.stats.steps += 1
    st.compiler.stats.host_s += time.perf_counter() - t0
