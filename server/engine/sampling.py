"""Sampling controls and logprobs: the per-request parts of the batched logits stage (``commit_policy``).

Legend: M logit rows of the step, V vocab, R rows of requests that use a control, S such sequences,
E sparse (row, token, value) entries, T temperature.

What a step applies to the logits of every masked position it proposes for, in this order (vLLM v1's):

1. bans and biases: ``logit_bias`` added; EOS, EoT and every stop id −inf at generation positions before
   ``min_tokens`` (everywhere with ``ignore_eos``). One sparse list of (row, token, value) entries applied
   with ``index_put_(accumulate=True)``.
2. penalties, counted over the canvas before the step (prompt, committed tokens, suffix; masks excluded):
   ``repetition_penalty`` divides positive / multiplies negative logits of present tokens, then
   ``frequency_penalty × count`` and ``presence_penalty`` are subtracted. A diffusion step proposes for many
   positions at once, so each of them sees the same counts.
3. filters at T > 0 (greedy rows ignore them, as vLLM): on softmax(l / T), keep the ``top_k`` best, the
   smallest set of mass ≥ ``top_p`` and tokens ≥ ``min_p`` × the best; the rest get −inf.

The token is then drawn (Gumbel-max at T, ``ops.remask_confidence``, counter-based noise, so seeded draws
do not depend on the batch) from these *processed* logits, and its remasking confidence is
softmax(processed logits)[x0]: a filtered-out token has no mass. Every operation is per row on device
tensors built on the host at packing time: no host sync, and rows of requests without controls do no
work (``build`` returns None when no row of the step uses one).

CUDA graphs: the captured block step applies only the mask/EOS rules; when a step's rows use a control,
``GraphedBlockStep.run`` applies these rules to the returned logits and proposes again, eagerly (the
controls are applied "right before" the fused remask pass rather than inside the graph).

Logprobs (``logprobs`` set): ``token_logprobs`` computes log_softmax of the processed logits (over l / T at
T > 0: the distribution the token was drawn from) for the rows of those requests only, the committed token's
value and the top alternatives, in one extra device -> host copy per step that has such rows.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from unmask.server.engine.sequence import Sequence

NEG_INF = float("-inf")


@dataclasses.dataclass
class SamplingRules:
    """Per-row controls of one step, on the model's device (None parts are not applied)."""
    bias: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # [E] row, [E] token, [E] float32 value
    penalties: dict | None  # rows [R], seq [R], tokens/token_seq [K] (canvas counts), presence/frequency/repetition [S]
    filters: dict | None  # rows [R], temperature/top_p/min_p [R] float32, top_k [R] int64 (0 = off)


def build(seqs: list[Sequence], slots: list[torch.Tensor], device: torch.device) -> SamplingRules | None:
    """seqs with their rows' canvas positions slots[b] (rows concatenated in this order) -> the step's rules,
    or None when no sequence uses a control (the common case pays nothing)."""
    ps = [s.params for s in seqs]
    if not any(p.logit_bias or p.bans_stops or p.uses_penalties or p.uses_filters for p in ps):
        return None
    starts = torch.cumsum(torch.tensor([0] + [s.numel() for s in slots]), 0).tolist()
    bias = _bias_entries(seqs, slots, starts)
    pen = _penalties(seqs, slots, starts) if any(p.uses_penalties for p in ps) else None
    filt = _filters(seqs, slots, starts) if any(p.uses_filters for p in ps) else None

    def dev(x):
        return {k: v.to(device) for k, v in x.items()} if x is not None else None

    return SamplingRules(None if bias is None else tuple(t.to(device) for t in bias), dev(pen), dev(filt))


def _bias_entries(seqs, slots, starts):
    """(row, token, value) for every row's logit_bias and bans, built per sequence with tensor ops."""
    rows, toks, vals = [], [], []

    def add(row_idx: torch.Tensor, tokens: list[int], values: list[float]) -> None:
        rows.append(row_idx.repeat_interleave(len(tokens)))
        toks.append(torch.tensor(tokens).repeat(row_idx.numel()))
        vals.append(torch.tensor(values, dtype=torch.float32).repeat(row_idx.numel()))

    for seq, pos, a in zip(seqs, slots, starts):
        p, idx = seq.params, torch.arange(a, a + pos.numel())
        if p.logit_bias:
            add(idx, [t for t, _ in p.logit_bias], [v for _, v in p.logit_bias])
        if p.bans_stops and seq.ban_ids:
            banned = idx if p.ignore_eos else idx[pos - seq.prompt_len < p.min_tokens]
            add(banned, list(seq.ban_ids), [NEG_INF] * len(seq.ban_ids))
    if not rows:
        return None
    return torch.cat(rows), torch.cat(toks), torch.cat(vals)


def _rows(seqs, slots, starts, use):
    """Row indices [R] and their sequence's index among the users [R], for sequences with use(params)."""
    rows, owner, users = [], [], []
    for seq, pos, a in zip(seqs, slots, starts):
        if use(seq.params):
            rows.append(torch.arange(a, a + pos.numel()))
            owner.append(torch.full((pos.numel(),), len(users)))
            users.append(seq)
    return torch.cat(rows), torch.cat(owner), users


def _penalties(seqs, slots, starts) -> dict:
    rows, owner, users = _rows(seqs, slots, starts, lambda p: p.uses_penalties)
    present = [s.canvas[s.canvas != s.mask_id] for s in users]
    return {"rows": rows, "seq": owner, "tokens": torch.cat(present),
            "token_seq": torch.cat([torch.full((t.numel(),), i) for i, t in enumerate(present)]),
            "presence": torch.tensor([s.params.presence_penalty for s in users], dtype=torch.float32),
            "frequency": torch.tensor([s.params.frequency_penalty for s in users], dtype=torch.float32),
            "repetition": torch.tensor([s.params.repetition_penalty for s in users], dtype=torch.float32)}


def _filters(seqs, slots, starts) -> dict:
    rows, owner, users = _rows(seqs, slots, starts, lambda p: p.uses_filters)

    def per_row(field, dtype):
        return torch.tensor([getattr(s.params, field) for s in users], dtype=dtype)[owner]

    return {"rows": rows, "temperature": per_row("temperature", torch.float32),
            "top_p": per_row("top_p", torch.float32), "min_p": per_row("min_p", torch.float32),
            "top_k": per_row("top_k", torch.int64)}


def apply(logits: torch.Tensor, rules: SamplingRules) -> torch.Tensor:
    """logits [M, V] (modified in place and returned): bans/biases, penalties, filters (module docstring)."""
    if rules.bias is not None:
        rows, toks, vals = rules.bias
        logits.index_put_((rows, toks), vals.to(logits.dtype), accumulate=True)
    if rules.penalties is not None:
        _apply_penalties(logits, rules.penalties)
    if rules.filters is not None:
        _apply_filters(logits, rules.filters)
    return logits


def _apply_penalties(logits: torch.Tensor, pen: dict) -> None:
    rows, seq = pen["rows"], pen["seq"]
    s, v = pen["presence"].shape[0], logits.shape[1]
    counts = torch.zeros(s, v, dtype=torch.float32, device=logits.device)  # [S, V]
    counts.index_put_((pen["token_seq"], pen["tokens"]), torch.ones_like(pen["tokens"], dtype=torch.float32),
                      accumulate=True)
    c = counts[seq]  # [R, V]
    cdt = torch.promote_types(logits.dtype, torch.float32)
    lr = logits[rows].to(cdt)  # [R, V]
    rep = pen["repetition"][seq].to(cdt)[:, None]  # [R, 1]
    lr = torch.where(c > 0, torch.where(lr > 0, lr / rep, lr * rep), lr)
    lr = lr - pen["frequency"][seq].to(cdt)[:, None] * c - pen["presence"][seq].to(cdt)[:, None] * (c > 0)
    logits[rows] = lr.to(logits.dtype)


def _apply_filters(logits: torch.Tensor, f: dict) -> None:
    rows = f["rows"]
    v = logits.shape[1]
    cdt = torch.promote_types(logits.dtype, torch.float32)
    scaled = logits[rows].to(cdt) / f["temperature"].to(cdt)[:, None]  # [R, V]
    sorted_l, order = torch.sort(scaled, dim=1, descending=True, stable=True)  # [R, V]
    rank = torch.arange(v, device=logits.device)[None, :]  # [1, V]
    k = torch.where(f["top_k"] > 0, f["top_k"], v)[:, None]  # [R, 1]
    keep = rank < k
    probs = torch.softmax(sorted_l.masked_fill(~keep, NEG_INF), dim=1)  # [R, V] after top-k
    keep &= (torch.cumsum(probs, dim=1) - probs) < f["top_p"].to(cdt)[:, None]
    keep &= probs >= f["min_p"].to(cdt)[:, None] * probs[:, :1]
    keep[:, 0] = True  # the best token always stays
    drop = torch.zeros_like(keep).scatter_(1, order, ~keep)  # [R, V] in vocab order
    logits[rows] = logits[rows].masked_fill(drop, NEG_INF)


@dataclasses.dataclass
class LogprobRows:
    """Rows of requests that asked for logprobs (built with the commit plan)."""
    rows: torch.Tensor  # [R] int64 device: logit rows
    temperature: torch.Tensor  # [R] float32 device
    seqs: list  # [R] host: each row's Sequence
    batch_index: list[int]  # [R] host: its sequence's index in the step
    positions: list[int]  # [R] host: each row's canvas position
    top_n: list[int]  # [R] host: alternatives wanted


def logprob_rows(seqs: list[Sequence], slots: list[torch.Tensor], device: torch.device) -> LogprobRows | None:
    if all(s.params.logprobs is None for s in seqs):
        return None
    rows, owners, index, positions = [], [], [], []
    start = 0
    for b, (seq, pos) in enumerate(zip(seqs, slots)):
        if seq.params.logprobs is not None:
            rows += range(start, start + pos.numel())
            owners += [seq] * pos.numel()
            index += [b] * pos.numel()
            positions += pos.tolist()
        start += pos.numel()
    return LogprobRows(torch.tensor(rows, device=device),
                       torch.tensor([s.params.temperature for s in owners], dtype=torch.float32, device=device),
                       owners, index, positions, [s.params.logprobs for s in owners])


def token_logprobs(lp: LogprobRows, logits: torch.Tensor, x0: torch.Tensor,
                   out: list[tuple[list[int], list[int]]]) -> None:
    """Record, on each asking sequence, (logprob, top ids, top logprobs) of every token committed this step
    (``Sequence.token_logprobs``, by canvas position). logits [M, V] processed, x0 [M]; ``out`` the step's
    commits per sequence."""
    cdt = torch.promote_types(logits.dtype, torch.float32)
    t = lp.temperature.to(cdt)[:, None]
    lr = logits[lp.rows].to(cdt)
    logp = torch.log_softmax(torch.where(t > 0, lr / t.clamp(min=1e-30), lr), dim=1)  # [R, V]
    chosen = logp.gather(1, x0[lp.rows][:, None])  # [R, 1]
    n = max(lp.top_n)
    top_v, top_i = torch.topk(logp, n, dim=1) if n else (chosen[:, :0], chosen[:, :0].long())
    host = torch.cat([chosen.double(), top_v.double(), top_i.double()], 1).cpu()  # [R, 1 + 2n]
    committed = [set(pos) for pos, _ in out]
    for r, (seq, b, p, k) in enumerate(zip(lp.seqs, lp.batch_index, lp.positions, lp.top_n)):
        if p in committed[b]:
            row = host[r]
            seq.token_logprobs[p] = (float(row[0]), [int(i) for i in row[1 + n:1 + n + k]],
                                     [float(x) for x in row[1:1 + k]])
