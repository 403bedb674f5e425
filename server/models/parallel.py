"""Tensor and expert parallelism: which part of every weight a rank holds, and the collectives its forward runs.

Legend: N ranks (``size``), r this rank, D hidden, H query heads, Hk key/value heads, Dh head dim, I MLP width,
E experts, V vocab, T tokens.

Megatron-style split of a LLaDA block over N ranks (one process per rank, ``server/engine/workers.py``):

- attention by heads: rank r holds heads [r·H/N, (r+1)·H/N) of q and the matching Hk/N of k and v (the fused
  ``qkv_proj`` rows, column-parallel), the same columns of ``o_proj`` (row-parallel), and its KV cache holds
  only those Hk/N heads. The partial ``o_proj`` outputs are summed by one all-reduce.
- dense MLP: ``gate_up_proj`` rows (column-parallel) and ``down_proj`` columns (row-parallel) of I/N
  intermediate units; one all-reduce.
- MoE, tensor-parallel (default): every rank holds every expert with I/N of its intermediate units (the same
  split as the dense MLP, per expert) and the replicated router; one all-reduce.
- MoE, expert-parallel (``expert_parallel``): rank r holds E/N whole experts. Routing runs identically on
  every rank (the hidden state after an all-reduce is the same bits everywhere); each rank applies the routed
  (token, expert) pairs of its own experts, the others get weight 0 (static shapes: CUDA graphs can capture it),
  and one all-reduce of [T, D] combines the ranks. With tensor-parallel attention every rank already holds every
  token, so dispatching costs nothing and combining is exactly this all-reduce (~2·T·D·(N−1)/N per rank). An
  all-to-all dispatch/combine pays off when the tokens are partitioned instead (data-parallel attention, each
  rank owning T/N tokens): it moves ~2·T·K·D/N per rank, less than the all-reduce once N > K (8 experts per token
  for LLaDA-MoE), computes only routed pairs, and suits experts spread over nodes; that is the large-batch,
  many-GPU regime (DeepSeek-style DP attention + EP), not a single node's block steps of a few hundred tokens.
- vocab-parallel embedding and LM head: rank r holds rows [r·V/N, (r+1)·V/N). The embedding looks up only the
  ids in its range (zero rows elsewhere) and one all-reduce assembles [T, D]; the LM head yields each rank's
  [M, V/N] slice of the logits, which the remask step reduces without gathering (``kernels.ops.remask_partial``).

Norms, q/k norms, routers and expert biases are replicated; LLaDA2's shared experts are split by units in both MoE
modes. Every split is N equal contiguous chunks, so H, Hk, I (or E) and
V must be multiples of N (``check``).

Quantized weights (load-time fp8/int8/int4, compressed-tensors checkpoints; the embedding stays dense) split by the
same rules, and every rank holds exactly its slices of the one-device quantized weights, values and scales:
column-parallel rows (q/k/v, gate/up, expert w_gate_up, a quantized LM head's vocabulary rows) carry their own
per-row or per-group scales; a row-parallel weight's K/N columns (o_proj, down_proj, expert w_down) keep the whole
rows' per-channel scales [N, 1] (at load time from the absmax over all K: one all-reduce(MAX) per tensor,
``row_absmax``) and whole int4 groups, G chosen from the full K, so K/N must be a multiple of G (``group_chunk``);
experts are quantized whole under expert parallelism. The row-parallel matmul needs nothing more: each rank's
x_r @ dequant(W_r)^T uses the shared scales and the block's all-reduce sums the partial products.
"""
from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist

from unmask.server.config import ModelConfig, UnsupportedConfigError

FAMILIES = ("llada", "llada_moe", "llada2", "dream")
"""Families with a sharded model (all share ``layers.py``)."""

ROW_SPLIT = ("embed", "lm_head", "attn.qkv_proj", "attn.qkv_bias", "ffn.gate_up_proj", "ffn.w_gate_up",
             "ffn.shared.gate_up_proj")
"""Internal parameters split along dim 0 of their HF tensors (output rows; fused parts are split one by one, and
q/k/v stored as one HF tensor (LLaDA2) part by part: ``qkv_rows``)."""
COL_SPLIT = ("attn.o_proj", "ffn.down_proj", "ffn.w_down", "ffn.shared.down_proj")
"""Internal parameters split along dim 1 of their HF tensors (input columns)."""
EXPERT_STACKS = ("ffn.w_gate_up", "ffn.w_down")
"""Stacked expert parameters: whole experts per rank under expert parallelism."""


@dataclasses.dataclass(frozen=True)
class TensorParallel:
    """One rank's place in a tensor-parallel group (the process's default torch.distributed group)."""
    rank: int
    size: int
    expert_parallel: bool = False
    """MoE layers: whole experts per rank instead of every expert's intermediate units split."""

    def chunk(self, n: int, what: str) -> tuple[int, int]:
        """This rank's [start, stop) of ``n`` items split in ``size`` equal chunks; ``what`` names them in the
        error when ``n`` is not a multiple of ``size``."""
        if n % self.size:
            raise UnsupportedConfigError(f"tensor parallel size {self.size} does not divide {what} ({n})")
        step = n // self.size
        return self.rank * step, (self.rank + 1) * step

    def check(self, cfg: ModelConfig) -> None:
        """Raise UnsupportedConfigError naming the first reason ``cfg`` cannot be split over ``size`` ranks."""
        if cfg.family not in FAMILIES:
            raise UnsupportedConfigError(f"tensor parallelism supports the {' and '.join(FAMILIES)} families, "
                                         f"not {cfg.family!r}")
        if self.expert_parallel and not cfg.is_moe:
            raise UnsupportedConfigError("expert parallelism needs a MoE model; this one is dense")
        self.local_config(cfg)
        self.chunk(cfg.vocab_size, "the vocabulary size")
        if self.expert_parallel:
            self.chunk(cfg.num_experts, "the number of experts")

    def local_config(self, cfg: ModelConfig) -> ModelConfig:
        """The shapes this rank's layers hold: H/N and Hk/N heads, I/N MLP units, I/N units per expert (tensor-
        parallel MoE). Vocabulary, experts (routing) and every other field stay global."""
        if self.size == 1:
            return cfg
        heads = self.chunk(cfg.num_heads, "the number of attention heads")
        kv = self.chunk(cfg.num_kv_heads, "the number of key/value heads")
        inter = self.chunk(cfg.intermediate_size, "the MLP width") if cfg.intermediate_size else (0, 0)
        expert = cfg.expert_intermediate_size
        if cfg.is_moe and not self.expert_parallel:
            lo, hi = self.chunk(expert, "the expert width")
            expert = hi - lo
        return dataclasses.replace(cfg, num_heads=heads[1] - heads[0], num_kv_heads=kv[1] - kv[0],
                                   intermediate_size=inter[1] - inter[0], expert_intermediate_size=expert)

    def vocab_range(self, cfg: ModelConfig) -> tuple[int, int]:
        """[start, stop) of the vocabulary rows this rank holds."""
        return self.chunk(cfg.vocab_size, "the vocabulary size")

    def expert_range(self, cfg: ModelConfig) -> tuple[int, int]:
        """[start, stop) of the experts this rank holds (all of them without expert parallelism)."""
        return self.chunk(cfg.num_experts, "the number of experts") if self.expert_parallel else (0, cfg.num_experts)

    def split_dim(self, ours: str) -> int | None:
        """The dim of the HF tensor(s) behind internal parameter ``ours`` that is split, or None (replicated,
        or whole experts per rank)."""
        leaf = ours.split(".", 2)[-1] if ours.startswith("blocks.") else ours
        if self.size == 1 or (self.expert_parallel and leaf in EXPERT_STACKS):
            return None
        if leaf in ROW_SPLIT:
            return 0
        return 1 if leaf in COL_SPLIT else None

    def row_parts(self, ours: str, cfg: ModelConfig) -> list[int] | None:
        """For a row-split parameter stored as ONE HF tensor of several parts (LLaDA2's q/k/v), the parts' rows
        (each split in N chunks, this rank's kept, in order); None when the tensor is split as a whole."""
        if self.split_dim(ours) != 0 or not ours.endswith(("attn.qkv_proj", "attn.qkv_bias")):
            return None
        return [cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim]

    def shared_width(self, cfg: ModelConfig) -> int:
        """Units of a MoE layer's shared experts on this rank (``cfg`` local): split in N under expert parallelism
        too (shared experts are not routed, so whole ones per rank would be summed N times)."""
        width = cfg.expert_intermediate_size * cfg.num_shared_experts
        if not self.expert_parallel:
            return width  # the local expert width is already split
        lo, hi = self.chunk(width, "the shared experts' width")
        return hi - lo

    def group_chunk(self, k: int, group: int, what: str) -> tuple[int, int]:
        """This rank's [start, stop) of the K input features of a row-parallel weight quantized in groups of
        ``group`` features: K/N must be a multiple of G (every rank holds whole groups, so its group scales are a
        slice of the full weight's); else UnsupportedConfigError naming ``what``, K, N and G."""
        lo, hi = self.chunk(k, f"the input features of {what}")
        if (hi - lo) % group:
            raise UnsupportedConfigError(
                f"{what}: tensor parallel size {self.size} splits its K = {k} input features into {hi - lo} per "
                f"rank, not a multiple of its quantization group size G = {group}")
        return lo, hi

    def row_absmax(self, local: torch.Tensor, chunk_absmax: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """The per-row absmax of a row-parallel weight over all K: local fp32 [.., N, 1], this rank's over its K/N
        columns -> [.., N, 1] over the whole rows, the same bits on every rank (a max is exact in any order). In
        the process group one all-reduce(MAX); without one (a shard loaded on its own, e.g. by a test), the max of
        ``chunk_absmax(r)`` (rank r's partial absmax, read by this process) over the other ranks r, one at a time."""
        if dist.is_initialized():
            if dist.get_world_size() != self.size:
                raise RuntimeError(f"process group of {dist.get_world_size()} ranks, tensor parallel size {self.size}")
            dist.all_reduce(local, op=dist.ReduceOp.MAX)
            return local
        for r in range(self.size):
            if r != self.rank:
                local = torch.maximum(local, chunk_absmax(r))
        return local

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` over the ranks, in place; returns it (a no-op on one rank)."""
        if self.size > 1:
            dist.all_reduce(x)
        return x

    def gather(self, x: torch.Tensor) -> list[torch.Tensor] | None:
        """Every rank's ``x`` (same shape and dtype) at rank 0, in rank order; None on the other ranks."""
        parts = [torch.empty_like(x) for _ in range(self.size)] if self.rank == 0 else None
        dist.gather(x.contiguous(), parts, dst=0)
        return parts

    def gather_cols(self, x: torch.Tensor) -> torch.Tensor | None:
        """x [M, C] this rank's columns -> [M, C·N] at rank 0 (the ranks' columns in rank order); None elsewhere."""
        parts = self.gather(x)
        return None if parts is None else torch.cat(parts, dim=1)


def embed_lookup(weight: torch.Tensor, ids: torch.Tensor, tp: TensorParallel | None, vocab_start: int) -> torch.Tensor:
    """weight [V/N, D] this rank's embedding rows (from ``vocab_start``), ids [T] int64 global -> [T, D]: the
    embedding of every id, assembled over the ranks (rows outside a rank's range contribute zeros)."""
    if tp is None or tp.size == 1:
        return weight[ids]
    local = ids - vocab_start  # [T]
    mine = (local >= 0) & (local < weight.shape[0])  # [T]
    x = weight[local.clamp(0, weight.shape[0] - 1)] * mine[:, None].to(weight.dtype)  # [T, D]
    return tp.all_reduce(x)


def local_expert_routes(weights: torch.Tensor, ids: torch.Tensor, first: int, count: int):
    """Expert parallelism: weights/ids [T, K] global routing -> (weights [T, K], ids [T, K]) for this rank's
    experts [first, first + count): ids made local, pairs routed elsewhere given weight 0 on local expert 0
    (static shapes; their product is exactly zero)."""
    local = ids - first  # [T, K]
    mine = (local >= 0) & (local < count)
    return torch.where(mine, weights, torch.zeros_like(weights)), torch.where(mine, local, torch.zeros_like(local))


def init_group(rank: int, size: int, init_method: str, device: torch.device, timeout_s: float) -> None:
    """Join the default process group: NCCL on CUDA, gloo on CPU. Collectives that wait longer than
    ``timeout_s`` raise (gloo) or abort (NCCL)."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size,
                            timeout=timedelta(seconds=timeout_s))
