"""What flows between scheduler, runner and the outside: Batch, StepResult, StepOutput."""
from __future__ import annotations

import dataclasses

from unmask.server.engine.sequence import Sequence, StepKind


@dataclasses.dataclass
class Batch:
    """One engine iteration: one step for each scheduled sequence (refresh and block steps may mix)."""
    seqs: list[Sequence]
    kinds: list[StepKind]
    num_tokens: int
    """Tokens fed to the model this iteration (CFG counts its unconditional copy)."""


@dataclasses.dataclass
class StepResult:
    """Runner output: per scheduled sequence, the canvas positions committed and their tokens."""
    commits: list[tuple[list[int], list[int]]]
    ran_forward: list[bool]
    """Whether the sequence's step needed a forward (a step that commits nothing at T=0 needs none)."""


@dataclasses.dataclass(frozen=True)
class StepOutput:
    """Newly final tokens of one request after one step; the stream only ever appends these."""
    request_id: str
    new_token_ids: tuple[int, ...]
    finished: bool
    finish_reason: str | None = None
    """'stop' (EOS/EoT or stop string), 'length' (every position committed), 'abort', or 'error'."""
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    nfe: int = 0
    num_committed: int = 0
    """Generation positions committed so far (final or not)."""
    error: str | None = None
    new_logprobs: tuple[tuple, ...] | None = None
    """Per new token: (logprob, top ids, top logprobs) at the step that committed it (``logprobs`` requests)."""
    stop_token: int | None = None
    """The request's own ``stop_token_ids`` entry that finished it (vLLM's ``stop_reason``), if one did."""
    canvas: tuple[int, ...] | None = None
    """The generation region after this step (masks included), only for requests that asked for it."""
    scheduled_at: float | None = None
    """time.monotonic() when the request left the waiting queue (None while it waits)."""
    queued_s: float | None = None
    """Seconds the request waited from its arrival until it was scheduled (None while it waits)."""
