"""Shared fixtures: tiny random checkpoints of both families in the exact HF format."""
from __future__ import annotations

import pytest

from tests.helpers import write_checkpoint


@pytest.fixture(scope="session")
def dense_ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("dense"), "dense", seed=1)


@pytest.fixture(scope="session")
def dense_sharded_ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("dense_sharded"), "dense", seed=2, shards=3)


@pytest.fixture(scope="session")
def moe_ckpt(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("moe"), "moe", seed=3, shards=2)


@pytest.fixture(scope="session")
def ckpts(dense_ckpt, moe_ckpt):
    return {"dense": dense_ckpt, "moe": moe_ckpt}


@pytest.fixture(scope="session")
def llm64(ckpts):
    """family -> LLM over the tiny checkpoint in float64 on CPU (the exact-mode oracle setting)."""
    from unmask import LLM

    return {fam: LLM(str(path), device="cpu", dtype="float64") for fam, path in ckpts.items()}
