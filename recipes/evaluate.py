"""Recipe-side accuracy check: LLaDA's exact low-confidence generation at temperature 0, batched.

This is the trainer's own yardstick (periodic and final evaluation before the engine exists); the
shipped numbers in the model cards come from ``benchmarks/quality.py`` through the real engine.
Semantics follow LLADA-SPEC.md §1: per block, ``steps / num_blocks`` steps with the k_i schedule,
commit the top-k_i most confident arg-max tokens among the block's masked positions. A sequence
stops early once a stop token is committed with every position before it committed (the truncated
result can no longer change). Block-causal models (LLaDA2) use ``generate_block_causal``: blocks of absolute
positions, one token per step.

Legend: B sequences, N packed tokens, M masked rows in the current blocks, V vocab.
"""
from __future__ import annotations

import collections
import dataclasses

import torch

from recipes.sft_data import ChatEncoder
from recipes.tasks import TASKS, Example, check
from unmask.server.models.attention_meta import AttentionMetadata, packed_positions


def _schedule(n: int, steps: int) -> list[int]:
    """Tokens to commit at each of ``steps`` steps for ``n`` masked positions (reference k_i)."""
    return [n // steps + (1 if i < n % steps else 0) for i in range(steps)]


def _finished(gen: torch.Tensor, mask_id: int, stop_ids: tuple[int, ...]) -> bool:
    """gen [G]: a committed stop token with no mask before it."""
    for t in gen.tolist():
        if t == mask_id:
            return False
        if t in stop_ids:
            return True
    return False


@torch.no_grad()
def generate(model, prompts: list[list[int]], mask_id: int, stop_ids: tuple[int, ...], gen_length: int = 48,
             block_length: int = 16, steps: int = 48) -> list[list[int]]:
    """Exact LLaDA generation (T=0, low_confidence) for each prompt; returns the gen_length ids
    (positions never reached after an early stop stay ``mask_id``)."""
    assert gen_length % block_length == 0 and steps % (gen_length // block_length) == 0
    per_block = steps // (gen_length // block_length)
    device = next(model.parameters()).device
    canv = [torch.tensor(p + [mask_id] * gen_length) for p in prompts]
    plen = [len(p) for p in prompts]
    live = list(range(len(prompts)))
    for blk in range(gen_length // block_length):
        lo = blk * block_length
        sched = {b: _schedule(int((canv[b][plen[b] + lo:plen[b] + lo + block_length] == mask_id).sum()), per_block)
                 for b in live}
        for i in range(per_block):
            live = [b for b in live if not _finished(canv[b][plen[b]:], mask_id, stop_ids)]
            if not live:
                return [c[p:].tolist() for c, p in zip(canv, plen)]
            lens = [len(canv[b]) for b in live]
            hidden = model(torch.cat([canv[b] for b in live]).to(device), packed_positions(lens, device),
                           AttentionMetadata.packed(lens, device))
            offset = 0
            for b, n in zip(live, lens):
                k = sched[b][i]
                rows = torch.nonzero(canv[b][plen[b] + lo:plen[b] + lo + block_length] == mask_id).flatten()
                if k and len(rows):
                    idx = plen[b] + lo + rows
                    logits = model.compute_logits(hidden[offset + idx.to(device)]).float().cpu()  # [m, V]
                    conf, x0 = torch.softmax(logits, -1).max(-1)
                    pick = torch.topk(conf, min(k, len(rows))).indices
                    canv[b][idx[pick]] = x0[pick]
                offset += n
    return [c[p:].tolist() for c, p in zip(canv, plen)]


@torch.no_grad()
def generate_block_causal(model, prompts: list[list[int]], mask_id: int, stop_ids: tuple[int, ...],
                          gen_length: int = 48, block_length: int = 32, steps: int | None = None) -> list[list[int]]:
    """Low-confidence generation (T=0, one token per step) for a block-causal model: the current block is the
    block of absolute positions [j·s, (j+1)·s) holding the first masked position; each step commits its most
    confident masked position. The forward sees the canvas only up to that block's end (later positions cannot
    change it). ``steps`` must be ``gen_length`` (one token per step) or None."""
    assert steps in (None, gen_length), "the block-causal evaluator commits one token per step"
    device = next(model.parameters()).device
    canv = [torch.tensor(p + [mask_id] * gen_length) for p in prompts]
    plen = [len(p) for p in prompts]
    live = list(range(len(prompts)))
    while True:
        live = [b for b in live if not _finished(canv[b][plen[b]:], mask_id, stop_ids) and (canv[b] == mask_id).any()]
        if not live:
            return [c[p:].tolist() for c, p in zip(canv, plen)]
        first = [int(torch.nonzero(canv[b] == mask_id)[0]) for b in live]
        ends = [min(len(canv[b]), (f // block_length + 1) * block_length) for b, f in zip(live, first)]
        meta = dataclasses.replace(AttentionMetadata.packed(ends, device), attn_blocks=torch.full(
            (len(live),), block_length, dtype=torch.int32, device=device))
        hidden = model(torch.cat([canv[b][:e] for b, e in zip(live, ends)]).to(device), packed_positions(ends, device),
                       meta)  # [N, D]
        offset = 0
        for b, f, e in zip(live, first, ends):
            rows = f + torch.nonzero(canv[b][f:e] == mask_id).flatten()  # masked positions of the current block
            logits = model.compute_logits(hidden[offset + rows.to(device)]).float().cpu()  # [m, V]
            conf, x0 = torch.softmax(logits, -1).max(-1)
            pick = int(conf.argmax())
            canv[b][rows[pick]] = x0[pick]
            offset += e


def evaluate(model, encoder: ChatEncoder, mask_id: int, examples: list[Example], batch_size: int = 64,
             block_causal: bool = False, **gen_kw) -> dict[str, float]:
    """Exact-match accuracy per task and 'overall' (mean over examples) on ``examples`` (``block_causal``: a
    LLaDA2-style model, decoded by ``generate_block_causal``)."""
    model.eval()
    hits, totals = collections.Counter(), collections.Counter()
    stop = (encoder.eos_id, encoder.eot_id)
    for s in range(0, len(examples), batch_size):
        chunk = examples[s:s + batch_size]
        gen = generate_block_causal if block_causal else generate
        outs = gen(model, [encoder.prompt_ids(ex.prompt) for ex in chunk], mask_id, stop, **gen_kw)
        for ex, ids in zip(chunk, outs):
            totals[ex.task] += 1
            hits[ex.task] += check(ex, encoder.decode_reply([t for t in ids if t != mask_id]))
    acc = {t: hits[t] / totals[t] for t in TASKS if totals[t]}
    acc["overall"] = sum(hits.values()) / max(1, sum(totals.values()))
    return acc
