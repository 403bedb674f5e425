"""Responder: one request's deltas -> SSE chunks (streaming) or one answer (non-streaming), plus its metrics.

Both modes read the same OutputProcessor state, so a streamed text always equals the non-streamed one. The
endpoint's Shape (serving_completion / serving_chat / serving_responses) decides the wire format; this class
decides when a choice's chunk goes out (chat's role chunk with its first text, empty deltas skipped, one finish
reason per choice), the denoise events, the usage and the per-choice metrics.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from unmask.server.api import streaming
from unmask.server.api.errors import APIError
from unmask.server.engine.output_processor import Delta

if TYPE_CHECKING:  # serving.py imports this module
    from unmask.server.api.serving import Choice, Prepared


def usage(prompt_tokens: int, completion_tokens: int, extra: dict | None = None) -> dict:
    out = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
           "total_tokens": prompt_tokens + completion_tokens}
    if extra:
        out.update(extra)
    return out


class Responder:
    """One request's deltas -> SSE chunks (streaming) or one answer (non-streaming), plus its metrics."""

    def __init__(self, state, prep: Prepared, choices: list[Choice]):
        self.state, self.prep, self.choices, self.n = state, prep, choices, prep.n
        self.prompt_tokens = [len(p) for p in prep.prompts for _ in range(prep.n)]
        self.echo = [e for e in prep.echo for _ in range(prep.n)]
        self._started = [False] * len(choices)
        self._ttft: list[float | None] = [None] * len(choices)
        self._steps = [0] * len(choices)
        self._recorded = [False] * len(choices)
        self._last_chunk: list[float | None] = [None] * len(choices)
        self._timing: list[tuple[float | None, float | None]] = [(None, None)] * len(choices)  # (scheduled, queued)
        self._logprobs: list[list] = [[] for _ in choices]  # per choice: token logprobs not yet sent

    def on_delta(self, index: int, delta: Delta, stream: bool) -> list[bytes]:
        """Apply one choice's delta; return the SSE events to send (none when not streaming). Raises
        APIError when the engine failed this request."""
        if delta.finish_reason == "error":
            self.record_unfinished("error")
            raise APIError(500, f"the engine step failed: {delta.step.error}", None, "engine_error")
        out: list[bytes] = []
        self._steps[index] += 1
        if delta.step.scheduled_at is not None:
            self._timing[index] = (delta.step.scheduled_at, delta.step.queued_s)
        if stream and self.prep.flags.denoise and delta.step.canvas is not None:
            out.append(self._denoise_event(index, delta))
        if delta.text and self._ttft[index] is None:
            self._ttft[index] = time.monotonic() - self.prep.t0
        if delta.finished:
            self._record(index)
        if stream and delta.logprobs:
            self._logprobs[index] += zip(delta.token_ids, delta.logprobs)
        if stream and (delta.text or delta.finished):
            out.extend(self._chunks(index, delta.text))
        return out

    def _chunks(self, index: int, text: str) -> list[bytes]:
        choice, shape, out = self.choices[index], self.prep.shape, []
        if not self._started[index]:
            self._started[index] = True
            role = shape.role_chunk(index)
            if role is not None:
                out.append(shape.encode(role))
            text = self.echo[index] + text
        now = time.monotonic()
        if text and self._last_chunk[index] is not None:
            self.state.metrics.itl.observe(now - self._last_chunk[index])
        if text:
            self._last_chunk[index] = now
        running = self._usage([index]) if self.prep.flags.continuous_usage else None
        lps = None
        if getattr(choice, "logprobs", None) is not None:  # tokens held back with their text go with it
            lps, self._logprobs[index] = self._logprobs[index], []
        chunk = shape.chunk(index, text, choice.finish_reason, choice.stop_reason, running, lps)
        if chunk is not None:  # a shape may have no event for a finish without text (Responses: the tail says it)
            out.append(shape.encode(chunk))
        return out

    def _denoise_event(self, index: int, delta: Delta) -> bytes:
        client, step = self.state.client, delta.step
        payload = streaming.denoise_payload(step.canvas, index, self._steps[index], step.nfe, step.num_committed,
                                            step.finished, client.model_info.mask_token_id,
                                            self.prep.params.block_length, self.prep.params.max_tokens,
                                            self.state.strings)
        return streaming.event(streaming.DENOISE_EVENT, {**self.prep.shape.usage_chunk(None),
                                                         "object": "denoise.step", "denoise": payload})

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

    def head(self) -> list[bytes]:
        """What a stream starts with (before any engine output)."""
        return self.prep.shape.head()

    def tail(self) -> list[bytes]:
        """What a finished stream ends with (chat/completions: the usage chunk if asked, then [DONE])."""
        return self.prep.shape.tail(self.choices, self.total_usage(), self.prep.flags.include_usage)

    def final(self) -> dict:
        return self.prep.shape.final(self.choices, self.total_usage(), self.echo)

    def record_unfinished(self, reason: str = "abort") -> None:
        """The request ended early (client gone, engine error): count its open choices as ``reason``."""
        for i, c in enumerate(self.choices):
            if c.finish_reason is None:
                c.fail(reason)
            if not self._recorded[i]:
                self._record(i)

    def _record(self, index: int) -> None:
        if self._recorded[index]:
            return
        self._recorded[index] = True
        c = self.choices[index]
        prompt = self.prompt_tokens[index] if index % self.n == 0 else 0
        tpf = c.num_committed / c.nfe if c.nfe else 0.0
        scheduled, queued = self._timing[index]
        now = time.monotonic()
        self.state.metrics.choice_finished(c.finish_reason, prompt, len(c.token_ids), c.nfe, tpf,
                                           self._ttft[index], now - self.prep.t0, queued,
                                           None if scheduled is None else now - scheduled)
