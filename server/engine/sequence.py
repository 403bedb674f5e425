"""Sequence: the engine's mutable per-request state (its input, ``Request``, is defined in client.py).

A sequence's **canvas** is its prompt followed by its generation positions, initially the mask token, then the
request's suffix (infilling: context that is never changed; empty otherwise). The generation region is
``params.canvas_length`` positions with blocks starting at the end of the prompt, or, for families whose blocks
are aligned to absolute positions (LLaDA2, ``family_rules``), it runs from the prompt to the end of the block
that holds position ``P + max_tokens − 1``, the first block starting at ``(P // B) · B``. The current **block** is
committed over one or more **steps**; committed tokens are never re-masked, so the contiguous committed prefix of
the generation region is final and can be streamed.
"""
from __future__ import annotations

import enum

import numpy as np
import torch

from unmask.server.engine.client import Request
from unmask.server.engine.commit_counts import commit_schedule
from unmask.server.engine.family_rules import LLADA_RULES, FamilyRules


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

    def __init__(self, request: Request, mask_id: int, stop_ids: tuple[int, ...], seed: int,
                 rules: FamilyRules = LLADA_RULES, cached: bool | None = None):
        """``rules``: the model family's decoding rules; ``cached``: the sequence uses the K/V cache (default: its
        params ask for one; block-causal families use the exact prefix cache whenever the engine has room)."""
        self.request = request
        self.params = p = request.params
        self.rules = rules
        self.status = SeqStatus.WAITING
        self.ban_ids = tuple(dict.fromkeys(tuple(stop_ids) + p.stop_token_ids))
        """EOS, EoT and every stop id: banned where min_tokens or ignore_eos say (sampling.py)."""
        self.stop_ids = frozenset(() if p.ignore_eos else self.ban_ids)  # ignore_eos: nothing stops early
        self.mask_id, self.seed = mask_id, seed
        self.prompt_len = n = len(request.prompt_token_ids)
        self.first_block_start, gen_end = rules.layout(n, p)
        self.gen_length = gen_end - n
        """Generation positions of the canvas (≥ max_tokens; the output is cut to max_tokens)."""
        self.num_blocks = (gen_end - self.first_block_start) // p.block_length
        self.steps_per_block = min(p.steps_per_block, p.max_tokens) if rules.aligned_blocks else p.steps_per_block
        """Steps of each block (LLaDA2's reference caps them at gen_length // minimal_topk, minimal_topk = 1)."""
        self.threshold = rules.threshold(p)
        """The family's strict threshold with a minimum count (LLaDA2), or None (the LLaDA rules)."""
        canvas = list(request.prompt_token_ids) + [mask_id] * self.gen_length + list(request.suffix_token_ids)
        self.canvas = torch.tensor(canvas, dtype=torch.int64)  # [L] on CPU
        self.canvas_np = self.canvas.numpy()
        """[L] int64: the canvas's own memory as a numpy array, for the per-step host bookkeeping (a numpy op on a
        few dozen ids costs about 1 us, a torch op about 4 us)."""
        self.uses_cache = p.cache != "none" if cached is None else cached
        self.generator = torch.Generator().manual_seed(seed)  # random remasking draws (reference order)
        self.block_idx = 0
        self.step_in_block = 0
        self.plan = self.block_plan()
        self.num_emitted = 0  # generation tokens already handed out as final
        self.nfe = 0  # forward evaluations (a CFG step counts once, as the reference)
        self.num_steps = 0  # steps taken, including forward-free ones
        self.scheduled_at: float | None = None  # time.monotonic() when admitted to running
        self.pages: list[int] = []  # cache pages (cached modes only)
        self.cache_valid = False  # the cache holds this sequence's K/V from the current block's refresh
        self.cached_upto = 0  # block-causal: the cache holds the final K/V of canvas positions [0, cached_upto)
        self.editing = p.editing_threshold  # LLaDA2.1 editing threshold, or None
        self.post_steps = 0  # editing: edit-only steps run in the current block (it had no mask at their start)
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
        """Canvas length L = prompt + generation region + suffix."""
        return self.canvas.shape[0]

    @property
    def gen_end(self) -> int:
        """End of the generation region (the suffix, if any, follows it)."""
        return self.prompt_len + self.gen_length

    @property
    def block_start(self) -> int:
        return self.first_block_start + self.block_idx * self.params.block_length

    @property
    def block_end(self) -> int:
        return self.block_start + self.params.block_length

    def next_kind(self) -> StepKind:
        """Refresh at every exact step and at each block start with a cache; block steps in between."""
        if not self.uses_cache or not self.cache_valid:
            return StepKind.REFRESH
        return StepKind.BLOCK

    def fed_range(self, kind: StepKind) -> tuple[int, int]:
        """Canvas range [lo, hi) fed to the model for a step of ``kind``. Bidirectional families: a refresh feeds
        the whole canvas; a block step the block and everything after it (prefix cache) or the block alone
        (dual cache). Block-causal families never feed past the block end (nothing before it sees later
        positions): a refresh feeds from the first position whose cached K/V are not final (0 without a cache),
        a block step the block alone."""
        if self.rules.block_causal:
            if kind is StepKind.BLOCK:
                return self.block_start, self.block_end
            return (self.cached_upto if self.uses_cache else 0), self.block_end
        if kind is StepKind.REFRESH:
            return 0, self.length
        if self.params.cache == "dual":
            return self.block_start, self.block_end
        return self.block_start, self.length

    def block_plan(self) -> list[int]:
        """The fixed commit schedule of the current block: its masks split over its steps (LLaDA), or the block
        length split over them (the minimum counts of LLaDA2's threshold rule)."""
        if self.threshold is not None:
            return commit_schedule(self.params.block_length, self.steps_per_block)
        return commit_schedule(int(self.masked_in_block().sum()), self.steps_per_block)

    def masked_in_block(self) -> np.ndarray:
        """[W] bool (numpy) over the current block's positions: still masked."""
        return self.canvas_np[self.block_start:self.block_end] == self.mask_id

    def final_prefix_len(self) -> int:
        """Number of leading generation positions already committed and final (with editing, the current block's
        tokens may still change: only earlier blocks count)."""
        gen = self.canvas_np[self.prompt_len:self.gen_end]
        masked = np.flatnonzero(gen == self.mask_id)
        n = gen.shape[0] if masked.size == 0 else int(masked[0])
        return min(n, max(self.block_start - self.prompt_len, 0)) if self.editing is not None else n

    def output_token_ids(self, upto: int, start: int = 0) -> list[int]:
        """Generation tokens [start, upto), cut at the first stop token (exclusive)."""
        out = []
        for t in self.canvas_np[self.prompt_len + start:self.prompt_len + upto].tolist():
            if t in self.stop_ids:
                break
            out.append(t)
        return out
