"""The engine serves LLaDA2 as its reference ``generate`` does, token for token (float64, T = 0): 50 random cases
(prompt length, budget, block length, steps, threshold, early stop, preset), each alone and all 50 in one mixed
batch; with the exact prefix cache (the default whenever the cache has room) and without a cache; plus the
request settings this family refuses, by name."""
import dataclasses
import random

import pytest
import torch

from benchmarks.reference import llada2_generate
from benchmarks.reference.checkpoints import EOS_ID, MASK_ID
from tests.families.test_references import cut_at_stop, forward
from unmask import DiffusionParams
from unmask.server.engine.client import RequestRejected
from unmask.server.engine.family_rules import LLADA2_THRESHOLD
from unmask.server.engine.params import FAST_THRESHOLD


def _cases(n: int, seed: int = 11):
    """n random (prompt ids, DiffusionParams, reference threshold) cases."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [rng.randint(0, 90) for _ in range(rng.randint(1, 11))]
        bl = rng.choice([2, 4, 8])
        max_tokens = rng.randint(1, 14)
        preset = rng.choice(["exact", "fast", None])
        threshold = None if preset == "exact" else rng.choice([None, 0.03, 0.06, 0.1, 0.3])
        if preset is None and threshold is None:
            preset = "exact"
        kw = dict(max_tokens=max_tokens, block_length=bl, early_stop=rng.random() < 0.5, preset=preset,
                  threshold=threshold)
        plan_blocks = -(-max_tokens // bl)
        per_block = rng.choice([None, 1, 2, 3])
        if per_block is not None:
            kw["steps"] = per_block * plan_blocks
        params = DiffusionParams(**kw)
        ref_threshold = threshold if threshold is not None else (FAST_THRESHOLD if preset == "fast"
                                                                 else LLADA2_THRESHOLD)
        out.append((prompt, params, ref_threshold))
    return out


def _reference(model, prompt, params, threshold, stop_ids):
    """The reference's answer for one case: the budget's tokens, cut before the first stop id. With editing, the
    engine early-stops block by block, which is the reference without ``eos_early_stop`` (same tokens)."""
    editing = params.editing_threshold is not None
    x = llada2_generate.generate(forward(model, True), torch.tensor([prompt]), gen_length=params.max_tokens,
                                 block_length=params.block_length, steps=params.steps_per_block,
                                 threshold=threshold, eos_early_stop=params.early_stop and not editing,
                                 editing_threshold=params.editing_threshold, max_post_steps=params.max_post_steps,
                                 mask_id=MASK_ID, eos_id=EOS_ID)
    return cut_at_stop(x[0, len(prompt):len(prompt) + params.max_tokens].tolist(), stop_ids)


CASES = _cases(50)


@pytest.fixture(scope="module")
def expected(family_llm64):
    llm = family_llm64["llada2"]
    stops = set(llm.engine.stop_token_ids)
    return [_reference(llm.engine.model, p, sp, t, stops) for p, sp, t in CASES]


def test_exact_cache_is_on_and_fed_ranges_stop_at_the_block(family_llm64):
    """The family's rules reach the engine: the prefix cache is used without being asked for, and the
    threshold rule uses the reference default."""
    eng = family_llm64["llada2"].engine
    assert eng.family_rules.block_causal and eng.family_rules.aligned_blocks
    from unmask.server.engine.client import Request
    req = Request("probe", (1, 2, 3, 4, 5), DiffusionParams(max_tokens=6, block_length=4))
    assert eng._cached(req)
    from unmask.server.engine.sequence import Sequence, StepKind
    seq = Sequence(req, MASK_ID, (EOS_ID,), 0, eng.family_rules, True)
    assert (seq.first_block_start, seq.gen_end, seq.num_blocks) == (4, 12, 2)  # blocks [4, 8) and [8, 12)
    assert seq.threshold == LLADA2_THRESHOLD and seq.fed_range(StepKind.REFRESH) == (0, 8)


def test_each_case_alone_equals_the_reference(family_llm64, expected):
    llm = family_llm64["llada2"]
    for (prompt, params, _), want in zip(CASES, expected):
        got = llm.generate([prompt], params)[0]
        assert got.error is None and got.token_ids == want, (prompt, params)


def test_all_cases_in_one_mixed_batch_equal_the_reference(family_llm64, expected):
    outs = family_llm64["llada2"].generate([p for p, _, _ in CASES], [sp for _, sp, _ in CASES])
    wrong = [(case, o.token_ids, want) for case, o, want in zip(CASES, outs, expected) if o.token_ids != want]
    assert not wrong, wrong[:3]


def test_without_a_cache_the_same_tokens(family_ckpts, expected):
    """A cache too small for any canvas: every sequence runs uncached (windowed forwards), still exact."""
    from unmask import LLM

    llm = LLM(str(family_ckpts["llada2"]), device="cpu", dtype="float64", kv_cache_memory=1)
    idx = [i for i, (_, sp, _) in enumerate(CASES) if sp.cache == "none"][:12]
    outs = llm.generate([CASES[i][0] for i in idx], [CASES[i][1] for i in idx])
    assert [o.token_ids for o in outs] == [expected[i] for i in idx]
    assert llm.engine.kv.num_pages * llm.engine.kv.page_size < 8


@pytest.mark.parametrize("kw, field", [({"cache": "dual", "threshold": 0.9}, "cache"), ({"cfg_scale": 1.0}, "cfg_scale"),
                                       ({"remasking": "random"}, "remasking"), ({"factor": 1.0}, "factor")])
def test_settings_this_family_refuses_are_named(family_llm64, kw, field):
    with pytest.raises(RequestRejected) as err:
        family_llm64["llada2"].generate([[1, 2, 3]], DiffusionParams(max_tokens=4, **kw))
    assert err.value.param == field


def test_infilling_is_refused(family_llm64):
    with pytest.raises(RequestRejected) as err:
        family_llm64["llada2"].generate([[1, 2, 3]], DiffusionParams(max_tokens=4), suffix=[5, 6])
    assert err.value.param == "suffix"


def _editing_cases(n: int, seed: int = 17):
    """n random LLaDA2.1 editing cases: (prompt ids, DiffusionParams, reference threshold)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [rng.randint(0, 90) for _ in range(rng.randint(1, 9))]
        threshold = rng.choice([None, 0.05, 0.1, 0.3])
        params = DiffusionParams(max_tokens=rng.randint(1, 12), block_length=rng.choice([2, 4, 8]), threshold=threshold,
                                 editing_threshold=rng.choice([0.02, 0.04, 0.08, 0.5]),
                                 max_post_steps=rng.choice([0, 1, 2, 16]), early_stop=rng.random() < 0.5)
        out.append((prompt, params, LLADA2_THRESHOLD if threshold is None else threshold))
    return out


EDITING = _editing_cases(30)


def test_editing_equals_the_reference_alone_and_mixed(family_llm64):
    """LLaDA2.1 editing: each case alone, then all of them in one batch with the non-editing cases; the edits
    really happen (some committed token is rewritten), and streamed tokens are only those of finished blocks."""
    llm = family_llm64["llada2"]
    stops = set(llm.engine.stop_token_ids)
    want = [_reference(llm.engine.model, p, sp, t, stops) for p, sp, t in EDITING]
    for (prompt, params, _), w in zip(EDITING, want):
        assert llm.generate([prompt], params)[0].token_ids == w, (prompt, params)
    mixed = EDITING + CASES[:20]
    outs = llm.generate([p for p, _, _ in mixed], [sp for _, sp, _ in mixed])
    assert [o.token_ids for o in outs[:len(EDITING)]] == want
    plain = [_reference(llm.engine.model, p, dataclasses.replace(sp, editing_threshold=None), t, stops)
             for p, sp, t in EDITING]
    assert sum(a != b for a, b in zip(want, plain)) >= 5  # editing changed the answer of several cases


def test_editing_is_refused_on_other_families(family_llm64):
    with pytest.raises(RequestRejected) as err:
        family_llm64["dream"].generate([[1, 2, 3]], DiffusionParams(max_tokens=4, editing_threshold=0.5))
    assert err.value.param == "editing_threshold"
