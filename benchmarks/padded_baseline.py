"""The padded-batch baseline: LLaDA's ``generate()`` over a left-padded batch, as the published code runs a batch.

Legend: B sequences of the batch, L padded canvas length (longest prompt + gen length), H heads, D head dim.

Each batch of prompts is left-padded to its longest prompt and run through the reference port
(``benchmarks/reference/llada_generate.py``: fixed schedule, one forward per step for the whole batch,
top-k per row) on our model code. Positions restart at 0 at each row's first real token and the attention
is torch's plain batched SDPA with a key-padding mask (pad keys never seen), so every row computes what an
unpadded run computes, up to the float rounding of the longer rows. This is the loop other servers'
LLaDA examples run; ``benchmarks/offline.py --padded-rounds`` times it against the engine at equal work.
"""
from __future__ import annotations

import contextlib
import time

import torch
import torch.nn.functional as F
from unmask.kernels import ops, options
from unmask.server.models.attention_meta import AttentionMetadata

from benchmarks.reference.llada_generate import generate as reference_generate


@contextlib.contextmanager
def key_padding(keep: torch.Tensor):
    """While active, the model's attention is one batched SDPA over [B, L] rows with key mask ``keep`` [B, L]."""
    b, length = keep.shape
    mask = keep[:, None, None, :]  # [B, 1, 1, L] True = attend

    def attention(q, k, v, cu_seqlens_q, max_seqlen_q, scale, *cache, **kw):
        qq = q.view(b, length, *q.shape[1:]).transpose(1, 2)  # [B, H, L, D]
        kk = k.view(b, length, *k.shape[1:]).transpose(1, 2)  # [B, Hk, L, D]
        vv = v.view(b, length, *v.shape[1:]).transpose(1, 2)
        rep = q.shape[1] // k.shape[1]
        if rep > 1:
            kk, vv = kk.repeat_interleave(rep, dim=1), vv.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask, scale=scale)  # [B, H, L, D]
        return o.transpose(1, 2).reshape(q.shape)

    saved, ops.attention = ops.attention, attention
    try:
        yield
    finally:
        ops.attention = saved


def padded_forward(model, pad: torch.Tensor):
    """A ``x [B, L] -> logits [B, L, V]`` callable for left-padded rows with ``pad`` [B] pad tokens each."""
    def forward(x):
        b, length = x.shape
        col = torch.arange(length, device=x.device)[None, :]  # [1, L]
        keep = col >= pad[:, None]  # [B, L]
        positions = (col - pad[:, None]).clamp(min=0).reshape(-1)  # [B·L] each row counts from its first token
        with key_padding(keep):
            h = model(x.reshape(-1), positions, AttentionMetadata.packed([length] * b, x.device))
        return model.compute_logits(h).view(b, length, -1)
    return forward


def padded_run(llm, prompts: list[list[int]], p, batch_size: int) -> dict:
    """LLaDA generate() over left-padded batches of ``batch_size`` prompts, in order; outputs cut at the first
    stop token. Every step runs its forward (the reference never stops early)."""
    model, cfg, dev = llm.engine.model, llm.model_config, llm.engine.device
    pad_id = cfg.eos_token_id  # any non-mask id: pad positions are never candidates and never seen
    outs, steps, t0 = [], 0, time.perf_counter()
    with torch.inference_mode(), options.use(llm.engine.runner.kernels):  # the engine's kernels, resolved once
        for i in range(0, len(prompts), batch_size):
            group = prompts[i:i + batch_size]
            width = max(len(ids) for ids in group)
            pad = torch.tensor([width - len(ids) for ids in group], device=dev)  # [B]
            x = torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for ids in group], device=dev)  # [B, P]
            out = reference_generate(padded_forward(model, pad), x, steps=p.steps, gen_length=p.max_tokens,
                                     block_length=p.block_length, mask_id=cfg.mask_token_id,
                                     eos_id=cfg.eos_token_id, eot_id=cfg.eot_token_id or cfg.eos_token_id)
            for row in out[:, width:].tolist():
                cut = next((j for j, t in enumerate(row) if t in cfg.stop_token_ids), len(row))
                outs.append(row[:cut])
            steps += p.steps
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "outputs": outs, "nfe": len(prompts) * p.steps, "steps": steps,
            "committed": len(prompts) * p.max_tokens}
