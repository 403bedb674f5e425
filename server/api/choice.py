"""ChoiceState: one choice's engine outputs -> append-only text deltas.

The engine hands out newly final token ids (stop tokens already cut). Here they are cut to the client's
``max_tokens`` budget, detokenized incrementally (no split UTF-8 characters) and scanned for stop
strings; text that could still turn into a stop string is held back until it cannot. Streaming and
non-streaming answers are built from the same deltas, so their texts are equal by construction.
"""
from __future__ import annotations

from unmask.server.engine.batch import StepOutput
from unmask.server.outputs import find_stop, held_back
from unmask.server.tokenizer import Tokenizer


class ChoiceState:
    def __init__(self, index: int, tokenizer: Tokenizer, max_tokens: int, stops: tuple[str, ...] = (),
                 include_stop: bool = False, skip_special: bool = True):
        self.index, self.max_tokens = index, max_tokens
        self.stops, self.include_stop = stops, include_stop
        self.detok = tokenizer.detokenizer(skip_special)
        self.token_ids: list[int] = []
        self.text = ""
        """Text sent (or to be sent) to the client so far."""
        self._pending = ""  # decoded but held back (may start a stop string)
        self.finish_reason: str | None = None
        self.stop_reason: str | None = None
        self.nfe = 0
        self.num_committed = 0
        self.num_outputs = 0
        self.started = False
        """The client has seen this choice (chat role chunk sent)."""

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def feed(self, out: StepOutput) -> str:
        """Apply one StepOutput; return the text delta to send (possibly ''). Sets ``finish_reason`` when
        the choice ends (engine finish, budget reached, or stop string)."""
        self.num_outputs += 1
        self.nfe, self.num_committed = out.nfe, out.num_committed
        new = out.new_token_ids[:max(self.max_tokens - len(self.token_ids), 0)]
        if self.stops:  # token by token, so a stop string cuts (and counts) at the right token
            for tok in new:
                self.token_ids.append(tok)
                self._pending += self.detok.add([tok])
                if self._cut_at_stop():
                    return self._emit(final=True)
        elif new:  # one detokenizer call per step
            self.token_ids.extend(new)
            self._pending += self.detok.add(list(new))
        if len(self.token_ids) >= self.max_tokens:
            self.finish_reason = "length"
        elif out.finished:
            self.finish_reason = out.finish_reason or "stop"
        return self._emit(final=self.done)

    def _cut_at_stop(self) -> bool:
        cut = find_stop(self._pending, self.stops)
        if cut < 0:
            return False
        stop = min((s for s in self.stops if self._pending.startswith(s, cut)), key=len)
        self._pending = self._pending[:cut + (len(stop) if self.include_stop else 0)]
        self.finish_reason, self.stop_reason = "stop", stop
        return True

    def _emit(self, final: bool) -> str:
        if final and self.stop_reason is None:
            self._pending += self.detok.flush()
            if self.stops:
                self._cut_at_stop()
            keep = 0
        else:
            keep = held_back(self._pending, self.stops) if self.stops and not final else 0
        ready = self._pending[:len(self._pending) - keep]
        self._pending = self._pending[len(ready):]
        self.text += ready
        return ready

    def fail(self, reason: str = "abort") -> None:
        """End the choice without more text (engine error or shutdown abort)."""
        if self.finish_reason is None:
            self.finish_reason = reason

    @property
    def tpf(self) -> float:
        """Committed tokens per forward evaluation."""
        return self.num_committed / self.nfe if self.nfe else 0.0
