"""CUDA-graph capture of the cached block step, one graph per batch-size bucket.

Legend: B sequences (padded to the bucket), W block width, N = B·W tokens, P pages per sequence, V vocab.

A dual-cache block step has static shapes once B and W are fixed: every sequence feeds exactly its W
block tokens and reads the rest of its canvas from the paged cache. The whole step — model forward,
LM head on all N rows, then ``commit_policy.propose`` (the logit rules and ``remask_confidence``, the
same call as the eager path) — is captured once per (bucket, W) and replayed after copying the packer's
inputs (``forward_inputs.build_inputs(..., all_block_rows=True)``) into static buffers, so the ~10 kernel
launches per layer cost one graph launch (KERNELS.md §4: un-graphed launches eat 1.5-3.5 ms of a 4.6 ms
floor). Padding sequences attend only to their own tokens (kv_len = W, offset 0) and are discarded.
What the step computes after the LM head is its ``head``: on one device the logits and ``propose``'s
proposals (``ModelRunner``; the commit selection, ``commit_policy.select``, runs after the replay, and a step
whose rows use sampling controls has them applied to the returned logits and proposes again, eagerly); on a
tensor-parallel rank its slice's per-row partials (``tp_runner.ShardStep``: the forward's all-reduces are
captured with it, the gather of the partials runs after the replay). The kernels it runs perform no host
synchronisation. ``capture=False`` runs the same static buffers and padding eagerly: the path's CPU tests.
"""
from __future__ import annotations

from typing import Callable

import torch

from unmask.kernels.options import KernelOptions
from unmask.server.engine.commit_policy import LogitRules
from unmask.server.models.attention_meta import AttentionMetadata

Head = Callable[[torch.Tensor, LogitRules], tuple[torch.Tensor, ...]]
"""logits [N, V] (or a rank's [N, V/R]), the step's rules per row [N] -> the step's outputs, each [N, ...]."""

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def bucket_for(batch: int) -> int | None:
    """Smallest bucket ≥ batch, or None if the batch is larger than every bucket."""
    return next((b for b in BUCKETS if b >= batch), None)


def graph_capture(cuda_graphs: bool, device: torch.device, kernels: KernelOptions, kv) -> bool | None:
    """How a runner on ``device`` runs its dual-cache block steps: True = captured CUDA graphs (CUDA with
    ``cuda_graphs``), False = the same static buffers run eagerly (``kernels.static_graph_step``, any device),
    None = no graphed step (the packed eager path; also without a KV cache ``kv``)."""
    if kv is None:
        return None
    if kernels.static_graph_step:
        return False
    return True if cuda_graphs and device.type == "cuda" else None


class GraphedBlockStep:
    """Captured block steps for one model and cache, keyed by (bucket, block width)."""

    def __init__(self, model: torch.nn.Module, kv_layers: list, max_pages: int, head: Head, capture: bool = True):
        self.model, self.kv_layers, self.max_pages, self.head, self.capture = model, kv_layers, max_pages, head, capture
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, dict, tuple]] = {}
        self.pool = None

    def _buffers(self, b: int, w: int, device) -> dict:
        n = b * w
        return {"ids": torch.zeros(n, dtype=torch.int64, device=device),
                "pos": torch.arange(w, device=device).repeat(b),
                "cu": torch.arange(0, n + 1, w, dtype=torch.int32, device=device),
                "table": torch.zeros(b, self.max_pages, dtype=torch.int32, device=device),
                "kv_lens": torch.full((b,), w, dtype=torch.int32, device=device),
                "offsets": torch.zeros(b, dtype=torch.int32, device=device),
                "temp": torch.zeros(n, dtype=torch.float32, device=device),
                "seeds": torch.zeros(n, dtype=torch.int64, device=device),
                "mask_bias": torch.zeros(n, dtype=torch.float32, device=device),
                "eos_bias": torch.zeros(n, dtype=torch.float32, device=device)}

    def _step(self, buf: dict, w: int):
        meta = AttentionMetadata(cu_seqlens_q=buf["cu"], max_seqlen_q=w, block_table=buf["table"],
                                 kv_lens=buf["kv_lens"], new_offsets=buf["offsets"], kv_caches=self.kv_layers)
        hidden = self.model(buf["ids"], buf["pos"], meta)  # [N, D]
        logits = self.model.compute_logits(hidden)  # [N, V]
        return self.head(logits, LogitRules(buf["temp"], buf["seeds"], buf["mask_bias"], buf["eos_bias"]))

    def _capture(self, b: int, w: int, device):
        buf = self._buffers(b, w, device)
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up: Triton compiles and autotunes outside the capture
                self._step(buf, w)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self._step(buf, w)
        self.pool = graph.pool()
        self.graphs[(b, w)] = (graph, buf, out)

    @torch.inference_mode()
    def run(self, input_ids, positions, meta: AttentionMetadata, rules: LogitRules, w: int):
        """B real sequences' block step, as packed by ``build_inputs(..., all_block_rows=True)`` (tensors on the
        model's device: input_ids/positions [B·W], meta with block_table [B, ≤P], kv_lens/new_offsets [B],
        rules per row [B·W]) -> the head's outputs for the B·W real rows (views of static buffers valid until
        the next run; on one device: logits [B·W, V], x0 [B·W] int64, conf [B·W] float32)."""
        b = meta.kv_lens.shape[0]
        bucket = bucket_for(b)
        if (bucket, w) not in self.graphs:
            if self.capture:
                self._capture(bucket, w, input_ids.device)
            else:  # same static buffers and padding, run eagerly (CPU tests of this path)
                self.graphs[(bucket, w)] = (None, self._buffers(bucket, w, input_ids.device), None)
        graph, buf, out = self.graphs[(bucket, w)]
        self._fill(buf, input_ids, positions, meta, rules, b, bucket, w)
        if graph is None:
            out = self._step(buf, w)
        else:
            graph.replay()
        return tuple(t[:b * w] for t in out)

    @staticmethod
    def _fill(buf: dict, input_ids, positions, meta: AttentionMetadata, rules: LogitRules, b: int, bucket: int,
              w: int) -> None:
        """Copy the packed inputs into the static buffers; padding sequences get positions 0..W-1, no cache."""
        n = b * w
        buf["ids"][:n].copy_(input_ids), buf["pos"][:n].copy_(positions)
        table = meta.block_table
        buf["table"].zero_()
        buf["table"][:b, :table.shape[1]].copy_(table)
        buf["kv_lens"].fill_(w), buf["offsets"].zero_()
        buf["kv_lens"][:b].copy_(meta.kv_lens), buf["offsets"][:b].copy_(meta.new_offsets)
        for name, src in (("temp", rules.temperature), ("seeds", rules.seeds), ("mask_bias", rules.mask_bias),
                          ("eos_bias", rules.eos_bias)):
            buf[name][:n].copy_(src)
        if n < buf["ids"].shape[0]:
            buf["ids"][n:].zero_()
            buf["pos"][n:].copy_(torch.arange(w, device=input_ids.device).repeat(bucket - b))
