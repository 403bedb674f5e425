"""OutputProcessor: one request's engine outputs -> what its caller sees, for ``LLM.generate`` and the HTTP
streams alike.

The engine hands out newly final token ids (stop tokens already cut). Here, in this order, they are cut
to the request's ``max_tokens`` budget, detokenized incrementally (no split UTF-8 characters) and scanned
for stop strings; text that could still turn into a stop string is held back until it cannot. The
finish reason is decided here too: ``length`` (budget reached), ``stop`` (EOS/EoT from the engine, or a
stop string), or the engine's own (``abort``, ``error``). Streaming and non-streaming answers are built
from the same :class:`Delta` values, so their texts are equal by construction.
"""
from __future__ import annotations

import dataclasses

from unmask.server.engine.batch import StepOutput
from unmask.server.engine.params import DiffusionParams
from unmask.server.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class Delta:
    """What one engine step changed for one request, as the caller sees it."""
    text: str
    """New text to append (possibly '')."""
    token_ids: tuple[int, ...]
    """New token ids behind ``text`` (budget-cut; a stop string's tokens are kept)."""
    finished: bool
    finish_reason: str | None
    """'stop', 'length', 'abort' or 'error' once finished."""
    stop_reason: str | int | None
    """The stop string, or the ``stop_token_ids`` entry, that ended the text, if one did."""
    step: StepOutput
    """The engine output this delta came from (counters, the denoise canvas, an error message)."""
    logprobs: tuple[tuple, ...] | None = None
    """Per token of ``token_ids``: (logprob, top ids, top logprobs), for requests that asked for logprobs."""


@dataclasses.dataclass
class RequestOutput:
    """The final result of one request (``LLM.generate``)."""
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    """Generated ids: cut before the first EOS/EoT and at the budget."""
    text: str
    """Decoded text, cut at the first stop string (kept with ``include_stop_str_in_output``)."""
    finish_reason: str | None
    """'stop', 'length', 'abort' or 'error'."""
    nfe: int = 0
    """Forward evaluations this request took part in."""
    num_committed: int = 0
    error: str | None = None
    stop_reason: str | int | None = None
    """The stop string, or the ``stop_token_ids`` entry, that ended the text (vLLM)."""
    logprobs: list[tuple] | None = None
    """Per token of ``token_ids``: (logprob, top ids, top logprobs) when the request asked for logprobs."""

    @property
    def tpf(self) -> float:
        """Committed tokens per forward."""
        return self.num_committed / self.nfe if self.nfe else 0.0


def find_stop(text: str, stops: tuple[str, ...]) -> int:
    """Index of the earliest stop string in ``text``, or -1."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else -1


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters could still become the start of a stop string (the stream must wait)."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = max(keep, n)
                break
    return keep


class OutputProcessor:
    """Per-request state: the budget cut, the incremental detokenizer and the stop-string scan."""

    def __init__(self, tokenizer: Tokenizer, params: DiffusionParams, request_id: str = "",
                 prompt_token_ids: tuple[int, ...] = ()):
        self.request_id, self.prompt_token_ids = request_id, prompt_token_ids
        self.max_tokens, self.stops = params.max_tokens, params.stop
        self.include_stop = params.include_stop_str_in_output
        self.detok = tokenizer.detokenizer(params.skip_special_tokens)
        self.token_ids: list[int] = []
        self.logprobs: list[tuple] | None = [] if params.logprobs is not None else None
        """Per token of ``token_ids``: (logprob, top ids, top logprobs) when asked."""
        self.text = ""
        """Text handed out so far."""
        self._pending = ""  # decoded but held back (may start a stop string)
        self.finish_reason: str | None = None
        self.stop_reason: str | None = None
        self.last: StepOutput | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def nfe(self) -> int:
        return self.last.nfe if self.last is not None else 0

    @property
    def num_committed(self) -> int:
        return self.last.num_committed if self.last is not None else 0

    def process(self, out: StepOutput) -> Delta:
        """Apply one StepOutput of this request and return its Delta. Once finished (budget, stop string or
        the engine's finish) further outputs give empty deltas; the caller aborts the engine request."""
        if self.finished:
            return Delta("", (), True, self.finish_reason, self.stop_reason, out, () if self.logprobs is not None
                         else None)
        self.last = out
        before = len(self.token_ids)
        new = out.new_token_ids[:max(self.max_tokens - before, 0)]
        if out.finish_reason in ("abort", "error"):
            new = ()
        if self.stops:  # token by token, so a stop string cuts (and counts) at the right token
            for tok in new:
                self.token_ids.append(tok)
                self._pending += self.detok.add([tok])
                if self._cut_at_stop():
                    break
        elif new:  # one detokenizer call per step
            self.token_ids.extend(new)
            self._pending += self.detok.add(list(new))
        if self.finish_reason is None:
            if out.finish_reason in ("abort", "error"):
                self.finish_reason = out.finish_reason
            elif len(self.token_ids) >= self.max_tokens:
                self.finish_reason = "length"
            elif out.finished:
                self.finish_reason = out.finish_reason or "stop"
                self.stop_reason = out.stop_token  # a stop_token_ids entry (vLLM), else None
        text = self._release()
        lps = None
        if self.logprobs is not None:
            self.logprobs += (out.new_logprobs or ())[:len(self.token_ids) - len(self.logprobs)]
            lps = tuple(self.logprobs[before:])
        return Delta(text, tuple(self.token_ids[before:]), self.finished, self.finish_reason, self.stop_reason,
                     out, lps)

    def fail(self, reason: str = "abort") -> None:
        """End the request without more text (engine error, client gone, shutdown abort)."""
        if self.finish_reason is None:
            self.finish_reason = reason

    def result(self) -> RequestOutput:
        """The whole answer so far as a RequestOutput."""
        last = self.last
        return RequestOutput(self.request_id, list(self.prompt_token_ids), list(self.token_ids), self.text,
                             self.finish_reason, self.nfe, self.num_committed,
                             last.error if last is not None else None, self.stop_reason,
                             None if self.logprobs is None else list(self.logprobs))

    def _cut_at_stop(self) -> bool:
        cut = find_stop(self._pending, self.stops)
        if cut < 0:
            return False
        stop = min((s for s in self.stops if self._pending.startswith(s, cut)), key=len)
        self._pending = self._pending[:cut + (len(stop) if self.include_stop else 0)]
        self.finish_reason, self.stop_reason = "stop", stop
        return True

    def _release(self) -> str:
        """Move the text that can no longer start a stop string from pending to ``text``; return it."""
        if self.finished and not isinstance(self.stop_reason, str):  # no stop string cut the text yet
            self._pending += self.detok.flush()
            if self.stops:
                self._cut_at_stop()
            keep = 0
        else:
            keep = held_back(self._pending, self.stops) if self.stops and not self.finished else 0
        ready = self._pending[:len(self._pending) - keep]
        self._pending = self._pending[len(ready):]
        self.text += ready
        return ready
