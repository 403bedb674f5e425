"""Engine checks that need a CUDA device (skipped elsewhere: CPU CI covers the same logic eagerly).

Run by benchmarks/gpu_check.sh: the captured CUDA-graph block step equals the eager path (on one device, and per
rank under tensor parallelism when 2 GPUs are present), and the Triton kernels drive the engine to the same greedy
outputs as the torch reference in float32.
"""
import pytest
import torch

from unmask import LLM, DiffusionParams

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from tests.helpers import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("gpu"), "moe", seed=4, d=128, heads=2, inter=64)


def _prompts():
    return [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15], [16, 17, 18]]


@cuda
def test_cuda_graph_block_step_equals_eager(ckpt):
    params = [DiffusionParams(max_tokens=32, block_length=16, cache="dual", threshold=t, seed=1)
              for t in (0.2, 0.5, 0.9, 0.3, 0.7)]
    eager = LLM(str(ckpt), device="cuda", dtype="float32")
    eager.engine.runner.graphed = None
    graphed = LLM(str(ckpt), device="cuda", dtype="float32")
    assert graphed.engine.runner.graphed is not None
    want = [o.token_ids for o in eager.generate(_prompts(), params)]
    got = [o.token_ids for o in graphed.generate(_prompts(), params)]
    assert graphed.engine.runner.graphed.graphs and got == want


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (one per tensor-parallel rank)")
@pytest.mark.parametrize("expert_parallel", [False, True])
def test_tensor_parallel_cuda_graphs_equal_eager(ckpt, expert_parallel):
    """TP = 2 over NCCL: greedy dual-cache block steps through every rank's captured graph (its all-reduces
    captured with it) answer as the same TP engine stepping eagerly and as one device."""
    params = [DiffusionParams(max_tokens=32, block_length=16, cache="dual", threshold=t, seed=1)
              for t in (0.2, 0.5, 0.9, 0.3, 0.7)]
    one = [o.token_ids for o in LLM(str(ckpt), device="cuda", dtype="float32").generate(_prompts(), params)]
    with LLM(str(ckpt), device="cuda", dtype="float32", tensor_parallel_size=2,
             enable_expert_parallel=expert_parallel) as tp:
        assert tp.engine.runner.graphed is not None and tp.engine.runner.graphed.capture
        got = [o.token_ids for o in tp.generate(_prompts(), params)]
        assert tp.engine.runner.graphed.graphs
    assert got == one


@cuda
@pytest.mark.parametrize("preset", ["exact", "fast"])
def test_triton_backend_matches_torch_backend(ckpt, preset, monkeypatch):
    params = DiffusionParams(max_tokens=32, block_length=16, preset=preset)
    monkeypatch.setenv("UNMASK_KERNELS", "torch")
    ref = [o.token_ids for o in LLM(str(ckpt), device="cuda", dtype="float32").generate(_prompts(), params)]
    monkeypatch.setenv("UNMASK_KERNELS", "triton")
    tri = [o.token_ids for o in LLM(str(ckpt), device="cuda", dtype="float32").generate(_prompts(), params)]
    assert tri == ref


@cuda
@pytest.mark.parametrize("loop, skinny, serial", [("prefetch", False, False), ("segmented", False, False),
                                                  ("merged", True, False), ("merged", False, True)],
                         ids=["prefetch-loop", "segmented-loop", "skinny-gemm", "in-kernel-split-combine"])
def test_alternative_kernels_match_torch_backend(ckpt, loop, skinny, serial, monkeypatch):
    """The cached-attention loops, the skinny GEMM and the in-kernel split-KV merge (KernelOptions, set here
    through their environment overrides), inside the graphed dual-cache step, give the torch backend's greedy
    outputs."""

    params = DiffusionParams(max_tokens=32, block_length=16, cache="dual", threshold=0.5, seed=1)
    monkeypatch.setenv("UNMASK_KERNELS", "torch")
    ref = [o.token_ids for o in LLM(str(ckpt), device="cuda", dtype="float32").generate(_prompts(), params)]
    monkeypatch.setenv("UNMASK_KERNELS", "triton")
    monkeypatch.setenv("UNMASK_ATTN_LOOP", loop)
    monkeypatch.setenv("UNMASK_GEMM", "triton" if skinny else "cublas")
    monkeypatch.setenv("UNMASK_SERIAL_COMBINE", "1" if serial else "0")
    llm = LLM(str(ckpt), device="cuda", dtype="float32")
    assert llm.engine.runner.graphed is not None
    assert [o.token_ids for o in llm.generate(_prompts(), params)] == ref
