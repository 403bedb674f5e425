"""Batch invariance: a request's output does not depend on what else runs, or when it arrives.

Exact mode: equal to its solo reference run for random mixes of settings arriving at different steps
(float64, CPU, temperature 0). Fast modes (prefix/dual cache, threshold, factor, temperature > 0):
identical alone and inside a mix.
"""
import random

import pytest

from tests.engine.reference_cases import oracle, random_case
from unmask import DiffusionParams
from unmask.server.engine.client import Request


def run_staggered(engine, cases, rng, prefix="r"):
    """Add cases one by one at random iterations while stepping; -> request id -> output ids."""
    pending = list(enumerate(cases))
    got = {f"{prefix}{i}": [] for i, _ in pending}
    done = {}
    while pending or engine.has_unfinished():
        while pending and (not engine.has_unfinished() or rng.random() < 0.35):
            i, (prompt, p) = pending.pop(0)
            engine.add_request(Request(f"{prefix}{i}", tuple(prompt), p))
        for out in engine.step():
            got[out.request_id].extend(out.new_token_ids)
            if out.finished:
                done[out.request_id] = out.finish_reason
    assert len(done) == len(cases)
    return [got[f"{prefix}{i}"] for i in range(len(cases))]


@pytest.mark.parametrize("family", ["dense", "moe"])
def test_exact_mixes_equal_solo_reference(llm64, family):
    llm = llm64[family]
    rng = random.Random(7 if family == "dense" else 8)
    for mix in range(26 if family == "dense" else 24):
        cases = [random_case(rng, short=True) for _ in range(rng.randint(2, 6))]
        outs = run_staggered(llm.engine, cases, rng, prefix=f"m{mix}-")
        for (prompt, p), got in zip(cases, outs):
            assert got == oracle(llm.engine.model, prompt, p), (mix, p)


def fast_case(rng):
    prompt, p = random_case(rng, cfg_scale=0.0, temperature=rng.choice([0.0, 0.0, 0.7]))
    mode = rng.choice(["prefix", "dual", "none"])
    rule = rng.choice([dict(threshold=rng.choice([0.05, 0.3, 0.9])), dict(factor=rng.choice([0.5, 1.0, 3.0])), {}])
    return prompt, DiffusionParams(max_tokens=p.max_tokens, block_length=p.block_length, steps=p.steps,
                                   temperature=p.temperature, remasking="low_confidence", seed=p.seed,
                                   cache=mode, early_stop=p.early_stop, **rule)


@pytest.mark.parametrize("family", ["dense", "moe"])
def test_fast_modes_identical_alone_and_mixed(llm64, family):
    llm = llm64[family]
    rng = random.Random(11)
    cases = [fast_case(rng) for _ in range(24)]
    assert {p.cache for _, p in cases} == {"none", "prefix", "dual"}
    alone = [llm.generate(prompt, p)[0].token_ids for prompt, p in cases]
    mixed = run_staggered(llm.engine, cases, rng, prefix=f"fast-{family}-")
    assert mixed == alone


def test_fast_modes_fill_every_block(llm64):
    """Cached and threshold modes never leave a block partly masked, whatever the step budget."""
    llm = llm64["dense"]
    for cache in ("prefix", "dual"):
        for steps in (2, 4, 16):  # 1 step per block included (Fast-dLLM's dual-cache bug)
            p = DiffusionParams(max_tokens=16, block_length=8, steps=steps, cache=cache, early_stop=False,
                                logits_eos_inf=True)
            out = llm.generate([4, 5, 6], p)[0]
            assert out.num_committed == 16 and llm.model_config.mask_token_id not in out.token_ids
        p = DiffusionParams(max_tokens=16, block_length=8, cache=cache, threshold=0.99, early_stop=False,
                            logits_eos_inf=True)
        out = llm.generate([4, 5, 6], p)[0]
        assert out.num_committed == 16 and out.nfe >= 2
