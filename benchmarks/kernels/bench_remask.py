"""Remask benchmark: M = 32·B masked rows over the LLaDA-8B (126,464) and LLaDA-MoE (157,184) vocabularies,
greedy (T=0) and sampled (T=1, float64 Gumbel): the torch float64 specification vs the one-pass kernel;
plus per-sequence commit selection (B x 32) in torch and Triton. ``@graph`` rows replay the call from a CUDA
graph (as the engine's captured step does; remask on both sides), so small-M rows show the GPU time rather than
Python launch cost.

Legend: M rows, V vocab, B sequences, W block width. Bytes = M·V·sizeof(logits).
"""
import torch

from bench_common import BLOCK, LLADA_8B, LLADA_MOE, Report, parse_args, require_cuda, row, time_graph_ms, time_ms
from unmask.kernels.torch_ref import remask as ref
from unmask.kernels.torch_ref import select as sel_ref
from unmask.kernels.triton_ops import remask as tri
from unmask.kernels.triton_ops import select as sel_tri


def bench_remask(model, batch, temp, dev, quick, dtype=torch.bfloat16):
    rows_m, vocab = batch * BLOCK, model["vocab"]
    logits = (torch.randn(rows_m, vocab, device=dev) * 3).to(dtype)  # [M, V]
    temps = torch.full((rows_m,), temp, device=dev)
    seeds = torch.randint(0, 2 ** 62, (rows_m,), device=dev)
    nbytes = logits.numel() * logits.element_size()
    shape = f"{model['name']} M={rows_m} V={vocab} T={temp} {str(dtype)[6:]}"
    triton_fn = lambda: tri.remask_confidence(logits, temps, seeds)  # noqa: E731
    torch_fn = lambda: ref.remask_confidence(logits, temps, seeds)  # noqa: E731
    rows = [row("remask", shape, name, time_ms(fn, quick), nbytes) for name, fn in (
        ("torch_ref_fp64", torch_fn), ("triton", triton_fn))]
    # launch cost removed on both sides (NaN, with the reason printed, where the torch path cannot be captured)
    return rows + [row("remask", shape, name + "@graph", time_graph_ms(fn, quick), nbytes)
                   for name, fn in (("torch_ref_fp64", torch_fn), ("triton", triton_fn))]


def bench_select(batch, dev, quick):
    conf = torch.rand(batch, BLOCK, device=dev)
    cand = torch.rand(batch, BLOCK, device=dev) < 0.5
    k = torch.randint(1, 4, (batch,), device=dev, dtype=torch.int32)
    thr = torch.where(torch.rand(batch, device=dev) < 0.5, 0.9, 0.0)
    shape = f"B={batch} W={BLOCK}"
    triton_fn = lambda: sel_tri.select_commits(conf, cand, k, thr)  # noqa: E731
    rows = [row("select_commits", shape, name, time_ms(fn, quick)) for name, fn in (
        ("torch_ref", lambda: sel_ref.select_commits(conf, cand, k, thr)), ("triton", triton_fn))]
    return rows + [row("select_commits", shape, "triton@graph", time_graph_ms(triton_fn, quick))]


def main():
    args = parse_args(__doc__)
    dev = require_cuda()
    out = Report(args.json)
    for model in (LLADA_8B, LLADA_MOE):
        for batch in args.batches:
            for temp in (0.0, 1.0):
                out.add(bench_remask(model, batch, temp, dev, args.quick))
    for batch in args.batches:
        out.add(bench_select(batch, dev, args.quick))


if __name__ == "__main__":
    main()
