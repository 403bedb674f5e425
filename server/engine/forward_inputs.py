"""Packing one iteration's sequences into the tensors of one forward.

Legend: B sequences (+ unconditional copies for CFG), N packed tokens, M logit rows, P pages per row.
Per sequence and step kind: refresh = the whole canvas (positions 0..L−1; with a cache its K/V are
written); block step = canvas[block_start:] (prefix cache) or the block alone (dual cache), reading
the rest of the keys from the cache. CFG adds the unconditional canvas (prompt masked, generated
tokens kept: SMDM / LLaDA) as another sequence; its logit rows follow all conditional rows.
"""
from __future__ import annotations

import dataclasses

import torch

from unmask.server.engine.kv_cache import KVCacheManager
from unmask.server.engine.sequence import Sequence, StepKind
from unmask.server.models.attention_meta import AttentionMetadata


@dataclasses.dataclass
class ForwardInputs:
    seqs: list[Sequence]
    input_ids: torch.Tensor  # [N] int64
    positions: torch.Tensor  # [N] int64
    meta: AttentionMetadata
    logit_rows: torch.Tensor  # [M + M_cfg] int64 packed rows whose logits are needed
    rows_per_seq: list[int]  # masked block positions per conditional sequence
    num_cond_rows: int  # M
    cfg_rows: list[tuple[torch.Tensor, float]]  # per guided sequence: (its conditional row indices, w)
    temperature: torch.Tensor  # [M] float32
    seeds: torch.Tensor  # [M] int64
    eos_inf_rows: torch.Tensor | None  # [*] rows whose EOS logit is −inf (logits_eos_inf)
    no_mask_rows: torch.Tensor | None  # [*] rows of non-exact requests: the mask token is never proposed


def _segment(seq: Sequence, kind: StepKind) -> tuple[int, int]:
    """Canvas range [lo, hi) fed for this step."""
    if kind is StepKind.REFRESH:
        return 0, seq.length
    if seq.params.cache == "dual":
        return seq.block_start, seq.block_end
    return seq.block_start, seq.length


_SEED_MASK = (1 << 63) - 1


def row_seed(seed: int, step: int, position: int) -> int:
    """Per-(request, step, position) noise seed: independent of what else is in the batch."""
    return ((seed * 0x9E3779B97F4A7C15 + step) * 0xBF58476D1CE4E5B9 + position) & _SEED_MASK


def _slots(pages: list[int], lo: int, n: int, page_size: int) -> torch.Tensor:
    """[n] int64 cache slots of canvas positions lo..lo+n-1."""
    p = torch.arange(lo, lo + n)
    return torch.tensor(pages, dtype=torch.int64)[p // page_size] * page_size + p % page_size


class _Packer:
    """Accumulates packed segments (token runs) and logit rows, then builds the tensors once."""

    def __init__(self, kv: KVCacheManager | None, cached_write: bool):
        self.kv, self.cached_write = kv, cached_write
        self.ids, self.pos, self.lens, self.offsets, self.kv_lens, self.tables, self.slots = [], [], [], [], [], [], []
        self.rows, self.un_rows, self.rows_per_seq, self.cfg_rows = [], [], [], []
        self.temps, self.seeds, self.eos_rows, self.no_mask_rows = [], [], [], []
        self.num_tokens = 0

    def segment(self, tokens: torch.Tensor, lo: int, seq: Sequence, write: bool, read: bool) -> int:
        """Add canvas tokens starting at position lo; returns the packed index of the first one."""
        n = tokens.shape[0]
        self.ids.append(tokens), self.pos.append(torch.arange(lo, lo + n))
        self.lens.append(n), self.offsets.append(lo), self.kv_lens.append(seq.length if read else lo + n)
        self.tables.append(seq.pages if read else [])
        if self.cached_write:
            self.slots.append(_slots(seq.pages, lo, n, self.kv.page_size) if write else torch.full((n,), -1))
        start, self.num_tokens = self.num_tokens, self.num_tokens + n
        return start

    def logit_rows(self, seq: Sequence, packed: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """Register the conditional rows of one sequence; returns their indices among all logit rows."""
        m0, n = sum(self.rows_per_seq), cand.numel()
        self.rows.append(packed), self.rows_per_seq.append(n)
        self.temps += [seq.params.temperature] * n
        self.seeds += [row_seed(seq.seed, seq.num_steps, int(p)) for p in cand]
        idx = torch.arange(m0, m0 + n)
        if seq.params.logits_eos_inf:
            self.eos_rows.append(idx)
        if not seq.params.is_exact:
            self.no_mask_rows.append(idx)
        return idx

    def metadata(self, device: torch.device) -> AttentionMetadata:
        cu = torch.zeros(len(self.lens) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(self.lens, dtype=torch.int32), 0)
        meta = AttentionMetadata(cu_seqlens_q=cu.to(device), max_seqlen_q=max(self.lens))
        if any(self.tables):
            table = torch.zeros(len(self.tables), max(len(t) for t in self.tables), dtype=torch.int32)
            for i, t in enumerate(self.tables):
                table[i, :len(t)] = torch.tensor(t, dtype=torch.int32)
            meta.block_table = table.to(device)
            meta.kv_lens = torch.tensor(self.kv_lens, dtype=torch.int32, device=device)
            meta.new_offsets = torch.tensor(self.offsets, dtype=torch.int32, device=device)
        if self.cached_write:
            meta.slot_mapping = torch.cat(self.slots).to(device)
        if meta.block_table is not None or meta.slot_mapping is not None:
            meta.kv_caches = self.kv.layers
        return meta

    def finish(self, seqs: list[Sequence], device: torch.device) -> ForwardInputs:
        def cat(parts):
            return torch.cat(parts).to(device) if parts else None

        return ForwardInputs(
            seqs=seqs, input_ids=cat(self.ids), positions=cat(self.pos), meta=self.metadata(device),
            logit_rows=cat(self.rows + self.un_rows), rows_per_seq=self.rows_per_seq,
            num_cond_rows=sum(self.rows_per_seq), cfg_rows=self.cfg_rows,
            temperature=torch.tensor(self.temps, dtype=torch.float32, device=device),
            seeds=torch.tensor(self.seeds, dtype=torch.int64, device=device),
            eos_inf_rows=cat(self.eos_rows), no_mask_rows=cat(self.no_mask_rows))


def build_inputs(seqs: list[Sequence], kinds: list[StepKind], kv: KVCacheManager | None,
                 device: torch.device) -> ForwardInputs:
    """Pack ``seqs`` (each with its step kind) into one forward's inputs."""
    packer = _Packer(kv, any(s.uses_cache and k is StepKind.REFRESH for s, k in zip(seqs, kinds)))
    for seq, kind in zip(seqs, kinds):
        lo, hi = _segment(seq, kind)
        start = packer.segment(seq.canvas[lo:hi], lo, seq, seq.uses_cache and kind is StepKind.REFRESH,
                               kind is StepKind.BLOCK)
        cand = seq.candidates()  # [n] canvas positions
        idx = packer.logit_rows(seq, start + cand - lo, cand)
        if seq.params.cfg_scale > 0:
            un = seq.canvas.clone()
            un[:seq.prompt_len] = seq.mask_id
            packer.un_rows.append(packer.segment(un, 0, seq, False, False) + cand)
            packer.cfg_rows.append((idx.to(device), seq.params.cfg_scale))
    return packer.finish(seqs, device)
