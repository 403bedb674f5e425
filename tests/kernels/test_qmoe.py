"""Fused MoE with quantized expert stacks (fp8 / int8 per channel, int4 grouped) under the interpreter against the
PyTorch specification (the per-expert dequantized GEMMs of ``torch_ref.moe.fused_moe``), FlashAttention's error
rule in fp32 and fp16."""
import pytest
import torch

from tests.kernels.test_moe import routed
from tests.kernels.tolerance import DEVICE, assert_fa_close, dtypes, gen, randn
from unmask.kernels import quant
from unmask.kernels.torch_ref import moe as ref
from unmask.kernels.triton_ops import moe as tri


@dtypes
@pytest.mark.parametrize("fmt", quant.FORMATS)
@pytest.mark.parametrize("tokens", [3, 24])
def test_fused_moe_quantized_experts(dtype, fmt, tokens):
    d, e, i, k = 64, 8, 32, 2
    g = gen(tokens + len(fmt))
    x = randn(tokens, d, seed_gen=g, dtype=dtype)
    w1 = quant.quantize(randn(e, 2 * i, d, seed_gen=g, scale=d ** -0.5), fmt)  # int4: groups of 64 / 32
    w2 = quant.quantize(randn(e, d, i, seed_gen=g, scale=i ** -0.5), fmt)
    weights, ids = routed(tokens, e, k, seed=tokens)
    w_lp = weights.to(dtype).to(DEVICE)
    out = tri.fused_moe(x, w1, w2, w_lp, ids)
    lp = ref.fused_moe(x, w1, w2, w_lp, ids)
    r64 = ref.fused_moe(x.double(), w1, w2, w_lp.double(), ids)
    assert_fa_close(out, lp, r64, dtype, f"fused_moe {fmt}")
