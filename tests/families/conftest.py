"""Fixtures of the LLaDA2 and Dream tests: tiny random checkpoints in each family's exact HF format (float64
weights, sharded) and float64 LLMs over them."""
from __future__ import annotations

import pytest

from benchmarks.reference.family_checkpoints import write_family_checkpoint


@pytest.fixture(scope="session")
def family_ckpts(tmp_path_factory):
    """family -> checkpoint directory ('llada2' sharded in 2, 'dream' sharded in 3)."""
    return {"llada2": write_family_checkpoint(tmp_path_factory.mktemp("llada2"), "llada2", seed=5, shards=2),
            "dream": write_family_checkpoint(tmp_path_factory.mktemp("dream"), "dream", seed=6, shards=3)}


@pytest.fixture(scope="session")
def family_llm64(family_ckpts):
    """family -> LLM over its tiny checkpoint in float64 on CPU (the exact-mode oracle setting)."""
    from unmask import LLM

    return {fam: LLM(str(path), device="cpu", dtype="float64") for fam, path in family_ckpts.items()}
