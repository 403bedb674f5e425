"""Commit policy: every rule that decides what a denoising step commits, for the eager and graphed paths.

Legend: B sequences of the step, W commit slots per sequence, M logit rows, V vocab, L canvas length.

A step's rows are packed by ``forward_inputs.build_inputs`` (one packer for both paths); then, on either
path, the same two calls:

    propose(logits [M, V], rules)      apply_logit_rules, then ops.remask_confidence -> x0 [M], conf [M]
                                       (inside the captured CUDA graph on the graphed path)
    select(plan, logits, x0, conf)     confidence rules, k rule, ops.select_commits on [B, W]; one
                                       device -> host copy of the picked tokens -> per-sequence commits

This module holds the per-step plan and those two calls; the rules they apply live beside it, one job each:
``commit_counts`` (how many a step commits: schedules, factor, LLaDA2's minimum counts, ties in the reference's
order), ``commit_confidence`` (confidence_eos_eot_inf, Dream's margin / entropy), ``commit_editing`` (LLaDA2.1's
token edits) and ``commit_constrained`` (the structured-output rule).

Where each rule runs, and why:

- Which positions may commit (``candidates``) and the LLaDA k schedule (``commit_schedule``, ``step_k``):
  host ints from the sequence's state, shipped with the step's inputs (k [B], threshold [B], factor [B]).
- Logit rules (``apply_logit_rules``): the mask token −inf for non-exact requests (fast modes never
  propose it, so blocks progress), EOS −inf for ``logits_eos_inf``. Per-row bias vectors, so the same code
  runs inside a CUDA graph. This is the one batched logits stage before the commit policy: the sampling
  controls (top-p/top-k/min-p, penalties, logit bias, min_tokens / ignore_eos bans) are ``LogitRules.sampling``
  (``sampling.py``: eager, and applied after the graph's replay on the graphed path); logprobs are read in
  ``select`` from the processed logits for the rows that asked; a grammar constraint adds its allowed-token
  mask here (``LogitRules.grammar``: the leftmost masked position of each constrained sequence) and, as a
  commit rule, replaces those sequences' commits by their valid contiguous run (``constrained_commits``, at
  the end of this module).
- Fixed schedule (top k) and threshold (conf ≥ τ plus the best): on device, ``ops.select_commits`` (the
  Triton kernel on CUDA, its torch spec on CPU), one call for the whole batch.
- Factor (accept the n best while c_n ≥ 1 − f/(n+1)): on device, vectorised: sort, first failing rank,
  then the same top-k selection with that k.
- ``confidence_eos_eot_inf``: on device, vectorised over the rows of such requests (one softmax over those
  rows of the logits, which both paths keep).
- ``random`` remasking: its confidences are drawn on the host. The reference draws
  ``torch.rand(L, generator=seq.generator)`` from the request's CPU generator at every step (forward-free
  ones included); a device generator would give other numbers and break exact parity. The draw is one
  call per such sequence, at packing time; only its [W] values travel to the device with the inputs.

Ties: ``ops.select_commits`` orders equal confidences by position (lower first); the reference's 1-D
``torch.topk`` order among ties is implementation-defined (it depends on row length and device), so a
fixed-count sequence whose k-th best ties the next takes ``reference_topk`` (the reference's own call, on the
host). On CPU a step whose sequences all commit fixed counts takes it for every sequence (host ranking costs
nothing extra there), skipping the device ranking.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import TYPE_CHECKING

import numpy as np
import torch

from unmask.kernels import ops
from unmask.server.engine import sampling, structured
from unmask.server.engine.commit_confidence import dream_confidence, eos_eot_confidence
from unmask.server.engine.commit_constrained import constrained_commits
from unmask.server.engine.commit_counts import NEG_INF, ranked_commits, reference_topk, step_k
from unmask.server.engine.commit_editing import edit_slots

if TYPE_CHECKING:
    from unmask.server.engine.params import DiffusionParams
    from unmask.server.engine.sequence import Sequence

_SEED_MASK = (1 << 63) - 1


def candidates(seq: Sequence) -> torch.Tensor:
    """[C] int64 canvas positions that may be committed this step (ascending).

    Exact mode follows the reference: every masked generation position up to the block end, so a position
    that received the mask token itself as its prediction stays eligible later. Other modes, and every mode of
    a family with the strict-threshold rule (LLaDA2, whose reference looks at the block only), consider the
    current block only (Fast-dLLM)."""
    lo = seq.prompt_len if seq.params.is_exact and seq.threshold is None else seq.block_start
    if seq.editing is not None:  # LLaDA2.1 editing: every generated position of the block, masked or not
        return torch.arange(max(lo, seq.prompt_len), seq.block_end)
    return torch.from_numpy(np.flatnonzero(seq.canvas_np[lo:seq.block_end] == seq.mask_id) + lo)


def needs_forward(seq: Sequence) -> bool:
    """A fixed-schedule step that commits nothing changes nothing at any temperature: skip its forward. A
    constrained sequence needs one while its block has masks the grammar did not force."""
    if seq.grammar is not None:
        return bool(seq.masked_in_block().any())
    return seq.params.parallel or seq.threshold is not None or step_k(seq) > 0


def skip_step(seq: Sequence) -> None:
    """A forward-free step still draws random remasking's noise, in the reference's order."""
    if seq.params.remasking == "random":
        torch.rand(seq.length, generator=seq.generator)


def block_finished(seq: Sequence, masked_left: int) -> bool:
    """After a step: does the current block end? A fixed schedule ends it after steps_per_block steps (the
    plan sums to its masks). Once nothing is masked the remaining steps commit nothing; they are skipped
    unless random remasking must still draw its noise in the reference's order."""
    p = seq.params
    if seq.grammar is not None:  # constrained: the block ends when it is full, whatever the schedule
        return masked_left == 0
    if masked_left == 0 and (p.parallel or p.remasking != "random"):
        return True
    if seq.threshold is not None:  # LLaDA2: the block's steps are spent (a mask proposal keeps a position masked)
        return seq.step_in_block >= seq.steps_per_block
    return not p.parallel and seq.step_in_block >= seq.steps_per_block


def finishes_on_stop(params: DiffusionParams, stop_in_final_prefix: bool, all_blocks_done: bool) -> bool:
    """EOS/EoT in the final prefix finishes the request at once with early stop, else at the end."""
    return stop_in_final_prefix and (params.early_stop or all_blocks_done)


def row_seed(seed: int, step: int, position: int) -> int:
    """Per-(request, step, position) noise seed: independent of what else is in the batch."""
    return ((seed * 0x9E3779B97F4A7C15 + step) * 0xBF58476D1CE4E5B9 + position) & _SEED_MASK


@dataclasses.dataclass
class LogitRules:
    """Per logit row, on the model's device: what the batched logits stage applies before proposing."""
    temperature: torch.Tensor  # [M] float32: 0 = argmax, else Gumbel-max at T
    seeds: torch.Tensor  # [M] int64: counter-based noise seed of the row (``row_seed``)
    mask_bias: torch.Tensor  # [M] float32: −inf on rows that may not propose the mask token, else 0
    eos_bias: torch.Tensor  # [M] float32: −inf on rows of logits_eos_inf requests, else 0
    sampling: sampling.SamplingRules | None = None  # sampling controls, bans, penalties (None: no row uses one)
    grammar: structured.MaskJob | None = None  # grammar masks of constrained rows (None: no sequence has one)
    biases: bool = True  # host: some row has a −inf mask or EOS bias (eager steps skip the adds when none has;
    # a captured graph always applies them)


@dataclasses.dataclass
class CommitPlan:
    """What ``select`` needs besides the proposals. Slot j of sequence b is its j-th row's canvas position."""
    slot_pos: torch.Tensor  # [B, W] int64 host: canvas position of each slot (−1 = padding)
    topk_row: list[tuple[int, int]]  # [B] host: (first canvas position, length) of the row the reference's topk
    # ranks: the whole canvas (LLaDA) or the current block (LLaDA2)
    row_slot: torch.Tensor  # [M] int64 device: flat slot b·W + j of each logit row
    cand: torch.Tensor  # [B, W] bool device: the slot is still masked and may commit
    k: torch.Tensor  # [B] int32 device: fixed-schedule count (ignored where threshold > 0 or factor > 0)
    threshold: torch.Tensor  # [B] float64 device: Fast-dLLM threshold τ, 0 = none
    strict: torch.Tensor | None  # [B] float64 device: LLaDA2's strict threshold with minimum count (NaN = not
    # that rule), or None when no sequence uses it
    factor: torch.Tensor  # [B] float64 device: Fast-dLLM factor f, 0 = none
    uses_factor: bool  # host: some sequence has factor > 0 (else the factor rule's ops are skipped)
    fixed_counts: bool  # host: every sequence commits its fixed count k (no threshold, factor, strict rule, editing)
    random_conf: torch.Tensor | None  # [B, W] float32 device: host-drawn confidences (random remasking)
    is_random: torch.Tensor | None  # [B] bool device: the sequence uses random remasking
    eos_eot_rows: torch.Tensor | None  # [R] int64 device: logit rows of confidence_eos_eot_inf requests
    eos_eot_greedy: torch.Tensor | None  # [R] bool device: that row's request runs at T = 0 (EOS blocked too)
    editing: tuple[torch.Tensor, torch.Tensor] | None = None
    """LLaDA2.1 editing: (current token of each slot [B, W] int64, editing threshold [B] float64, NaN = the
    sequence does not edit), or None when no sequence edits."""
    dream_conf: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    """Rows of Dream ``alg`` requests ranked by margin or entropy: (rows [R] int64, entropy [R] bool, T [R]), or
    None."""
    logprobs: sampling.LogprobRows | None = None  # rows of requests that asked for logprobs
    grammar: list[tuple[int, Sequence]] | None = None  # (batch index, sequence) of constrained ones, else None


def build_rules(seqs: list[Sequence], slots: list[torch.Tensor], device: torch.device) -> LogitRules:
    """seqs with their row positions slots[b] [n_b] int64 (rows are concatenated in this order) -> rules."""
    counts = [s.numel() for s in slots]  # [B]

    seeds = np.zeros(sum(counts), dtype=np.int64)  # the noise only matters at T > 0 (only those rows' seeds are read)
    if any(s.params.temperature > 0 for s in seqs):
        for seq, pos, a in zip(seqs, slots, itertools.accumulate(counts, initial=0)):
            if seq.params.temperature > 0:
                seeds[a:a + pos.numel()] = [row_seed(seq.seed, seq.num_steps, p) for p in pos.tolist()]
    mask_bias = [0.0 if s.params.is_exact or s.threshold is not None else NEG_INF for s in seqs]
    eos_bias = [NEG_INF if s.params.logits_eos_inf else 0.0 for s in seqs]
    per_seq = np.array([[s.params.temperature for s in seqs], mask_bias, eos_bias], dtype=np.float32)  # [3, B]
    temperature, mask_rows, eos_rows = torch.from_numpy(  # [3, M] float32 in one copy (rows stay contiguous)
        np.repeat(per_seq, counts, axis=1)).to(device)
    return LogitRules(
        temperature=temperature, seeds=torch.from_numpy(seeds).to(device),
        mask_bias=mask_rows, eos_bias=eos_rows,
        sampling=sampling.build(seqs, slots, device), grammar=structured.mask_job(seqs, slots, device),
        biases=any(mask_bias) or any(eos_bias))


def build_plan(seqs: list[Sequence], slots: list[torch.Tensor], device: torch.device,
               rows_masked: bool = False) -> CommitPlan:
    """seqs with their row positions slots[b] [n_b] (ascending) -> the step's CommitPlan. ``rows_masked``: every
    row is a masked position (the candidates of a step without editing), so no canvas lookup is needed. Draws
    random remasking's confidences from each such sequence's generator (one draw per step, as the reference)."""
    counts = [pos.numel() for pos in slots]
    slot_np = np.full((len(slots), max(counts, default=0)), -1, dtype=np.int64)  # [B, W] (assembled on the host)
    for b, pos in enumerate(slots):
        slot_np[b, :counts[b]] = pos.numpy()
    cand_np = slot_np >= 0  # [B, W]
    if not rows_masked:
        for b, (s, pos) in enumerate(zip(seqs, slots)):
            cand_np[b, :counts[b]] = s.canvas_np[pos.numpy()] == s.mask_id
    slot_pos, cand = torch.from_numpy(slot_np), torch.from_numpy(cand_np)
    row_slot = torch.from_numpy(np.flatnonzero(slot_np >= 0))  # [M], rows are slot-major per sequence
    is_random = [s.params.remasking == "random" for s in seqs]
    rand = [torch.rand(s.length, generator=s.generator)[pos] if r else torch.zeros(pos.numel())
            for s, pos, r in zip(seqs, slots, is_random)] if any(is_random) else None
    starts = list(itertools.accumulate(counts, initial=0))  # first logit row of each sequence
    eos_eot = [(torch.arange(a, a + n), s.params.temperature == 0) for s, a, n in zip(seqs, starts, counts)
               if s.params.confidence_eos_eot_inf]
    dream = [(torch.arange(a, a + n), s.params.alg == "entropy", s.params.temperature)
             for s, a, n in zip(seqs, starts, counts) if s.params.alg in ("topk_margin", "entropy")]
    threshold, factor = torch.tensor([[(s.params.threshold or 0.0) if s.threshold is None else 0.0 for s in seqs],
                                      [s.params.factor or 0.0 for s in seqs]], dtype=torch.float64, device=device)
    return CommitPlan(
        slot_pos=slot_pos, row_slot=row_slot.to(device), cand=cand.to(device),
        topk_row=[(s.block_start, s.params.block_length) if s.threshold is not None else (0, s.length) for s in seqs],
        k=torch.tensor([step_k(s) for s in seqs], dtype=torch.int32, device=device), threshold=threshold,
        strict=torch.tensor([float("nan") if s.threshold is None else s.threshold for s in seqs],
                            dtype=torch.float64, device=device) if any(s.threshold is not None for s in seqs) else None,
        factor=factor, uses_factor=any(s.params.factor for s in seqs),
        fixed_counts=all(s.threshold is None and not s.params.threshold and not s.params.factor and s.editing is None
                         for s in seqs),
        random_conf=None if rand is None else torch.nn.utils.rnn.pad_sequence(rand, batch_first=True).to(device),
        is_random=torch.tensor(is_random, device=device) if any(is_random) else None,
        eos_eot_rows=torch.cat([r for r, _ in eos_eot]).to(device) if eos_eot else None,
        eos_eot_greedy=torch.cat([torch.full((r.numel(),), g) for r, g in eos_eot]).to(device) if eos_eot else None,
        logprobs=sampling.logprob_rows(seqs, slots, device),
        editing=None if all(s.editing is None for s in seqs) else (
            torch.nn.utils.rnn.pad_sequence([s.canvas[pos] for s, pos in zip(seqs, slots)], batch_first=True,
                                            padding_value=-1).to(device),
            torch.tensor([float("nan") if s.editing is None else s.editing for s in seqs], dtype=torch.float64,
                         device=device)),
        dream_conf=None if not dream else (
            torch.cat([r for r, _, _ in dream]).to(device),
            torch.cat([torch.full((r.numel(),), e) for r, e, _ in dream]).to(device),
            torch.cat([torch.full((r.numel(),), t, dtype=torch.float64) for r, _, t in dream]).to(device)),
        grammar=[(b, s) for b, s in enumerate(seqs) if s.grammar is not None] or None)


def apply_logit_rules(logits: torch.Tensor, rules: LogitRules, mask_id: int, eos_id: int) -> torch.Tensor:
    """logits [M, V] (modified in place and returned): the batched logits stage before the commit policy.
    Elementwise on per-row tensors only, so it can be captured in a CUDA graph."""
    if rules.biases:
        logits[:, mask_id] += rules.mask_bias.to(logits.dtype)
        logits[:, eos_id] += rules.eos_bias.to(logits.dtype)
    if rules.grammar is not None:
        rules.grammar.apply(logits)
    if rules.sampling is not None:
        sampling.apply(logits, rules.sampling)
    return logits


def propose(logits: torch.Tensor, rules: LogitRules, mask_id: int, eos_id: int):
    """logits [M, V] -> (x0 [M] int64 proposed tokens, conf [M] fp32/fp64 their confidences), after the
    logit rules (``logits`` is modified in place). The same call on the eager and the graphed path."""
    apply_logit_rules(logits, rules, mask_id, eos_id)
    return ops.remask_confidence(logits, rules.temperature, rules.seeds)


def propose_sampled(logits: torch.Tensor, rules: LogitRules):
    """The graphed path's fallback when rows use sampling controls: the captured step applied the mask/EOS
    rules only; apply the controls to its logits [M, V] (in place) and propose again -> (x0 [M], conf [M])."""
    sampling.apply(logits, rules.sampling)
    return ops.remask_confidence(logits, rules.temperature, rules.seeds)


def select(plan: CommitPlan, logits: torch.Tensor, x0: torch.Tensor, conf: torch.Tensor, eos_id: int,
           eot_id: int | None) -> list[tuple[list[int], list[int]]]:
    """The step's commits. logits [M, V] (after the logit rules), x0/conf [M] from ``propose``, rows in the
    plan's slot order -> per sequence (canvas positions, tokens). Runs on the proposals' device; one
    device -> host copy for the whole batch (two when a fixed-schedule tie needs ``reference_topk``). On CPU, where
    ranking on the host costs nothing extra, a step whose sequences all commit fixed counts takes the reference's
    own ``torch.topk`` for every sequence: the same set as the ranked pick wherever the k-th best is unique, and
    the reference's choice among ties."""
    b, w = plan.slot_pos.shape
    if plan.eos_eot_rows is not None:
        conf = eos_eot_confidence(plan, logits, x0, conf, eos_id, eot_id)
    if plan.dream_conf is not None:
        conf = dream_confidence(plan, logits, conf)
    conf_bw = conf.new_full((b * w,), NEG_INF).index_copy_(0, plan.row_slot, conf).view(b, w)  # [B, W]
    x0_bw = x0.new_zeros(b * w).index_copy_(0, plan.row_slot, x0).view(b, w)  # [B, W]
    if plan.random_conf is not None:
        conf_bw = torch.where(plan.is_random[:, None], plan.random_conf.to(conf_bw.dtype), conf_bw)
    edits = None if plan.editing is None else edit_slots(plan, conf_bw, x0_bw)  # [B, W] tokens, −1 = none
    conf_bw = torch.where(plan.cand, conf_bw, NEG_INF)
    if plan.fixed_counts and conf_bw.device.type == "cpu":  # host ranking is free: the reference's topk for all
        k = torch.minimum(plan.k.long(), plan.cand.sum(1))  # [B]
        out = [([], []) for _ in range(b)]
        reference_topk(plan, torch.arange(b), conf_bw, x0_bw, k, out)
    else:
        out = ranked_commits(plan, conf_bw, x0_bw, edits)
    if plan.grammar is not None:
        constrained_commits(plan, conf_bw, x0_bw, out)
    if plan.logprobs is not None:
        sampling.token_logprobs(plan.logprobs, logits, x0, out)
    return out
