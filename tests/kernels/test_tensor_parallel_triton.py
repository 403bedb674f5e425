"""Tensor parallelism with every op on its Triton kernel (``UNMASK_KERNELS=triton``; the CPU interpreter when there
is no GPU, inherited by the spawned ranks): each rank's kernels run on its local shapes (one head of two, half of
every expert's units, half the vocabulary; the paged cache of one key/value head) and the split model
answers as the one-device model does with the torch ops. float32 (the kernels compute in fp32) on a small model
whose greedy choices are well separated (as tests/kernels/test_engine_triton.py)."""
import pytest
import torch

from unmask import LLM, DiffusionParams

pytestmark = [pytest.mark.interpret, pytest.mark.skipif(
    torch.cuda.is_available(), reason="interpreter test on CPU tensors; a multi-GPU run is gpu_check.sh's tp phase")]

KV = 16 << 20  # KV cache bytes per rank (the CPU default, 1 GiB, would be zeroed on every rank)
PROMPTS = [[5, 6, 7, 8], [9, 10, 11, 12, 13, 14]]
PARAMS = [DiffusionParams(max_tokens=4, block_length=2, steps=4, ignore_eos=True),
          DiffusionParams(max_tokens=4, block_length=2, steps=4, cache="dual", ignore_eos=True)]
CASES = [(prompt, params) for prompt in PROMPTS for params in PARAMS]


def test_split_model_on_triton_kernels_answers_as_one_device(tmp_path, monkeypatch):
    """LLaDA-MoE: attention (its paged-cache kernel in the dual-cache rows), fused MoE, norms, RoPE, GEMMs."""
    from tests.helpers import write_checkpoint

    path = write_checkpoint(tmp_path / "moe", "moe", seed=9, d=32, heads=2, inter=16)
    monkeypatch.setenv("UNMASK_KERNELS", "torch")
    prompts, params = [c[0] for c in CASES], [c[1] for c in CASES]
    one = LLM(str(path), device="cpu", dtype="float32", kv_cache_memory=KV)
    want = [o.token_ids for o in one.generate(prompts, params)]
    monkeypatch.setenv("UNMASK_KERNELS", "triton")
    with LLM(str(path), device="cpu", dtype="float32", kv_cache_memory=KV, tensor_parallel_size=2) as tp:
        assert tp.engine.ranks is not None
        got = [o.token_ids for o in tp.generate(prompts, params)]
    assert got == want and all(len(t) == 4 for t in want)
