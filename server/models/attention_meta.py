"""AttentionMetadata: how the packed tokens of one forward are grouped into sequences, and which cache
pages each sequence reads or writes. Passed explicitly to every attention layer (no global context).

Legend: N packed tokens, B sequences.
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class AttentionMetadata:
    cu_seqlens_q: torch.Tensor
    """[B+1] int32: sequence b owns packed tokens cu[b]:cu[b+1]."""
    max_seqlen_q: int
    """Longest sequence in this forward (host int, for kernel launch sizing)."""
    block_table: torch.Tensor | None = None
    """[B, pages] int32 page ids of each sequence's cache, or None (no cache read)."""
    kv_lens: torch.Tensor | None = None
    """[B] int32 canvas length each sequence attends over (cache + new tokens)."""
    new_offsets: torch.Tensor | None = None
    """[B] int32 canvas position of each sequence's first new token."""
    slot_mapping: torch.Tensor | None = None
    """[N] int64 cache slot each new token's K/V is written to (negative: not written), or None."""
    kv_caches: list | None = None
    """Per layer (k_cache, v_cache), each [P, S, Hk, D], or None when the forward uses no cache."""
    attn_blocks: torch.Tensor | None = None
    """[B] int32 block size of each sequence's block-causal attention (the model's attention pattern, LLaDA2: a
    position sees its own block and every earlier one, blocks of this many absolute positions), or None when
    every sequence attends bidirectionally."""

    @property
    def reads_cache(self) -> bool:
        return self.block_table is not None

    @classmethod
    def packed(cls, seq_lens: list[int], device: torch.device | str = "cpu") -> "AttentionMetadata":
        """Metadata for a cache-free forward over sequences of the given lengths, packed back to back."""
        cu = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(torch.tensor(seq_lens, dtype=torch.int32), 0)
        return cls(cu_seqlens_q=cu.to(device), max_seqlen_q=max(seq_lens, default=0))


def packed_positions(seq_lens: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """[N] int64 positions 0..L_b-1 for each packed sequence."""
    return torch.cat([torch.arange(n, dtype=torch.int64) for n in seq_lens]).to(device)
