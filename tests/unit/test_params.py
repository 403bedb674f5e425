import math

import pytest

from unmask import DiffusionParams


def test_defaults_resolve():
    p = DiffusionParams(max_tokens=64)
    assert (p.block_length, p.steps, p.num_blocks, p.steps_per_block) == (32, 64, 2, 32)
    assert p.cache == "none" and p.is_exact
    p40 = DiffusionParams(max_tokens=40)  # the budget rule: blocks of min(32, max_tokens), canvas rounded up
    assert (p40.block_length, p40.canvas_length, p40.num_blocks, p40.steps) == (32, 64, 2, 64)
    assert DiffusionParams(max_tokens=7).canvas_length == 7


def test_fast_preset_fills_unset_fields_only():
    p = DiffusionParams(max_tokens=64, preset="fast")
    assert (p.cache, p.threshold, p.early_stop) == ("prefix", 0.9, True) and not p.is_exact
    q = DiffusionParams(max_tokens=64, preset="fast", cache="dual", factor=1.0)
    assert (q.cache, q.threshold, q.factor) == ("dual", None, 1.0)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=10, block_length=0), "block_length"),
    (dict(steps=0), "steps"),
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=math.nan), "temperature"),
    (dict(temperature=math.inf), "temperature"),
    (dict(remasking="lowest"), "remasking"),
    (dict(cfg_scale=-1.0), "cfg_scale"),
    (dict(threshold=0.0), "threshold"),
    (dict(threshold=1.5), "threshold"),
    (dict(factor=0.0), "factor"),
    (dict(threshold=0.9, factor=1.0), "at most one"),
    (dict(cache="paged"), "cache"),
    (dict(preset="turbo"), "preset"),
    (dict(preset="exact", cache="prefix"), "reference algorithm"),
    (dict(cache="prefix", cfg_scale=1.0), "cfg_scale > 0 needs cache='none'"),
    (dict(seed="7"), "seed"),
    (dict(stop=("",)), "stop"),
    (dict(max_tokens=True), "max_tokens"),
])
def test_invalid_combinations_raise_with_guidance(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        DiffusionParams(**kwargs)


def test_budget_rule_rounds_canvas_and_steps():
    p = DiffusionParams(max_tokens=10, block_length=4)
    assert (p.canvas_length, p.num_blocks, p.steps, p.steps_per_block) == (12, 3, 12, 4)
    q = DiffusionParams(max_tokens=96, block_length=32, steps=100)
    assert (q.steps, q.steps_per_block) == (102, 34)
    assert DiffusionParams(max_tokens=64, block_length=32, steps=5).steps == 6
