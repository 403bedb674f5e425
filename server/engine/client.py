"""EngineClient: the one interface the HTTP API (and any front end) uses to reach an engine.

Everything above this line (``server/api``) talks to an engine only through these names: submit a
request's choices (admitted together or refused together), read their :class:`Delta` values, abort,
ask for health, the tokenizer, model facts and a metrics snapshot. :class:`AsyncEngine` (one process,
one device) implements it; a tensor-parallel executor or a remote engine would implement the same
methods. Import-linter keeps ``server/api`` from importing any other engine module.
"""
from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, AsyncIterator, Protocol

from unmask.server.engine.generation_config import GenerationDefaults
from unmask.server.engine.params import DiffusionParams

if TYPE_CHECKING:  # the types below only annotate; importing them here would be circular
    from unmask.server.engine.output_processor import Delta, OutputProcessor
    from unmask.server.tokenizer import Tokenizer


class EngineDeadError(RuntimeError):
    """The engine loop stopped; no request can be served."""


class QueueFullError(RuntimeError):
    """The engine is busy: admitting the request would exceed its waiting-queue cap (retry later)."""


class StreamStalledError(RuntimeError):
    """The caller stopped reading a ChoiceStream: more outputs piled up than it may buffer, so the request
    was aborted."""


class RequestRejected(ValueError):
    """The request can never run as given (the message names the problem; ``param`` the field, ``code`` a
    machine-readable reason such as ``context_length_exceeded``)."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_prompt"):
        super().__init__(message)
        self.param, self.code = param, code


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Facts about the served checkpoint that front ends need."""
    family: str
    architecture: str
    vocab_size: int
    max_model_len: int
    """Longest canvas (prompt + generation region) a request may use."""
    mask_token_id: int
    generation_defaults: GenerationDefaults = dataclasses.field(default_factory=lambda: GenerationDefaults())
    """The checkpoint's generation defaults (and the operator's overrides), with their sources."""


@dataclasses.dataclass(frozen=True)
class Request:
    """One engine request (one choice of an API request): prompt ids and its diffusion settings."""
    request_id: str
    prompt_token_ids: tuple[int, ...]
    params: DiffusionParams
    arrival_time: float = dataclasses.field(default_factory=time.monotonic)
    stream_canvas: bool = False
    """Attach the generation region (masks included) to every output (the ``denoise`` stream)."""
    suffix_token_ids: tuple[int, ...] = ()
    """Infilling: context after the generation region (canvas = prompt + masks + suffix); never changed."""


@dataclasses.dataclass(frozen=True)
class EngineSnapshot:
    """Live engine numbers for /metrics (read at scrape time)."""
    running: int
    waiting: int
    kv_cache_usage: float
    """Fraction of cache pages in use (0-1)."""
    dead: bool
    counters: dict[str, int]
    """EngineStats counters by name (iterations, nfe, refresh_steps, ...)."""
    iteration_tokens: tuple[tuple[float, int], ...] = ()
    """Histogram of tokens fed per engine iteration: (upper bound, iterations in that bucket), last +Inf."""


class ChoiceStream(Protocol):
    """The live choices of one submitted request."""
    processors: list[OutputProcessor]
    """One per choice, in order: each choice's text, tokens and finish so far."""

    def events(self, heartbeat: float | None = None) -> AsyncIterator[tuple[int | None, Delta | BaseException | None]]:
        """(choice index, Delta) as outputs arrive; (index, exception) when the engine fails a choice;
        (None, None) after ``heartbeat`` idle seconds. Ends when every choice has finished."""

    def close(self) -> None:
        """Abort every unfinished choice in the engine. Never awaits (safe in a cancelled task)."""

    def abort_in_engine(self) -> None:
        """Shutdown: abort in the engine but keep the stream open so the choices end with 'abort'."""


class EngineClient(Protocol):
    tokenizer: Tokenizer
    model_info: ModelInfo

    def validate(self, prompt_token_ids: list[int] | tuple[int, ...], params: DiffusionParams) -> None:
        """Raise :class:`RequestRejected` if this prompt + settings can never run here."""

    def submit(self, choices: list[Request], max_buffered: int | None = None) -> ChoiceStream:
        """Admit every choice or none: raises RequestRejected (never fits), QueueFullError (busy now) or
        EngineDeadError before anything is queued. Must be called from a running event loop. With
        ``max_buffered``, a stream whose reader leaves more outputs than that unread is aborted and yields
        StreamStalledError."""

    def abort(self, request_id: str) -> None:
        """Abort one engine request (no-op if unknown or finished)."""

    def health(self) -> str | None:
        """None while the engine runs; otherwise why it cannot serve."""

    def snapshot(self) -> EngineSnapshot:
        """Current gauges and counters."""

    def start(self) -> None:
        """Start serving (e.g. the background loop)."""

    def stop(self) -> None:
        """Stop serving; in-flight choices end."""
