"""The one packer: one iteration's sequences -> the tensors of one forward, for the eager and graphed paths.

Legend: B sequences (+ unconditional copies for CFG), N packed tokens, M logit rows, P pages per row.
Per sequence and step kind, the canvas range ``Sequence.fed_range`` says: refresh = the whole canvas
(positions 0..L−1; with a cache its K/V are written); block step = canvas[block_start:] (prefix cache) or the
block alone (dual cache), reading the rest of the keys from the cache. Block-causal models (LLaDA2) stop at
the block end, their refresh reads the cached final prefix and writes the rest, and the metadata carries each
sequence's block size (``attn_blocks``). CFG adds the unconditional canvas (prompt masked, generated
tokens kept: SMDM / LLaDA) as another sequence; its logit rows follow all conditional rows. The fed segments are
packed grouped by the attention call they join (same query and key counts), so the reference attention reads each
group in place (not on the graphed step, whose packed rows are its logit rows, in the sequences' order); logit rows,
rules and plan stay in the sequences' order.

Logit rows are a sequence's commit candidates (eager path), or every position of its block
(``all_block_rows``: the graphed dual-cache step, whose shapes must not depend on the canvas); the
commit policy's per-row rules and per-sequence plan are built here too, so both paths get the same
inputs and the graph path only pads them to its bucket.
"""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import torch

from unmask.server.engine import commit_policy
from unmask.server.engine.commit_policy import CommitPlan, LogitRules
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
    num_cond_rows: int  # M
    cfg_rows: list[tuple[torch.Tensor, float]]  # per guided sequence: (its conditional row indices, w)
    rules: LogitRules  # per conditional row: temperature, noise seed, logit biases
    plan: CommitPlan  # per sequence: slots, candidates, k / threshold / factor


def _slots(pages: list[int], lo: int, n: int, page_size: int) -> torch.Tensor:
    """[n] int64 cache slots of canvas positions lo..lo+n-1."""
    p = torch.arange(lo, lo + n)
    return torch.tensor(pages, dtype=torch.int64)[p // page_size] * page_size + p % page_size


def _key_count(seq: Sequence, lo: int, n: int, read: bool) -> int:
    """Keys a segment of n tokens from canvas position lo attends over: the whole canvas when it reads the cache
    (a block-causal model: up to the segment's end), else its own tokens."""
    return seq.length if read and not seq.rules.block_causal else lo + n


def _block_size(seq: Sequence) -> int:
    return seq.params.block_length if seq.rules.block_causal else 0


def _attention_group(seq: Sequence, lo: int, hi: int, read: bool) -> tuple[int, int, int, int]:
    """The attention call a segment joins (queries, keys, block size, block-causal query offset): segments are
    packed in this order, so each call's sequences are one contiguous run of rows (no gathers per layer)."""
    block = _block_size(seq)
    return hi - lo, _key_count(seq, lo, hi - lo, read), block, lo if block else 0


class _Packer:
    """Accumulates packed segments (token runs) and logit rows as numpy arrays (a numpy op on a few dozen ids costs
    about a microsecond, a torch op several), then builds the tensors once."""

    def __init__(self, kv: KVCacheManager | None, cached_write: bool):
        self.kv, self.cached_write = kv, cached_write
        self.ids, self.pos, self.lens, self.offsets, self.kv_lens, self.tables, self.slots = [], [], [], [], [], [], []
        self.rows, self.un_rows, self.row_pos, self.cfg_rows, self.blocks = [], [], [], [], []
        self.num_tokens = self.num_rows = 0

    def segment(self, tokens: np.ndarray, lo: int, seq: Sequence, write: bool, read: bool) -> int:
        """Add canvas tokens [n] starting at position lo; returns the packed index of the first one. A reading
        segment attends over the whole canvas, or up to its own end on a block-causal model (nothing later is
        visible, and later cache slots may hold no K/V yet)."""
        n = tokens.shape[0]
        self.ids.append(tokens), self.pos.append(np.arange(lo, lo + n))
        self.lens.append(n), self.offsets.append(lo)
        self.kv_lens.append(_key_count(seq, lo, n, read))
        self.blocks.append(_block_size(seq))
        self.tables.append(seq.pages if read else [])
        if self.cached_write:
            self.slots.append(_slots(seq.pages, lo, n, self.kv.page_size) if write else torch.full((n,), -1))
        start, self.num_tokens = self.num_tokens, self.num_tokens + n
        return start

    def logit_rows(self, packed: np.ndarray, positions: torch.Tensor) -> int:
        """Register one sequence's conditional rows (packed indices [n], canvas positions [n]); returns the
        index of the first among all conditional logit rows."""
        m0, self.num_rows = self.num_rows, self.num_rows + positions.numel()
        self.rows.append(packed), self.row_pos.append(positions)
        return m0

    def metadata(self, device: torch.device) -> AttentionMetadata:
        cu = torch.tensor(list(itertools.accumulate(self.lens, initial=0)), dtype=torch.int32, device=device)
        meta = AttentionMetadata(cu_seqlens_q=cu, max_seqlen_q=max(self.lens))
        if any(self.tables):
            table = torch.zeros(len(self.tables), max(len(t) for t in self.tables), dtype=torch.int32)
            for i, t in enumerate(self.tables):
                table[i, :len(t)] = torch.tensor(t, dtype=torch.int32)
            meta.block_table = table.to(device)
            meta.kv_lens = torch.tensor(self.kv_lens, dtype=torch.int32, device=device)
            meta.new_offsets = torch.tensor(self.offsets, dtype=torch.int32, device=device)
        if self.cached_write:
            meta.slot_mapping = torch.cat(self.slots).to(device)
        if any(self.blocks):
            meta.attn_blocks = torch.tensor(self.blocks, dtype=torch.int32, device=device)
        if meta.block_table is not None or meta.slot_mapping is not None:
            meta.kv_caches = self.kv.layers
        return meta

    def finish(self, seqs: list[Sequence], device: torch.device, rows_masked: bool) -> ForwardInputs:
        def cat(parts):  # numpy arrays [n_i] -> one int64 tensor on the device
            return torch.from_numpy(np.concatenate(parts).astype(np.int64, copy=False)).to(device)

        return ForwardInputs(
            seqs=seqs, input_ids=cat(self.ids), positions=cat(self.pos), meta=self.metadata(device),
            logit_rows=cat(self.rows + self.un_rows), num_cond_rows=self.num_rows,
            cfg_rows=self.cfg_rows, rules=commit_policy.build_rules(seqs, self.row_pos, device),
            plan=commit_policy.build_plan(seqs, self.row_pos, device, rows_masked))


def build_inputs(seqs: list[Sequence], kinds: list[StepKind], kv: KVCacheManager | None,
                 device: torch.device, all_block_rows: bool = False) -> ForwardInputs:
    """Pack ``seqs`` (each with its step kind) into one forward's inputs. Logit rows: each sequence's commit
    candidates, or with ``all_block_rows`` every position of its current block (the graphed step)."""
    packer = _Packer(kv, any(s.uses_cache and k is StepKind.REFRESH for s, k in zip(seqs, kinds)))
    fed = [seq.fed_range(kind) for seq, kind in zip(seqs, kinds)]
    reads = [kind is StepKind.BLOCK or lo > 0 for kind, (lo, _) in zip(kinds, fed)]
    starts = [0] * len(seqs)  # packed index of each sequence's first fed token
    order = range(len(seqs)) if all_block_rows else sorted(  # the graphed step's rows stay in sequence order
        range(len(seqs)), key=lambda i: _attention_group(seqs[i], *fed[i], reads[i]))
    for i in order:
        (lo, hi), seq = fed[i], seqs[i]
        starts[i] = packer.segment(seq.canvas_np[lo:hi], lo, seq, seq.uses_cache and kinds[i] is StepKind.REFRESH,
                                   reads[i])
    for seq, (lo, _), start in zip(seqs, fed, starts):
        rows = (torch.arange(seq.block_start, seq.block_end) if all_block_rows
                else commit_policy.candidates(seq))  # [n] canvas positions
        m0 = packer.logit_rows(rows.numpy() + (start - lo), rows)
        if seq.params.cfg_scale > 0:
            un = seq.canvas_np.copy()
            un[:seq.prompt_len] = seq.mask_id
            packer.un_rows.append(packer.segment(un, 0, seq, False, False) + rows.numpy())
            packer.cfg_rows.append((torch.arange(m0, m0 + rows.numel(), device=device), seq.params.cfg_scale))
    # candidates are masked positions (editing proposes for unmasked ones too; the graphed step feeds every block row)
    return packer.finish(seqs, device, rows_masked=not all_block_rows and all(s.editing is None for s in seqs))
