"""Counters the engine keeps for /metrics and benchmarks (read from other threads; ints only)."""
from __future__ import annotations

import bisect
import dataclasses

ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
"""Upper bounds of the tokens-per-iteration histogram (vLLM's ``vllm:iteration_tokens_total`` buckets)."""


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
    iteration_tokens: list[int] = dataclasses.field(default_factory=lambda: [0] * (len(ITERATION_TOKEN_BUCKETS) + 1))
    """Iterations per bucket of tokens fed (ITERATION_TOKEN_BUCKETS, then +Inf); their sum is forward_tokens."""

    def observe_iteration(self, num_tokens: int) -> None:
        """Count one iteration that fed ``num_tokens`` tokens."""
        self.iteration_tokens[bisect.bisect_left(ITERATION_TOKEN_BUCKETS, num_tokens)] += 1
