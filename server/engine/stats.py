"""Counters the engine keeps for /metrics and benchmarks (read from other threads; ints only)."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class EngineStats:
    iterations: int = 0
    """Engine iterations that ran a batch."""
    refresh_steps: int = 0
    """Sequence steps that fed the full canvas."""
    block_steps: int = 0
    """Sequence steps that fed only the block (cached)."""
    forward_tokens: int = 0
    """Tokens fed to the model, summed over iterations."""
    nfe: int = 0
    """Sequence forward evaluations (one per sequence per step that ran a forward)."""
    committed_tokens: int = 0
    """Generation positions committed."""
    output_tokens: int = 0
    """Final tokens handed out."""
    failed_steps: int = 0
    """Iterations whose step raised (their requests finished with an error)."""
    last_batch_size: int = 0
    """Sequences in the latest iteration."""
    batch_size_sum: int = 0
    """Sum of batch sizes (mean occupancy = batch_size_sum / iterations)."""
