"""The packer (``server/engine/forward_inputs.py``) orders the fed segments by the attention call they join, so
the reference attention reads each group in place, while logit rows, rules and plan stay in the order of the
sequences they were given in."""
from __future__ import annotations

import pytest
import torch

from unmask import DiffusionParams
from unmask.server.engine import commit_policy
from unmask.server.engine.client import Request
from unmask.server.engine.forward_inputs import build_inputs
from unmask.server.engine.sequence import Sequence, StepKind

MASK = 95


def _seqs(prompt_lens: list[int]) -> list[Sequence]:
    seqs = []
    for i, n in enumerate(prompt_lens):
        s = Sequence(Request(f"p{i}", tuple(range(1, n + 1)), DiffusionParams(max_tokens=8, block_length=4)),
                     MASK, (94,), seed=i)
        s.canvas[n:n + 2] = torch.tensor([40 + i, 50 + i])  # a few committed tokens: rows differ per sequence
        seqs.append(s)
    return seqs


def test_same_length_segments_are_packed_together_and_logit_rows_follow_the_sequences():
    seqs = _seqs([5, 9, 5, 9, 7])
    inp = build_inputs(seqs, [StepKind.REFRESH] * len(seqs), None, torch.device("cpu"))
    lens = inp.meta.cu_seqlens_q.diff().tolist()
    assert lens == [13, 13, 15, 17, 17]  # grouped by length (the groups' order is the sort's)
    cands = [commit_policy.candidates(s) for s in seqs]
    assert torch.equal(inp.positions[inp.logit_rows], torch.cat(cands))  # sequence order
    assert torch.equal(inp.input_ids[inp.logit_rows], torch.cat([s.canvas[c] for s, c in zip(seqs, cands)]))
    # every sequence's whole canvas is one packed run somewhere
    cu = inp.meta.cu_seqlens_q.tolist()
    runs = [inp.input_ids[a:b] for a, b in zip(cu, cu[1:])]
    for s in seqs:
        assert sum(torch.equal(r, s.canvas) for r in runs) == 1


def test_packing_order_leaves_each_sequences_logits_unchanged(llm64):
    """The same sequences given in either order: each sequence gets its own logit rows back (float64 model; the
    LM head's GEMM sees the rows in another order, so equal to summation order, 1e-12)."""
    model = llm64["dense"].engine.model
    seqs = _seqs([5, 9, 5, 9, 7])
    out = {}
    with torch.inference_mode():
        for name, order in (("given", [0, 1, 2, 3, 4]), ("reversed", [4, 3, 2, 1, 0])):
            batch = [seqs[i] for i in order]
            inp = build_inputs(batch, [StepKind.REFRESH] * len(batch), None, torch.device("cpu"))
            logits = model.compute_logits(model(inp.input_ids, inp.positions, inp.meta)[inp.logit_rows])
            rows = torch.split(logits, [commit_policy.candidates(s).numel() for s in batch])
            out[name] = {s.request.request_id: r for s, r in zip(batch, rows)}
    for k, want in out["given"].items():
        torch.testing.assert_close(out["reversed"][k], want, rtol=1e-12, atol=1e-12)


def test_plan_marks_exactly_the_masked_slots():
    """The plan's candidate slots are the masked ones: every row on the eager path (its rows are the masked
    positions), on the graphed path's all-block rows only those still masked; padding slots never."""
    seqs = _seqs([5, 9, 7])
    seqs[1].canvas[9 + 4:9 + 6] = torch.tensor([60, 61])  # block 1 of sequence 1 partly committed too
    for all_block_rows in (False, True):
        plan = build_inputs(seqs, [StepKind.REFRESH] * 3, None, torch.device("cpu"), all_block_rows).plan
        for b, s in enumerate(seqs):
            pos = plan.slot_pos[b]
            want = torch.zeros_like(plan.cand[b])
            want[pos >= 0] = s.canvas[pos[pos >= 0]] == MASK
            assert torch.equal(plan.cand[b], want), (all_block_rows, b)
            assert bool(plan.cand[b].any())
        assert torch.equal(plan.row_slot, (plan.slot_pos.flatten() >= 0).nonzero()[:, 0])


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_cached_block_step_out_rows_are_the_full_rows(llm64, cache):
    """A cached block step (the fast preset's) computes its logit rows' queries alone in the last layer: the rows equal
    those of the same step's full forward (float64, to rounding), for packed sequences of different lengths."""
    engine = llm64["dense"].engine
    model, kv, mask = engine.model, engine.kv, llm64["dense"].model_config.mask_token_id
    seqs = []
    for i, n in enumerate([5, 9, 7]):
        s = Sequence(Request(f"c{i}", tuple(range(1, n + 1)), DiffusionParams(max_tokens=8, block_length=4, cache=cache,
                                                                                threshold=0.9)), mask, (94,), seed=i)
        s.pages = kv.allocate(s.length)
        seqs.append(s)
    try:
        with torch.inference_mode():
            refresh = build_inputs(seqs, [StepKind.REFRESH] * 3, kv, torch.device("cpu"))
            model(refresh.input_ids, refresh.positions, refresh.meta)  # writes every position's K/V
            for s in seqs:
                s.cache_valid = True
                s.canvas[s.block_start] = 40 + s.prompt_len  # one committed block position: rows differ per sequence
            step = build_inputs(seqs, [StepKind.BLOCK] * 3, kv, torch.device("cpu"))
            assert step.meta.reads_cache
            args = (step.input_ids, step.positions, step.meta)
            full = model(*args)[step.logit_rows]
            torch.testing.assert_close(model(*args, step.logit_rows), full, rtol=1e-12, atol=1e-12)
    finally:
        for s in seqs:
            kv.free(s.pages)
