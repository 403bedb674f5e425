"""Tensor and expert parallelism on CPU (gloo, one spawned process per extra rank): tiny random float64 checkpoints
of the LLaDA families split over 2 and 4 ranks (LLaDA2 and Dream over 2) give the single-device logits (within 1e-10
relative) and the same tokens in exact and fast modes, on the reduce path and on the paths that gather whole logit
rows (sampling controls, logprobs, CFG, grammar constraints); each rank holds about 1/N of the weights (parameter
bytes and measured RSS); a model that cannot be split, or loaded, is refused with a clear error and no process left."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from benchmarks.reference.family_checkpoints import write_family_checkpoint
from tests.helpers import write_checkpoint
from unmask import LLM, DiffusionParams
from unmask.server.config import UnsupportedConfigError

KV = 16 << 20  # KV cache bytes per rank (the CPU default, 1 GiB, would be zeroed on every rank)
PROMPTS = [[5, 6, 7, 8, 9], list(range(10, 40)), [60, 61], [33, 3, 33, 3]]
SPLITS = [("dense", 2, False), ("moe", 2, False), ("moe", 2, True), ("moe", 4, True)]  # TP 4: heads, vocabulary, EP


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return {fam: write_checkpoint(tmp_path_factory.mktemp(f"tp_{fam}") / "ckpt", fam, seed=11, shards=2)
            for fam in ("dense", "moe")}


@pytest.fixture(scope="module")
def single(ckpts):
    llms = {fam: LLM(str(path), device="cpu", dtype="float64", kv_cache_memory=KV) for fam, path in ckpts.items()}
    yield llms


def _params() -> list[DiffusionParams]:
    """One batch mixing the reduce path (exact, fast with sampling at T > 0, prefix and dual caches) with
    rows that need whole logit rows (top-p + logprobs, a penalty, CFG)."""
    return [DiffusionParams(max_tokens=8, block_length=4, steps=8, ignore_eos=True),
            DiffusionParams(max_tokens=8, block_length=4, preset="fast", temperature=0.9, seed=4),
            DiffusionParams(max_tokens=8, block_length=4, preset="fast", cache="dual", top_p=0.8, temperature=0.7,
                            seed=5, logprobs=2),
            DiffusionParams(max_tokens=8, block_length=4, steps=8, cfg_scale=1.0, repetition_penalty=1.3)]


def _relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |a|."""
    return float((a - b).abs().max() / a.abs().max())


@pytest.mark.parametrize("family,size,expert_parallel", SPLITS)
def test_split_model_matches_one_device(ckpts, single, family, size, expert_parallel):
    ref = single[family]
    with LLM(str(ckpts[family]), device="cpu", dtype="float64", kv_cache_memory=KV, tensor_parallel_size=size,
             enable_expert_parallel=expert_parallel) as tp:
        for ids in PROMPTS[:2]:
            a, b = ref.logits(ids), tp.logits(ids)
            assert a.shape == b.shape and a.dtype == b.dtype == torch.float64
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12 * float(a.abs().max()))
            assert _relative_gap(a, b) < 1e-10
        for preset in ("exact", "fast"):
            p = DiffusionParams(max_tokens=8, block_length=4, steps=8, preset=preset, ignore_eos=True)
            want = [o.token_ids for o in ref.generate(PROMPTS, p)]
            assert [o.token_ids for o in tp.generate(PROMPTS, p)] == want
            assert all(len(w) == 8 for w in want)
        want = ref.generate(PROMPTS, _params())
        got = tp.generate(PROMPTS, _params())
        assert [o.token_ids for o in got] == [o.token_ids for o in want]
        assert [o.finish_reason for o in got] == [o.finish_reason for o in want]
        assert got[2].logprobs and len(got[2].logprobs) == len(want[2].logprobs)
        constrained = [DiffusionParams(max_tokens=8, block_length=4, preset="fast", structured_outputs=so)
                       for so in ({"regex": "[A-Z]{3}-[0-9]{2,4}"}, {"choice": ["YES", "NO", "MAYBE SO"]})]
        want_c = [o.text for o in ref.generate(PROMPTS[:2], constrained)]
        assert [o.text for o in tp.generate(PROMPTS[:2], constrained)] == want_c
        assert re.fullmatch("[A-Z]{3}-[0-9]{2,4}", want_c[0]) and want_c[1] in ("YES", "NO", "MAYBE SO")
        for (lp_got, ids_got, _), (lp_want, ids_want, _) in zip(got[2].logprobs, want[2].logprobs):
            assert ids_got == ids_want and lp_got == pytest.approx(lp_want, rel=1e-10, abs=1e-12)


def test_steps_without_whole_row_rules_take_the_reduce_path():
    """Which collective a step pays: exact, threshold and T > 0 steps (with or without the EOS rule) reduce their
    slices (R·M·4 numbers); a sampling control or logprobs gathers whole rows."""
    from unmask.server.engine.client import Request
    from unmask.server.engine.forward_inputs import build_inputs
    from unmask.server.engine.sequence import Sequence, StepKind
    from unmask.server.engine.tp_runner import needs_full_rows

    base = dict(max_tokens=8, block_length=4)
    cases = [(DiffusionParams(**base, steps=8), False), (DiffusionParams(**base, threshold=0.9), False),
             (DiffusionParams(**base, temperature=0.7, seed=1, logits_eos_inf=True), False),
             (DiffusionParams(**base, top_p=0.5, temperature=0.7), True), (DiffusionParams(**base, logprobs=1), True)]
    for p, full in cases:
        seq = Sequence(Request("r", (5, 6, 7), p), 95, (94,), 0)
        inp = build_inputs([seq], [StepKind.REFRESH], None, torch.device("cpu"))
        assert needs_full_rows(inp) is full, p


@pytest.mark.parametrize("family,expert_parallel", [("dense", False), ("moe", True)])
def test_graphed_block_steps_per_rank_match_one_device(ckpts, single, monkeypatch, family, expert_parallel):
    """Greedy dual-cache block steps through every rank's graphed step (its static buffers run eagerly on CPU:
    ``UNMASK_STATIC_GRAPH_STEP``, inherited by the spawned ranks; on CUDA the same step is captured): padded to
    the batch bucket, the partials gathered after it, mixed with T > 0 and sampling-control rows that stay eager.
    The ranks' forwards meet in collectives of the padded shapes, so a rank off the graphed path would fail the
    step."""
    monkeypatch.setenv("UNMASK_STATIC_GRAPH_STEP", "1")
    dual = dict(max_tokens=8, block_length=4, cache="dual")
    params = [DiffusionParams(threshold=0.3, **dual), DiffusionParams(**dual, steps=8),
              DiffusionParams(threshold=0.3, temperature=0.8, seed=2, **dual),
              DiffusionParams(threshold=0.3, top_k=5, **dual)]
    want = [o.token_ids for o in single[family].generate(PROMPTS, params)]
    with LLM(str(ckpts[family]), device="cpu", dtype="float64", kv_cache_memory=KV, tensor_parallel_size=2,
             enable_expert_parallel=expert_parallel) as tp:
        got = [o.token_ids for o in tp.generate(PROMPTS, params)]
        graphs = dict(tp.engine.runner.graphed.graphs)
        alone = tp.generate([PROMPTS[1]], params[0])[0].token_ids
        graphs_alone = set(tp.engine.runner.graphed.graphs) - set(graphs)
    assert got == want and alone == single[family].generate([PROMPTS[1]], params[0])[0].token_ids
    assert graphs and graphs_alone == {(1, 4)}, (graphs, graphs_alone)  # a request alone: bucket 1


FAMILY_SPLITS = [("llada2", True), ("dream", False)]


@pytest.mark.parametrize("family,expert_parallel", FAMILY_SPLITS)
def test_llada2_and_dream_split_as_one_device(tmp_path, family, expert_parallel):
    """LLaDA2 expert-parallel (q/k/v stored as one tensor, split part by part; shared experts split by units while
    the routed ones are whole; dense first layer; block-causal) and Dream (q/k/v bias, GQA, shifted logits; its alg
    confidences gather whole rows)."""
    path = write_family_checkpoint(tmp_path / family, family, seed=5, shards=2)
    ref = LLM(str(path), device="cpu", dtype="float64", kv_cache_memory=KV)
    params = [ref.default_params(max_tokens=8), ref.default_params(max_tokens=8, preset="fast")]
    if family == "dream":
        params.append(ref.default_params(max_tokens=8, alg="entropy"))
    with LLM(str(path), device="cpu", dtype="float64", kv_cache_memory=KV, tensor_parallel_size=2,
             enable_expert_parallel=expert_parallel) as tp:
        a, b = ref.logits(PROMPTS[1]), tp.logits(PROMPTS[1])
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12 * float(a.abs().max()))
        for p in params:
            assert [o.token_ids for o in tp.generate(PROMPTS, p)] == [o.token_ids for o in ref.generate(PROMPTS, p)]


ONE_DEVICE_LOAD = """
import sys, torch
from unmask.server.engine.rank_worker import rss_anon_bytes
from unmask.server.models.loader import load_model
before = rss_anon_bytes()
model, _ = load_model(sys.argv[1], "cpu", torch.float64)
print(rss_anon_bytes() - before)
"""


def test_each_rank_holds_its_share_of_the_weights(tmp_path):
    """A ~50 MB float64 checkpoint over 2 ranks: each rank's parameters are half of the model's plus the replicated
    norms, and a worker's resident anonymous memory grows by half the weights less than a one-device load's does
    (both also grow by the same fixed amount: Python modules torch loads when the first model is built)."""
    path = write_checkpoint(tmp_path / "big", "dense", seed=1, d=256, layers=2, heads=4, inter=1024, vocab=8192)
    full = 8 * (2 * 8192 * 256 + 2 * (4 * 256 * 256 + 3 * 256 * 1024) + 256 * 5)  # bytes, float64
    one = subprocess.run([sys.executable, "-c", ONE_DEVICE_LOAD, str(path)], capture_output=True, text=True,
                         check=True)
    one_device_growth = int(one.stdout.split()[-1])
    with LLM(str(path), device="cpu", dtype="float64", tensor_parallel_size=2, kv_cache_memory=1 << 20) as tp:
        rank0 = sum(p.numel() * p.element_size() for p in tp.engine.model.parameters())
        rank1 = tp.engine.ranks.reports[0]
    growth = rank1["rss_after_load"] - rank1["rss_before_load"]
    print(f"weights {full} B; params rank 0 {rank0} B, rank 1 {rank1['param_bytes']} B; RssAnon growth while "
          f"loading: one device {one_device_growth} B, rank 1 of 2 {growth} B")
    replicated = 8 * 256 * 5  # the 2 norms of each of the 2 layers and the final norm
    assert rank0 == rank1["param_bytes"] == (full - replicated) // 2 + replicated
    assert 0.4 * full < one_device_growth - growth < 0.6 * full


def test_unsplittable_models_are_refused(ckpts):
    with pytest.raises(UnsupportedConfigError, match="does not divide the number of attention heads"):
        LLM(str(ckpts["dense"]), device="cpu", dtype="float64", tensor_parallel_size=3)
    with pytest.raises(UnsupportedConfigError, match="expert parallelism needs a MoE model"):
        LLM(str(ckpts["dense"]), device="cpu", dtype="float64", tensor_parallel_size=2, enable_expert_parallel=True)


def test_a_checkpoint_that_fails_to_load_leaves_no_rank_behind(tmp_path):
    import multiprocessing

    from safetensors.torch import load_file, save_file
    from unmask.server.config import CheckpointError

    path = write_checkpoint(tmp_path / "broken", "dense", seed=2)
    tensors = load_file(str(path / "model.safetensors"))
    del tensors["model.transformer.blocks.1.ff_out.weight"]
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing tensor 'model.transformer.blocks.1.ff_out.weight'"):
        LLM(str(path), device="cpu", dtype="float64", kv_cache_memory=KV, tensor_parallel_size=2)
    assert multiprocessing.active_children() == []
