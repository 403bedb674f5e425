"""The model's GPU path issues few kernels per layer: fused projections, RoPE tables built once per forward, no
elementwise torch op between kernels (counted through the interpreter by ``benchmarks/launch_count.py``)."""
import pytest
import torch

from benchmarks.launch_count import count_forward

pytestmark = pytest.mark.skipif(  # CI (no GPU) runs it; a structural count needs no GPU
    torch.cuda.is_available(), reason="kernel launches are counted through Triton's CPU interpreter, which a CUDA "
    "run of tests/kernels does not enable; the GPU check times the same forward in its step table instead")


@pytest.mark.parametrize("family, gemms", [("dense", 4), ("moe", 3)])
def test_per_layer_kernels(family, gemms, monkeypatch):
    monkeypatch.setenv("UNMASK_KERNELS", "triton")
    two, four = count_forward(family, 2, 24), count_forward(family, 4, 24)
    per_layer = {k: (four[k] - two[k]) // 2 for k in set(two) | set(four)}
    # dense: qkv, o, gate_up, down; MoE: qkv, o, router (experts run in the fused MoE kernels)
    assert per_layer["aten.matmul"] == gemms
    assert per_layer["triton._qk_rope_kernel"] == 1 and per_layer["triton._attn_fwd_kernel"] == 1
    assert per_layer["triton._rms_norm_kernel"] == 2  # the block's two norms; MoE's QK-norm rides in the RoPE kernel
    assert {k for k, v in per_layer.items() if v and k.startswith("aten.")} == {"aten.matmul"}  # no elementwise op:
    # RoPE tables once per forward, SwiGLU in one kernel, each residual add fused with the norm after it
    assert two["aten.cos"] == two["aten.sin"] == 1
