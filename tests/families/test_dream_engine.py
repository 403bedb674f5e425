"""The engine serves Dream (float64, T = 0): with ``alg`` (maskgit_plus, topk_margin, entropy) it equals Dream's own
``diffusion_generate`` token for token, 50 random cases alone and in one mixed batch with LLaDA-rule requests;
without ``alg`` its exact preset equals LLaDA's reference ``generate`` run on the Dream model (the block rules, whose
cached form is the family's fast path)."""
import random

import pytest
import torch

from benchmarks.reference import dream_generate, llada_generate
from benchmarks.reference.checkpoints import EOS_ID, EOT_ID, MASK_ID
from tests.families.test_references import cut_at_stop, forward
from unmask import DiffusionParams
from unmask.server.engine.client import RequestRejected
from unmask.server.engine.commit_counts import dream_k


def _cases(n: int, seed: int = 21):
    """n random (prompt ids, DiffusionParams) cases: Dream's rule (alg) for most, LLaDA's exact rules for some."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = [rng.randint(0, 90) for _ in range(rng.randint(1, 8))]
        max_tokens = rng.randint(1, 12)
        if i % 5 == 4:  # LLaDA's block rules on the Dream model
            bl = rng.choice([b for b in (1, 2, 4, 8) if b <= max_tokens] or [max_tokens])
            params = DiffusionParams(max_tokens=max_tokens, block_length=bl, early_stop=rng.random() < 0.5)
        else:
            params = DiffusionParams(max_tokens=max_tokens, steps=rng.randint(1, max_tokens + 2),
                                     alg=rng.choice(dream_generate.ALGORITHMS[1:]), early_stop=rng.random() < 0.5)
        out.append((prompt, params))
    return out


def _reference(model, prompt, params, stop_ids):
    x = torch.tensor([prompt])
    if params.alg is not None:
        y = dream_generate.diffusion_generate(forward(model, False), x, max_new_tokens=params.max_tokens,
                                              steps=params.steps, alg=params.alg, mask_id=MASK_ID)
    else:
        y = llada_generate.generate(forward(model, False), x, steps=params.steps,
                                    gen_length=params.canvas_length, block_length=params.block_length,
                                    mask_id=MASK_ID, eos_id=EOS_ID, eot_id=EOT_ID)
    return cut_at_stop(y[0, len(prompt):len(prompt) + params.max_tokens].tolist(), stop_ids)


CASES = _cases(50)


@pytest.fixture(scope="module")
def expected(family_llm64):
    llm = family_llm64["dream"]
    stops = set(llm.engine.stop_token_ids)
    return [_reference(llm.engine.model, p, sp, stops) for p, sp in CASES]


def test_dream_k_is_the_reference_count():
    """The float32 count of the published loop, including its truncation."""
    ts = torch.linspace(1, 1e-3, 8 + 1)
    for masked in range(0, 13):
        for i in range(8):
            want = int(torch.tensor(masked) / 1 * (1 - ts[i + 1] / ts[i])) if i < 7 else masked
            assert dream_k(masked, i, 8) == want


def test_each_case_alone_equals_the_reference(family_llm64, expected):
    llm = family_llm64["dream"]
    for (prompt, params), want in zip(CASES, expected):
        got = llm.generate([prompt], params)[0]
        assert got.error is None and got.token_ids == want, (prompt, params)


def test_all_cases_in_one_mixed_batch_equal_the_reference(family_llm64, expected):
    outs = family_llm64["dream"].generate([p for p, _ in CASES], [sp for _, sp in CASES])
    wrong = [(case, o.token_ids, want) for case, o, want in zip(CASES, outs, expected) if o.token_ids != want]
    assert not wrong, wrong[:3]


@pytest.mark.parametrize("kw", [{"alg": "origin"}, {"alg": "entropy", "block_length": 2},
                                {"alg": "entropy", "preset": "fast"}, {"alg": "entropy", "threshold": 0.9}])
def test_invalid_alg_settings_name_the_problem(kw):
    with pytest.raises(ValueError, match="alg|block_length"):
        DiffusionParams(max_tokens=4, **kw)


def test_alg_on_another_family_is_refused(family_llm64):
    with pytest.raises(RequestRejected) as err:
        family_llm64["llada2"].generate([[1, 2, 3]], DiffusionParams(max_tokens=4, alg="entropy"))
    assert err.value.param == "alg"
