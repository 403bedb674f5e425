"""The engine's exact-mode parity and batch invariance with every op on its Triton kernel
(``UNMASK_KERNELS=triton``; the CPU interpreter when there is no GPU), on a small model in float32.

float32 instead of the float64 of tests/engine: the kernels compute in fp32. The reference runs on the
same model with the torch ops, so a mismatch means a kernel changed a greedy decision; tiny random models
have well-separated logits at these sizes (checked by the torch-vs-torch float32 run being identical).
"""
import random

import pytest
import torch

from tests.engine.reference_cases import oracle, random_case
from tests.engine.test_batch_invariance import run_staggered
from unmask import LLM
from unmask.server.engine.client import Request

pytestmark = [pytest.mark.interpret, pytest.mark.skipif(
    torch.cuda.is_available(), reason="interpreter test on CPU tensors; on CUDA tests/gpu covers Triton vs torch")]


@pytest.fixture(scope="module")
def small_ckpts(tmp_path_factory):
    from tests.helpers import write_checkpoint

    return {f: write_checkpoint(tmp_path_factory.mktemp(f"tri-{f}"), f, seed=9, d=32, heads=2, inter=16)
            for f in ("dense", "moe")}


def _cases(seed: int, n: int):
    rng = random.Random(seed)
    return [random_case(rng, max_tokens=4, block_length=2, steps=rng.choice([2, 4]), temperature=0.0,
                        cfg_scale=rng.choice([0.0, 1.0])) for _ in range(n)]


@pytest.mark.parametrize("family, skinny", [("dense", False), ("moe", False), ("dense", True)],
                         ids=["dense", "moe", "dense-skinny-gemm"])
def test_exact_parity_and_batch_invariance_on_triton(small_ckpts, family, skinny, monkeypatch):
    """``skinny``: every GEMM of at most 64 rows on the skinny kernel too (UNMASK_GEMM=triton)."""
    from unmask.kernels.triton_ops import linear

    monkeypatch.setenv("UNMASK_GEMM", "triton" if skinny else "cublas")
    skinny_calls = []
    kernel = linear.linear_fwd
    monkeypatch.setattr(linear, "linear_fwd", lambda *a, **k: skinny_calls.append(1) or kernel(*a, **k))
    cases = _cases(31 if family == "dense" else 32, 6)
    monkeypatch.setenv("UNMASK_KERNELS", "torch")
    ref_llm = LLM(str(small_ckpts[family]), device="cpu", dtype="float32")
    want = [oracle(ref_llm.engine.model, prompt, p) for prompt, p in cases]
    monkeypatch.setenv("UNMASK_KERNELS", "triton")
    llm = LLM(str(small_ckpts[family]), device="cpu", dtype="float32")
    from unmask.kernels.backend import active_backend
    assert active_backend("attention", torch.device("cpu")) == "triton"
    together = [o.token_ids for o in llm.generate([c[0] for c in cases], [c[1] for c in cases])]
    assert together == want
    staggered = run_staggered(llm.engine, cases, random.Random(5), prefix=f"tri-{family}-")
    assert staggered == want
    assert bool(skinny_calls) == skinny


@pytest.mark.parametrize("loop", ["merged", "segmented", "prefetch"])
def test_fast_mode_on_triton_equals_torch(small_ckpts, monkeypatch, loop):
    from unmask import DiffusionParams

    monkeypatch.setenv("UNMASK_ATTN_LOOP", loop)  # the cached key loop under test
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    params = [DiffusionParams(max_tokens=8, block_length=4, cache=c, threshold=0.3, seed=2) for c in ("prefix", "dual")]
    monkeypatch.setenv("UNMASK_KERNELS", "torch")
    want = [o.token_ids for o in LLM(str(small_ckpts["dense"]), device="cpu", dtype="float32").generate(prompts, params)]
    monkeypatch.setenv("UNMASK_KERNELS", "triton")
    got = [o.token_ids for o in LLM(str(small_ckpts["dense"]), device="cpu", dtype="float32").generate(prompts, params)]
    assert got == want


def test_llada2_cached_exact_on_triton_equals_torch(tmp_path, monkeypatch):
    """LLaDA2 through the engine with every op on Triton (block-causal attention reading the exact prefix cache,
    grouped routing into the fused MoE kernel) answers as with the torch ops, alone and batched (float32)."""
    from benchmarks.reference.family_checkpoints import write_family_checkpoint
    from unmask import DiffusionParams

    ckpt = write_family_checkpoint(tmp_path / "llada2", "llada2", seed=5)
    rng = random.Random(8)
    prompts = [[rng.randint(0, 90) for _ in range(rng.randint(1, 7))] for _ in range(5)]
    params = [DiffusionParams(max_tokens=rng.randint(2, 6), block_length=rng.choice([2, 4]),
                              threshold=rng.choice([None, 0.05])) for _ in prompts]
    monkeypatch.setenv("UNMASK_KERNELS", "torch")
    want = [o.token_ids for o in LLM(str(ckpt), device="cpu", dtype="float32").generate(prompts, params)]
    monkeypatch.setenv("UNMASK_KERNELS", "triton")
    llm = LLM(str(ckpt), device="cpu", dtype="float32")
    from unmask.kernels.backend import active_backend
    assert active_backend("attention", torch.device("cpu")) == "triton"
    assert llm.engine._cached(Request("probe", (1, 2), params[0]))  # the cached exact path is the one tested
    assert [o.token_ids for o in llm.generate(prompts, params)] == want
    assert [llm.generate([p], sp)[0].token_ids for p, sp in zip(prompts, params)] == want
