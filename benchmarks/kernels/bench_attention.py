"""Attention benchmark: cached block step (32 new tokens per sequence over a 512-token paged prefix) and
the full-canvas refresh step (544 tokens, no cache), torch_ref vs dense SDPA vs Triton (cached: every key loop of
``attention.LOOPS``, ``triton`` = merged, ``triton_segmented``, ``triton_prefetch``; pages of the engine's size).
From B = 8 on, ``triton_<loop>[bm=..,bn=..,w=..,s=..]@graph`` rows time the tile candidates of ``CANDIDATES``
(cached loops and ``full``, the no-cache tiles) too.

Legend: B sequences, H/Hk heads, D head dim, L = PREFIX + BLOCK keys, S page size.
Bytes = K/V read (+ q, out); FLOPs = 4·B·H·n_q·L·D.
"""
import torch
import torch.nn.functional as F

from bench_common import BLOCK, PREFIX, row, run_models, time_graph_ms, time_ms
from unmask.kernels.torch_ref import attention as ref
from unmask.kernels.triton_ops import attention as tri
from unmask.server.engine.kv_cache import PAGE_SIZE as PAGE

CANDIDATES = [  # (loop, BM max, BN, warps, stages), bf16 at D=128, compiled for sm_90 (registers, programs per SM):
    ("segmented", 64, 64, 4, 1),  # 161 regs, 3 per SM; no overlap inside a program
    ("segmented", 64, 64, 4, 5),  # 224 regs, 140 KiB shared memory, 1 per SM; Triton's pipeliner overlaps 2 tiles
    ("prefetch", 64, 32, 4, 1),  # 185 regs, 2 per SM
    ("prefetch", 64, 64, 8, 1),  # 170 regs, 1 per SM
    ("full", 128, 64, 8, 3),  # no cache: 173 regs, 128 KiB, 1 per SM; pipelined (the table's 2 stages are not)
    ("full", 64, 64, 4, 3),  # 188 regs, 112 KiB, 2 per SM; pipelined
    ("full", 128, 128, 8, 3),  # 244 regs, 224 KiB, 1 per SM; pipelined
]


def candidate_rows(bench, shape, fn_for, nbytes, flops, quick, loops):
    """@graph rows for the candidate tile configs of ``loops`` (forced through ``_GPU_TILES``); ``fn_for(loop)``
    is the call to time."""
    rows, tiles = [], dict(tri._GPU_TILES)
    try:
        for loop, *cfg in CANDIDATES:
            if loop not in loops:
                continue
            tri._GPU_TILES[loop] = tuple(cfg)
            name = "triton_{}[bm={},bn={},w={},s={}]@graph".format(loop, *cfg)
            rows.append(row(bench, shape, name, time_graph_ms(fn_for(loop), quick), nbytes, flops))
            tri._GPU_TILES.update(tiles)
    finally:
        tri._GPU_TILES.update(tiles)
    return rows


def cached_inputs(model, batch, dev, dtype=torch.bfloat16):
    h, hk, d = model["heads"], model["kv_heads"], model["head_dim"]
    kv = PREFIX + BLOCK
    pages = kv // PAGE + 1
    n = batch * BLOCK
    q = torch.randn(n, h, d, device=dev, dtype=dtype)  # [N, H, D]
    k, v = torch.randn(n, hk, d, device=dev, dtype=dtype), torch.randn(n, hk, d, device=dev, dtype=dtype)
    kc = torch.randn(batch * pages, PAGE, hk, d, device=dev, dtype=dtype)  # [P, S, Hk, D]
    vc = torch.randn_like(kc)
    table = torch.randperm(batch * pages, device=dev, dtype=torch.int32).view(batch, pages)  # [B, pages]
    cu = torch.arange(0, n + 1, BLOCK, device=dev, dtype=torch.int32)  # [B+1]
    lens = torch.full((batch,), kv, device=dev, dtype=torch.int32)
    offs = torch.full((batch,), PREFIX, device=dev, dtype=torch.int32)
    return (q, k, v, cu, BLOCK, d ** -0.5, kc, vc, table, lens, offs)


def sdpa_dense(args, batch):
    """The off-the-shelf baseline: K/V already gathered into contiguous [B, Hk, L, D] (no paging cost)."""
    q, k, v, _, _, scale, kc, vc, table = args[:9]
    h, d = q.shape[1], q.shape[2]
    kk = kc[table.long()].flatten(1, 2)[:, :PREFIX + BLOCK].transpose(1, 2).contiguous()  # [B, Hk, L, D]
    vv = vc[table.long()].flatten(1, 2)[:, :PREFIX + BLOCK].transpose(1, 2).contiguous()
    qq = q.view(batch, BLOCK, h, d).transpose(1, 2)  # [B, H, n, D]
    return lambda: F.scaled_dot_product_attention(qq, kk, vv, scale=scale)


def bench_cached(model, batch, dev, quick):
    args = cached_inputs(model, batch, dev)
    h, hk, d = model["heads"], model["kv_heads"], model["head_dim"]
    kv = PREFIX + BLOCK
    nbytes = batch * (kv * hk * d * 2 + 2 * BLOCK * h * d) * 2
    flops = 4 * batch * h * BLOCK * kv * d
    shape = f"{model['name']} B={batch} q={BLOCK} kv={kv}"
    out = []
    sdpa = sdpa_dense(args, batch)
    loops = [(f"triton_{loop}" if loop != "merged" else "triton",
              lambda loop=loop: tri.attention_fwd(*args, loop=loop)) for loop in tri.LOOPS]
    for name, fn in [("torch_ref", lambda: ref.attention(*args)), ("sdpa_dense_kv", sdpa)] + loops:
        out.append(row("attn_cached", shape, name, time_ms(fn, quick), nbytes, flops))
    for name, fn in [("sdpa_dense_kv", sdpa)] + loops:  # launch cost removed
        out.append(row("attn_cached", shape, name + "@graph", time_graph_ms(fn, quick), nbytes, flops))
    if tri._num_splits(batch * model["heads"], args[0].device, None) > 1:  # key splits: also merge in-kernel
        serial = lambda: tri.attention_fwd(*args, serial_combine=True)  # noqa: E731
        out.append(row("attn_cached", shape, "triton_serial_combine@graph", time_graph_ms(serial, quick), nbytes,
                       flops))
    if batch >= 8:
        out += candidate_rows("attn_cached", shape, lambda loop: lambda: tri.attention_fwd(*args, loop=loop), nbytes,
                              flops, quick, ("segmented", "prefetch"))
    return out


def bench_full(model, batch, dev, quick):
    h, d, n = model["heads"], model["head_dim"], PREFIX + BLOCK
    q = torch.randn(batch * n, h, d, device=dev, dtype=torch.bfloat16)
    k, v = torch.randn_like(q), torch.randn_like(q)
    cu = torch.arange(0, batch * n + 1, n, device=dev, dtype=torch.int32)
    qq, kk, vv = (t.view(batch, n, h, d).transpose(1, 2) for t in (q, k, v))
    nbytes, flops = 4 * batch * n * h * d * 2, 4 * batch * h * n * n * d
    shape = f"{model['name']} B={batch} q=kv={n}"
    sdpa = lambda: F.scaled_dot_product_attention(qq, kk, vv, scale=d ** -0.5)  # noqa: E731
    triton_fn = lambda: tri.attention(q, k, v, cu, n, d ** -0.5)  # noqa: E731
    rows = [row("attn_full", shape, name, time_ms(fn, quick), nbytes, flops) for name, fn in (
        ("torch_ref", lambda: ref.attention(q, k, v, cu, n, d ** -0.5)), ("sdpa_dense", sdpa), ("triton", triton_fn))]
    rows += [row("attn_full", shape, name, time_graph_ms(fn, quick), nbytes, flops)
             for name, fn in (("sdpa_dense@graph", sdpa), ("triton@graph", triton_fn))]
    if batch >= 8:
        rows += candidate_rows("attn_full", shape, lambda _: triton_fn, nbytes, flops, quick, ("full",))
    return rows


def main():
    run_models(__doc__, bench_cached, bench_full)


if __name__ == "__main__":
    main()
