"""Final per-request results and stop-string handling shared by the offline API and the HTTP server."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    """Generated ids, cut before the first EOS/EoT."""
    text: str
    """Decoded text (special tokens skipped), cut before the first stop string."""
    finish_reason: str | None
    """'stop', 'length', 'abort' or 'error'."""
    nfe: int = 0
    """Forward evaluations this request took part in."""
    num_committed: int = 0
    error: str | None = None

    @property
    def tpf(self) -> float:
        """Committed tokens per forward."""
        return self.num_committed / self.nfe if self.nfe else 0.0


def find_stop(text: str, stops: tuple[str, ...]) -> int:
    """Index of the earliest stop string in ``text``, or -1."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else -1


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters could still become the start of a stop string (stream must wait)."""
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = max(keep, n)
                break
    return keep
