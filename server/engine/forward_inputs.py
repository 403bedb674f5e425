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


def build_inputs(seqs: list[Sequence], kinds: list[StepKind], kv: KVCacheManager | None,
                 device: torch.device) -> ForwardInputs:
    """Pack ``seqs`` (each with its step kind) into one forward's inputs."""
    from unmask.server.engine.model_runner import row_seed

    ids, pos, lens, offsets, kv_lens, slots, tables = [], [], [], [], [], [], []
    rows, rows_per_seq, temps, seeds, eos_rows, no_mask_rows = [], [], [], [], [], []
    un_rows, cfg_rows = [], []
    base = 0
    cached_write = any(s.uses_cache and k is StepKind.REFRESH for s, k in zip(seqs, kinds))

    def add_segment(tokens: torch.Tensor, lo: int, seq: Sequence, write: bool, read: bool):
        nonlocal base
        n = tokens.shape[0]
        ids.append(tokens), pos.append(torch.arange(lo, lo + n))
        lens.append(n), offsets.append(lo), kv_lens.append(lo + n if not read else seq.length)
        tables.append(seq.pages if read else [])
        if cached_write:
            slots.append(_slots(seq.pages, lo, n, kv.page_size) if write else torch.full((n,), -1))
        start = base
        base += n
        return start

    for seq, kind in zip(seqs, kinds):
        lo, hi = _segment(seq, kind)
        start = add_segment(seq.canvas[lo:hi], lo, seq, seq.uses_cache and kind is StepKind.REFRESH,
                            kind is StepKind.BLOCK)
        offs = seq.candidates()  # [n] canvas positions
        m0 = sum(rows_per_seq)
        rows.append(start + offs - lo)
        rows_per_seq.append(offs.numel())
        temps += [seq.params.temperature] * offs.numel()
        seeds += [row_seed(seq.seed, seq.num_steps, int(p)) for p in offs]
        if seq.params.logits_eos_inf:
            eos_rows.append(torch.arange(m0, m0 + offs.numel()))
        if not seq.params.is_exact:
            no_mask_rows.append(torch.arange(m0, m0 + offs.numel()))
        if seq.params.cfg_scale > 0:
            un = seq.canvas.clone()
            un[:seq.prompt_len] = seq.mask_id
            s2 = add_segment(un, 0, seq, False, False)
            un_rows.append(s2 + offs)
            cfg_rows.append((torch.arange(m0, m0 + offs.numel()).to(device), seq.params.cfg_scale))
    return _assemble(locals(), device, kv)


def _slots(pages: list[int], lo: int, n: int, page_size: int) -> torch.Tensor:
    p = torch.arange(lo, lo + n)
    return torch.tensor(pages, dtype=torch.int64)[p // page_size] * page_size + p % page_size


def _assemble(v: dict, device: torch.device, kv: KVCacheManager | None) -> ForwardInputs:
    cu = torch.zeros(len(v["lens"]) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(v["lens"], dtype=torch.int32), 0)
    meta = AttentionMetadata(cu_seqlens_q=cu.to(device), max_seqlen_q=max(v["lens"]))
    if any(v["tables"]):
        width = max(len(t) for t in v["tables"])
        table = torch.zeros(len(v["tables"]), width, dtype=torch.int32)
        for i, t in enumerate(v["tables"]):
            table[i, :len(t)] = torch.tensor(t, dtype=torch.int32)
        meta.block_table = table.to(device)
        meta.kv_lens = torch.tensor(v["kv_lens"], dtype=torch.int32, device=device)
        meta.new_offsets = torch.tensor(v["offsets"], dtype=torch.int32, device=device)
    if v["cached_write"]:
        meta.slot_mapping = torch.cat(v["slots"]).to(device)
    if kv is not None and (meta.block_table is not None or meta.slot_mapping is not None):
        meta.kv_caches = kv.layers
    rows = torch.cat(v["rows"] + v["un_rows"]).to(device)
    return ForwardInputs(
        seqs=v["seqs"], input_ids=torch.cat(v["ids"]).to(device), positions=torch.cat(v["pos"]).to(device),
        meta=meta, logit_rows=rows, rows_per_seq=v["rows_per_seq"], num_cond_rows=sum(v["rows_per_seq"]),
        cfg_rows=v["cfg_rows"],
        temperature=torch.tensor(v["temps"], dtype=torch.float32, device=device),
        seeds=torch.tensor(v["seeds"], dtype=torch.int64, device=device),
        eos_inf_rows=torch.cat(v["eos_rows"]).to(device) if v["eos_rows"] else None,
        no_mask_rows=torch.cat(v["no_mask_rows"]).to(device) if v["no_mask_rows"] else None)
