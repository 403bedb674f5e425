"""Smoke tests of the step profile and the padded-batch baseline (tiny sizes, the embedded model)."""
from __future__ import annotations

import pytest
from unmask.kernels import ops
from unmask.server.engine import commit_policy
from unmask.server.engine.scheduler import Scheduler

from benchmarks.padded_baseline import padded_run
from benchmarks.step_profile import PHASES, params_for, profile_level, table_row
from unmask import LLM, DiffusionParams


@pytest.fixture(scope="module")
def llm():
    return LLM("tiny-llada-instruct", device="cpu", dtype="float32", max_num_seqs=3)


def _prompts(llm):
    return [llm.tokenizer.encode_chat([{"role": "user", "content": c}]) for c in ("What is 2 + 3?", "reverse: abc", "Sort: 3 1")]


def test_profile_phases_add_up_and_restore(llm):
    before = (Scheduler.schedule, ops.attention, commit_policy.select)
    row = profile_level(llm, _prompts(llm), params_for("exact", 8, 8), "cpu", clock="cpu")
    assert (Scheduler.schedule, ops.attention, commit_policy.select) == before
    assert "forward" not in vars(llm.engine.model)
    assert row["iterations"] == 8 and set(row["phases_ms"]) == set(PHASES)
    assert abs(sum(row["phases_ms"].values()) - row["iteration_ms"]) < 0.01 * row["iteration_ms"] + 0.01
    assert row["phases_ms"]["forward"] > 0 and row["phases_ms"]["attention"] > 0 and 0 < row["host_share"] < 1
    assert table_row({"model": "m", "preset": "exact", "concurrency": 3, **row}).count("|") == len(PHASES) + 8


def test_padded_baseline_equals_engine_exact(llm):
    prompts = _prompts(llm)
    p = DiffusionParams(max_tokens=8, block_length=4, steps=8, early_stop=False)
    base = padded_run(llm, prompts, p, batch_size=3)
    assert len({len(x) for x in prompts}) > 1  # the batch really is padded
    assert base["outputs"] == [r.token_ids for r in llm.generate(prompts, p)]
    assert base["steps"] == 8 and base["nfe"] == 24
