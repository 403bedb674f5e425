"""ResponseBuilder: a request's engine outputs -> SSE chunks (streaming) or one answer (non-streaming).

Both modes feed the same :class:`ChoiceState`s, so a streamed text always equals the non-streamed one.
Streaming rules (SERVING.md §2.4): chat sends its role chunk together with a choice's first text (not
earlier: benchmarks take it as the first token); empty deltas are skipped; each choice gets exactly one
``finish_reason``; the usage chunk (``choices: []``) comes last, then ``[DONE]``.
"""
from __future__ import annotations

import dataclasses
import time

from unmask.server.api import sse
from unmask.server.api.choice import ChoiceState
from unmask.server.api.denoise import TokenStrings, denoise_payload
from unmask.server.api.errors import APIError
from unmask.server.api.metrics import Metrics
from unmask.server.api.shapes import CompletionShape, usage
from unmask.server.engine.async_engine import EngineDeadError
from unmask.server.engine.batch import StepOutput


@dataclasses.dataclass
class StreamFlags:
    include_usage: bool = False
    continuous_usage: bool = False
    denoise: bool = False


@dataclasses.dataclass
class DenoiseInfo:
    mask_id: int
    block_length: int
    strings: TokenStrings


class ResponseBuilder:
    def __init__(self, shape: CompletionShape, choices: list[ChoiceState], prompt_tokens: list[int],
                 echo: list[str], flags: StreamFlags, metrics: Metrics | None, t0: float, n: int = 1,
                 denoise: DenoiseInfo | None = None):
        """``choices[i]`` belongs to prompt ``i // n``; ``prompt_tokens[i]`` and ``echo[i]`` are per choice."""
        self.shape, self.choices, self.prompt_tokens, self.n = shape, choices, prompt_tokens, n
        self.echo, self.flags, self.metrics, self.t0, self.denoise = echo, flags, metrics, t0, denoise
        self._ttft: list[float | None] = [None] * len(choices)
        self._steps = [0] * len(choices)
        self.finished_choices: list[int] = []
        """Indices that finished on the last :meth:`on_item` call (the caller aborts them in the engine)."""

    @property
    def done(self) -> bool:
        return all(c.done for c in self.choices)

    def on_item(self, index: int, item: StepOutput | BaseException, stream: bool) -> list[bytes]:
        """Apply one engine output; return the SSE events to send (none when not streaming). Raises
        APIError when the engine failed this request."""
        self.finished_choices = []
        choice = self.choices[index]
        if choice.done:  # outputs that raced with an early finish (stop string, budget)
            return []
        if isinstance(item, BaseException):
            self.record_unfinished("error")
            raise _engine_error(item)
        if item.finish_reason == "error":
            self.record_unfinished("error")
            raise APIError(500, f"the engine step failed: {item.error}", None, "engine_error")
        out: list[bytes] = []
        self._steps[index] += 1
        if stream and self.denoise is not None and item.canvas is not None:
            out.append(self._denoise_event(index, item))
        delta = choice.feed(item)
        if delta and self._ttft[index] is None:
            self._ttft[index] = time.monotonic() - self.t0
        if choice.done:
            self.finished_choices.append(index)
            self._record(index)
        if stream and (delta or choice.done):
            out.extend(self._chunks(index, delta))
        return out

    def _chunks(self, index: int, delta: str) -> list[bytes]:
        choice, out = self.choices[index], []
        if not choice.started:
            choice.started = True
            role = self.shape.role_chunk(index)
            if role is not None:
                out.append(sse.data(role))
            delta = self.echo[index] + delta
        running = self._usage([index]) if self.flags.continuous_usage else None
        out.append(sse.data(self.shape.chunk(index, delta, choice.finish_reason, choice.stop_reason, running)))
        return out

    def _denoise_event(self, index: int, item: StepOutput) -> bytes:
        d = self.denoise
        payload = denoise_payload(item, index, self._steps[index], d.mask_id, d.block_length,
                                  self.choices[index].max_tokens, d.strings)
        return sse.event(sse.DENOISE_EVENT, {**self.shape.usage_chunk(None), "object": "denoise.step",
                                             "denoise": payload})

    def _usage(self, indices: list[int]) -> dict:
        prompt = sum(self.prompt_tokens[i] for i in indices)
        completion = sum(len(self.choices[i].token_ids) for i in indices)
        nfe = sum(self.choices[i].nfe for i in indices)
        committed = sum(self.choices[i].num_committed for i in indices)
        extra = {"nfe": nfe, "tokens_per_forward": round(committed / nfe, 4) if nfe else 0.0}  # diffusion extras
        return usage(prompt, completion, extra)

    def total_usage(self) -> dict:
        """Aggregate usage; a prompt counts once for its n choices (as vLLM counts it)."""
        u = self._usage(list(range(len(self.choices))))
        u["prompt_tokens"] = sum(self.prompt_tokens[::self.n])
        u["total_tokens"] = u["prompt_tokens"] + u["completion_tokens"]
        return u

    def tail(self) -> list[bytes]:
        """What a finished stream ends with: the usage chunk if asked, then [DONE]."""
        out = [sse.data(self.shape.usage_chunk(self.total_usage()))] if self.flags.include_usage else []
        return out + [sse.DONE]

    def final(self) -> dict:
        return self.shape.final(self.choices, self.total_usage(), self.echo)

    def record_unfinished(self, reason: str = "abort") -> None:
        """The request ended early (client gone, engine error): count its open choices as ``reason``."""
        for i, c in enumerate(self.choices):
            if not c.done:
                c.fail(reason)
                self._record(i)

    def _record(self, index: int) -> None:
        if self.metrics is None:
            return
        c = self.choices[index]
        prompt = self.prompt_tokens[index] if index % self.n == 0 else 0
        self.metrics.choice_finished(c.finish_reason, prompt, len(c.token_ids), c.nfe, c.tpf,
                                     self._ttft[index], time.monotonic() - self.t0)


def _engine_error(exc: BaseException) -> APIError:
    if isinstance(exc, EngineDeadError):
        return APIError(503, f"the engine stopped: {exc}", None, "engine_dead", retry_after=5)
    return APIError(500, f"generation failed: {type(exc).__name__}: {exc}", None, "engine_error")
