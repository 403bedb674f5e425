"""RMSNorm, residual-add + RMSNorm, RoPE and (LLaDA-MoE) QK-norm + RoPE at LLaDA-8B / LLaDA-MoE shapes,
N = 32·B tokens (one block per sequence): torch_ref vs Triton (for QK-norm + RoPE also the two-norms-then-RoPE
Triton sequence the fused kernel replaced). Bytes = tensors read + written once; all memory-bound.

Legend: N tokens, D hidden, H heads, Dh head dim.
"""
import torch

from bench_common import BLOCK, LLADA_MOE, row, run_models, time_ms
from unmask.kernels.torch_ref import norm as ref
from unmask.kernels.torch_ref import rope as rope_ref
from unmask.kernels.triton_ops import norm as tri
from unmask.kernels.triton_ops import rope as rope_tri


def bench(model, batch, dev, quick, dtype=torch.bfloat16):
    n, d = batch * BLOCK, model["hidden"]
    h, hd = model["heads"], model["head_dim"]
    x, res = torch.randn(n, d, device=dev, dtype=dtype), torch.randn(n, d, device=dev, dtype=dtype)
    w = torch.randn(d, device=dev, dtype=dtype)
    q, k = torch.randn(n, h, hd, device=dev, dtype=dtype), torch.randn(n, h, hd, device=dev, dtype=dtype)
    pos = torch.arange(n, device=dev) + 512
    elem = x.element_size()
    shape = f"{model['name']} N={n} D={d}"
    rope_shape = f"{model['name']} N={n} H={h} Dh={hd}"
    rows = []
    for name, fn in (("torch_ref", lambda: ref.rms_norm(x, w, 1e-5)), ("triton", lambda: tri.rms_norm(x, w, 1e-5))):
        rows.append(row("rms_norm", shape, name, time_ms(fn, quick), 2 * n * d * elem))
    for name, fn in (("torch_ref", lambda: ref.add_rms_norm(x, res, w, 1e-5)),
                     ("triton", lambda: tri.add_rms_norm(x, res, w, 1e-5))):
        rows.append(row("add_rms_norm", shape, name, time_ms(fn, quick), 4 * n * d * elem))
    for fp32 in (True, False):
        for name, fn in (("torch_ref", lambda f=fp32: rope_ref.rope(q, k, pos, 500000.0, f)),
                         ("triton", lambda f=fp32: rope_tri.rope(q, k, pos, 500000.0, f))):
            rows.append(row(f"rope_fp32={fp32}", rope_shape, name, time_ms(fn, quick), 4 * n * h * hd * elem))
    if model is LLADA_MOE:
        cos, sin = rope_ref.rope_cos_sin(pos, hd, 50000.0, dtype)
        wq, wk = torch.randn(hd, device=dev, dtype=dtype), torch.randn(hd, device=dev, dtype=dtype)

        def unfused():
            qn = tri.rms_norm(q.reshape(-1, hd), wq, 1e-6).view_as(q)
            kn = tri.rms_norm(k.reshape(-1, hd), wk, 1e-6).view_as(k)
            return rope_tri.rope_apply(qn, kn, cos, sin, False)

        for name, fn in (("torch_ref", lambda: rope_ref.qk_norm_rope(q, k, cos, sin, False, wq, wk, 1e-6)),
                         ("triton_norms_then_rope", unfused),
                         ("triton", lambda: rope_tri.qk_norm_rope(q, k, cos, sin, False, wq, wk, 1e-6))):
            rows.append(row("qk_norm_rope", rope_shape, name, time_ms(fn, quick), 4 * n * h * hd * elem))
    return rows


def main():
    run_models(__doc__, bench)


if __name__ == "__main__":
    main()
