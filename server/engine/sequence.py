"""Sequence: the engine's mutable per-request state (its input, ``Request``, is defined in client.py).

A sequence's **canvas** is its prompt followed by ``params.canvas_length`` generation positions, initially the mask
token, then the request's suffix (infilling: context that is never changed; empty otherwise). The current
**block** is committed over one or more **steps**; committed tokens are never
re-masked, so the contiguous committed prefix of the generation region is final and can be streamed.
"""
from __future__ import annotations

import enum

import torch

from unmask.server.engine.commit_policy import commit_schedule
from unmask.server.engine.client import Request


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class StepKind(enum.Enum):
    REFRESH = "refresh"
    """Full-canvas forward (every exact step, and the first step of a block with a cache: rebuilds it)."""
    BLOCK = "block"
    """Cached step: only the current block (dual) or block + suffix (prefix) is fed."""


class Sequence:
    """Per-request state owned by the scheduler; the runner reads it."""

    def __init__(self, request: Request, mask_id: int, stop_ids: tuple[int, ...], seed: int):
        self.request = request
        self.params = request.params
        self.status = SeqStatus.WAITING
        self.ban_ids = tuple(dict.fromkeys(tuple(stop_ids) + self.params.stop_token_ids))
        """EOS, EoT and every stop id: banned where min_tokens or ignore_eos say (sampling.py)."""
        self.stop_ids = frozenset(() if self.params.ignore_eos else self.ban_ids)  # ignore_eos: nothing stops early
        self.mask_id, self.seed = mask_id, seed
        self.prompt_len = len(request.prompt_token_ids)
        canvas = list(request.prompt_token_ids) + [mask_id] * self.params.canvas_length + list(request.suffix_token_ids)
        self.canvas = torch.tensor(canvas, dtype=torch.int64)  # [L] on CPU
        self.generator = torch.Generator().manual_seed(seed)  # random remasking draws (reference order)
        self.block_idx = 0
        self.step_in_block = 0
        self.plan = commit_schedule(self.params.block_length, self.params.steps_per_block)
        self.num_emitted = 0  # generation tokens already handed out as final
        self.nfe = 0  # forward evaluations (a CFG step counts once, as the reference)
        self.num_steps = 0  # steps taken, including forward-free ones
        self.scheduled_at: float | None = None  # time.monotonic() when admitted to running
        self.pages: list[int] = []  # cache pages (cached modes only)
        self.cache_valid = False  # the cache holds this sequence's K/V from the current block's refresh
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.grammar = None
        """structured.GrammarState of a constrained request (set by the engine at admission), else None."""
        self.token_logprobs: dict[int, tuple] = {}
        """Canvas position -> (logprob, top ids, top logprobs) of its committed token (``logprobs`` requests)."""

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def length(self) -> int:
        """Canvas length L = prompt + params.canvas_length."""
        return self.canvas.shape[0]

    @property
    def gen_end(self) -> int:
        """End of the generation region (the suffix, if any, follows it)."""
        return self.prompt_len + self.params.canvas_length

    @property
    def block_start(self) -> int:
        return self.prompt_len + self.block_idx * self.params.block_length

    @property
    def block_end(self) -> int:
        return self.block_start + self.params.block_length

    @property
    def uses_cache(self) -> bool:
        return self.params.cache != "none"

    def next_kind(self) -> StepKind:
        """Refresh at every exact step and at each block start with a cache; block steps in between."""
        if not self.uses_cache or not self.cache_valid:
            return StepKind.REFRESH
        return StepKind.BLOCK

    def masked_in_block(self) -> torch.Tensor:
        """[W] bool over the current block's positions: still masked."""
        return self.canvas[self.block_start:self.block_end] == self.mask_id

    def final_prefix_len(self) -> int:
        """Number of leading generation positions already committed."""
        gen = self.canvas[self.prompt_len:self.gen_end]
        masked = (gen == self.mask_id).nonzero()
        return gen.shape[0] if masked.numel() == 0 else int(masked[0, 0])

    def output_token_ids(self, upto: int) -> list[int]:
        """Generation tokens [0, upto), cut at the first stop token (exclusive)."""
        out = []
        for t in self.canvas[self.prompt_len:self.prompt_len + upto].tolist():
            if t in self.stop_ids:
                break
            out.append(t)
        return out
