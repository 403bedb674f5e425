"""Exact mode equals the reference generate() token for token (float64, CPU, temperature 0)."""
import random

import pytest

from tests.engine.reference_cases import oracle, random_case
from tests.helpers import EOS_ID, MASK_ID


@pytest.mark.parametrize("family", ["dense", "moe"])
def test_generate_equals_reference_on_random_cases(llm64, family):
    llm = llm64[family]
    rng = random.Random(1234 if family == "dense" else 4321)
    cases = [random_case(rng) for _ in range(60)]
    want = [oracle(llm.engine.model, prompt, p) for prompt, p in cases]
    # all 60 run together as one continuous batch: exact mode must not depend on the company
    outs = llm.generate([c[0] for c in cases], [c[1] for c in cases])
    mismatches = [(i, o.token_ids, w) for i, (o, w) in enumerate(zip(outs, want)) if o.token_ids != w]
    assert not mismatches, mismatches[:3]
    reasons = {o.finish_reason for o in outs}
    assert reasons <= {"stop", "length"} and "length" in reasons
    stops = [o for o, w in zip(outs, want) if o.finish_reason == "stop"]
    assert all(len(o.token_ids) < p.max_tokens for o, (_, p) in zip(outs, cases) if o.finish_reason == "stop")
    assert stops, "the random cases should include at least one EOS/EoT stop"


def test_solo_runs_equal_reference(llm64):
    llm = llm64["dense"]
    rng = random.Random(99)
    for _ in range(6):
        prompt, p = random_case(rng)
        assert llm.generate(prompt, p)[0].token_ids == oracle(llm.engine.model, prompt, p)


def test_nfe_counts_forwards(llm64):
    from unmask import DiffusionParams

    llm = llm64["dense"]
    out = llm.generate([5, 6, 7], DiffusionParams(max_tokens=8, block_length=4, steps=4, early_stop=False,
                                                   logits_eos_inf=True))[0]
    assert out.nfe == 4 and out.finish_reason in ("length", "stop")
    # 8 steps per block of 4: the last 4 steps of each block commit nothing and need no forward
    out = llm.generate([5, 6, 7], DiffusionParams(max_tokens=8, block_length=4, steps=16, early_stop=False))[0]
    assert out.nfe == 8


def test_bad_prompts_raise(llm64):
    llm = llm64["dense"]
    with pytest.raises(ValueError, match="mask token"):
        llm.generate([1, MASK_ID, 2])
    with pytest.raises(ValueError, match="empty"):
        llm.generate([[]])
    with pytest.raises(ValueError, match="out of range"):
        llm.generate([1, 5000])
    with pytest.raises(ValueError, match="maximum context length"):
        from unmask import DiffusionParams
        llm.generate([1, 2], DiffusionParams(max_tokens=1024, block_length=32))
    assert EOS_ID not in llm.generate([1, 2, 3])[0].token_ids
