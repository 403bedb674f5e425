"""Sampling controls, logprobs, infilling and ignore_eos through the engine (issue #25's engine part).

Tiny random float64 checkpoints on CPU: a mixed batch with different controls per request equals each
request alone (seeded, T > 0); T = 0 logprobs equal a log-softmax of ``LLM.logits`` on the canvas of the
committing step; exact-preset infilling equals the reference loop extended with a suffix; ignore_eos gives
exactly max_tokens tokens.
"""
import random

import pytest
import torch
from unmask.server.engine.client import Request

from tests.engine.reference_cases import oracle
from tests.helpers import EOS_ID, EOT_ID, MASK_ID
from unmask import DiffusionParams

CONTROLS = [dict(), dict(top_k=3), dict(top_p=0.6), dict(min_p=0.2), dict(top_k=5, top_p=0.8, min_p=0.05),
            dict(logit_bias={5: 4.0, 9: -100.0}), dict(presence_penalty=1.5), dict(frequency_penalty=0.8),
            dict(repetition_penalty=1.4), dict(min_tokens=6), dict(ignore_eos=True), dict(stop_token_ids=(11, 12)),
            dict(logprobs=2, top_k=4)]


def _cases(rng, preset):
    """-> [(prompt, settings without controls, controls)], one per entry of CONTROLS."""
    out = []
    for ctl in CONTROLS:
        kw = dict(max_tokens=rng.choice([6, 8, 12]), block_length=4, seed=rng.randint(0, 10**6), temperature=0.9)
        if preset == "fast":
            kw.update(preset="fast", cache=rng.choice(["prefix", "dual"]))
        out.append(([rng.randint(0, 63) for _ in range(rng.randint(2, 9))], kw, ctl))
    return out


@pytest.mark.parametrize("preset", ["exact", "fast"])
def test_mixed_controls_equal_solo(llm64, preset):
    llm = llm64["dense"]
    cases = _cases(random.Random(25), preset)
    mixed = llm.generate([c[0] for c in cases], [DiffusionParams(**kw, **ctl) for _, kw, ctl in cases])
    for (prompt, kw, ctl), got in zip(cases, mixed):
        alone = llm.generate(prompt, DiffusionParams(**kw, **ctl))[0]
        assert got.token_ids == alone.token_ids and got.finish_reason == alone.finish_reason, ctl
        if got.logprobs is not None:  # the packed forward's logits may differ in the last bits
            assert [e[1] for e in got.logprobs] == [e[1] for e in alone.logprobs]
            assert [e[0] for e in got.logprobs] == pytest.approx([e[0] for e in alone.logprobs], abs=1e-9)
    plain = llm.generate([c[0] for c in cases], [DiffusionParams(**kw) for _, kw, _ in cases])
    assert sum(a.token_ids != b.token_ids for a, b in zip(plain, mixed)) >= 4, "the controls should change outputs"


def test_controls_do_what_they_say(llm64):
    llm = llm64["dense"]
    prompts = [[random.Random(i).randint(0, 63) for _ in range(5)] for i in range(8)]
    base = dict(max_tokens=12, block_length=4, temperature=1.0, preset="fast")
    out = llm.generate(prompts, [DiffusionParams(**base, seed=i, logit_bias={21: 100.0}) for i in range(8)])
    assert all(set(o.token_ids) == {21} for o in out)
    out = llm.generate(prompts, [DiffusionParams(**base, seed=i, min_tokens=12) for i in range(8)])
    assert all(len(o.token_ids) == 12 for o in out)
    out = llm.generate(prompts, [DiffusionParams(**base, seed=i, stop_token_ids=(7,), logit_bias={7: 3.0})
                                 for i in range(8)])
    assert all(7 not in o.token_ids for o in out)
    by_7 = [o for o in out if o.stop_reason == 7]  # vLLM: the stop token id is the stop_reason
    assert by_7 and all(o.finish_reason == "stop" for o in by_7)
    # top_k=1 at T > 0 keeps one token per position: its processed probability (and confidence) is 1
    k1 = llm.generate(prompts, [DiffusionParams(**base, seed=i, top_k=1, logprobs=0) for i in range(8)])
    assert all(all(abs(e[0]) < 1e-12 for e in o.logprobs) for o in k1)


def _forward_logits(llm, canvas):
    return llm.logits(canvas).double()


@pytest.mark.parametrize("family", ["dense", "moe"])
def test_greedy_logprobs_equal_recomputed_log_softmax(llm64, family):
    llm = llm64[family]
    rng = random.Random(3)
    for case in range(4):
        prompt = [rng.randint(0, 63) for _ in range(rng.randint(2, 8))]
        p = DiffusionParams(max_tokens=8, block_length=4, steps=rng.choice([4, 8]), logprobs=3, seed=case)
        rid = f"lp-{family}-{case}"
        llm.engine.add_request(Request(rid, tuple(prompt), p, stream_canvas=True))
        before = [MASK_ID] * p.canvas_length
        committed_at, tokens, entries = {}, [], []
        while llm.engine.has_unfinished():
            for out in llm.engine.step():
                after = list(out.canvas)
                for i, (a, b) in enumerate(zip(before, after)):
                    if a == MASK_ID and b != MASK_ID:
                        committed_at[i] = list(before)
                before = after
                tokens += out.new_token_ids
                entries += out.new_logprobs or ()
        assert tokens and len(entries) == len(tokens)
        for i, (tok, (lp, top_ids, top_lps)) in enumerate(zip(tokens, entries)):
            if i not in committed_at:  # committed as the mask token itself (exact mode): no canvas change
                continue
            assert lp <= 0 and all(v <= 0 for v in top_lps) and len(top_ids) == 3
            assert lp == pytest.approx(max(top_lps), abs=1e-12) and top_ids[0] == tok
            want = torch.log_softmax(_forward_logits(llm, prompt + committed_at[i]), -1)[len(prompt) + i]
            assert lp == pytest.approx(float(want[tok]), abs=1e-5)
            assert top_lps == pytest.approx(want.topk(3).values.tolist(), abs=1e-5)


@pytest.mark.parametrize("family", ["dense", "moe"])
def test_exact_infilling_equals_extended_reference(llm64, family):
    llm = llm64[family]
    rng = random.Random(11)
    cases = []
    for block in (1, 2, 4, 8):
        for _ in range(2):
            prompt = [rng.randint(0, 63) for _ in range(rng.randint(1, 6))]
            suffix = [rng.randint(0, 63) for _ in range(rng.randint(1, 6))]
            nb = rng.randint(1, 2)
            p = DiffusionParams(max_tokens=block * nb, block_length=block, steps=rng.choice([1, 2, block]) * nb,
                                remasking=rng.choice(["low_confidence", "random"]), seed=rng.randint(0, 999),
                                cfg_scale=rng.choice([0.0, 0.0, 1.0]), early_stop=False)
            cases.append((prompt, suffix, p))
    # all together, and batched with plain (suffix-free) requests: infilling is just a canvas shape
    plain = [([3, 4, 5], (), DiffusionParams(max_tokens=8, block_length=4, steps=4, seed=0))]
    outs = llm.generate([c[0] for c in cases + plain], [c[2] for c in cases + plain],
                        suffix=[c[1] for c in cases + plain])
    for (prompt, suffix, p), o in zip(cases, outs):
        assert o.token_ids == oracle(llm.engine.model, prompt, p, suffix), (prompt, suffix, p)
    assert outs[-1].token_ids == oracle(llm.engine.model, [3, 4, 5], plain[0][2])


def test_fast_infilling_runs_batched(llm64):
    llm = llm64["dense"]
    ps = [DiffusionParams(max_tokens=8, block_length=4, preset="fast", cache=c) for c in ("prefix", "dual")]
    outs = llm.generate([[1, 2, 3], [4, 5, 6], [7, 8]], ps + [ps[0]], suffix=[[9, 10], [11], []])
    solo = [llm.generate(pr, p, suffix=s)[0] for pr, p, s in [([1, 2, 3], ps[0], [9, 10]), ([4, 5, 6], ps[1], [11])]]
    assert [o.token_ids for o in outs[:2]] == [o.token_ids for o in solo]
    assert all(len(o.token_ids) <= 8 for o in outs)


@pytest.mark.parametrize("max_tokens", [8, 32, 100])
def test_ignore_eos_gives_exactly_max_tokens(llm64, max_tokens):
    llm = llm64["dense"]
    rng = random.Random(max_tokens)
    prompts = [[rng.randint(0, 63) for _ in range(rng.randint(1, 10))] for _ in range(20)]
    ps = [DiffusionParams(max_tokens=max_tokens, ignore_eos=True, preset="fast", threshold=0.02, seed=i,
                          temperature=rng.choice([0.0, 0.7]), stop_token_ids=(EOS_ID + 1,)) for i in range(20)]
    outs = llm.generate(prompts, ps)
    assert [len(o.token_ids) for o in outs] == [max_tokens] * 20
    assert all(o.finish_reason == "length" for o in outs)
    assert all(not {EOS_ID, EOT_ID, EOS_ID + 1} & set(o.token_ids) for o in outs)


def test_static_block_step_path_applies_controls(llm64):
    """The CUDA-graph block step (run eagerly on CPU, static buffers) applies the sampling controls after the
    captured part and gives the eager path's outputs and logprobs."""
    from unmask.server.engine.cuda_graph import GraphedBlockStep

    llm = llm64["dense"]
    eng = llm.engine
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10], [11, 12, 13, 14]]
    ctls = [dict(top_k=3), dict(logit_bias={21: 3.0}, presence_penalty=1.0, logprobs=2), dict(top_p=0.5, min_p=0.1),
            dict(ignore_eos=True, repetition_penalty=1.5)]
    params = [DiffusionParams(max_tokens=16, block_length=8, cache="dual", threshold=0.2, temperature=0.8, seed=i,
                              **c) for i, c in enumerate(ctls)]
    want = llm.generate(prompts, params)
    eng.runner.graphed = GraphedBlockStep(eng.model, eng.kv.layers, eng.kv.pages_for(512), eng.runner.propose_head,
                                          capture=False)
    try:
        got = llm.generate(prompts, params)
        assert eng.runner.graphed.graphs, "the static path was not used"
    finally:
        eng.runner.graphed = None
    assert [o.token_ids for o in got] == [o.token_ids for o in want]
    assert [e[0] for e in got[1].logprobs] == pytest.approx([e[0] for e in want[1].logprobs], abs=1e-9)


def _naive_apply(logits, bias, counts, pres, freq, rep, temp, k, p, minp):
    """One row, written out plainly: the meaning of sampling.apply."""
    l = logits.clone()
    for t, v in bias:
        l[t] += v
    present = counts > 0
    l = torch.where(present, torch.where(l > 0, l / rep, l * rep), l) - freq * counts - pres * present
    if temp > 0:
        probs = torch.softmax(l / temp, -1)
        order = torch.sort(l / temp, descending=True, stable=True).indices.tolist()
        keep = set(order[:k or len(order)])
        kept = torch.full_like(l, float("-inf"))
        kept[list(keep)] = l[list(keep)] / temp
        q = torch.softmax(kept, -1)
        mass, ok = 0.0, []
        for i in order:
            if i in keep and (not ok or (mass < p and q[i] >= minp * q[order[0]])):
                ok.append(i)
            mass += float(q[i])
        l = torch.where(torch.isin(torch.arange(l.numel()), torch.tensor(ok)), l, float("-inf"))
        del probs
    return l


def test_sampling_apply_equals_naive_rows():
    from unmask.server.engine import sampling

    g = torch.Generator().manual_seed(0)
    m, v = 6, 40
    logits = torch.randn(m, v, generator=g, dtype=torch.float64) * 3
    tokens = torch.randint(0, v, (15,), generator=g)
    cfg = [(0.0, 0.0, 1.0, 0.0, 0, 1.0, 0.0), (0.5, 0.3, 1.2, 0.7, 5, 0.9, 0.0), (0.0, 0.0, 1.0, 1.3, 0, 0.6, 0.05),
           (1.0, -0.5, 0.8, 2.0, 3, 1.0, 0.2), (0.0, 1.0, 1.0, 0.5, 1, 1.0, 0.0), (0.2, 0.0, 1.5, 1.0, 0, 0.3, 0.3)]
    bias = [(3, 2.0), (7, -1.5)]
    rules = sampling.SamplingRules(
        bias=(torch.tensor([r for r in range(m) for _ in bias]), torch.tensor([t for _ in range(m) for t, _ in bias]),
              torch.tensor([b for _ in range(m) for _, b in bias], dtype=torch.float32)),
        penalties={"rows": torch.arange(m), "seq": torch.arange(m), "tokens": tokens.repeat(m),
                   "token_seq": torch.arange(m).repeat_interleave(15),
                   "presence": torch.tensor([c[0] for c in cfg]), "frequency": torch.tensor([c[1] for c in cfg]),
                   "repetition": torch.tensor([c[2] for c in cfg])},
        filters={"rows": torch.arange(m), "temperature": torch.tensor([max(c[3], 1e-3) for c in cfg]),
                 "top_k": torch.tensor([c[4] for c in cfg]), "top_p": torch.tensor([c[5] for c in cfg]),
                 "min_p": torch.tensor([c[6] for c in cfg])})
    got = sampling.apply(logits.clone(), rules)
    counts = torch.bincount(tokens, minlength=v).double()
    for i, (pres, freq, rep, temp, k, p, minp) in enumerate(cfg):
        want = _naive_apply(logits[i], [(t, float(torch.tensor(b, dtype=torch.float32))) for t, b in bias], counts,
                            float(torch.tensor(pres)), float(torch.tensor(freq)), float(torch.tensor(rep)),
                            float(torch.tensor(max(temp, 1e-3))), k, float(torch.tensor(p)), float(torch.tensor(minp)))
        assert torch.equal(torch.isinf(got[i]), torch.isinf(want)), i
        fin = ~torch.isinf(want)
        assert torch.allclose(got[i][fin], want[fin], atol=1e-6), i
