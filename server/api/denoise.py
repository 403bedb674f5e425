"""The opt-in ``denoise`` stream: each step's canvas, for tools that animate the diffusion.

With ``stream_options: {"denoise": true}`` every engine step of a choice produces one
``event: denoise`` SSE event. Its data is shaped like a chunk with empty ``choices`` (so OpenAI clients
that do not filter event names skip it harmlessly) plus a ``denoise`` object::

    {"index": 0, "step": 3, "nfe": 3, "tpf": 1.0, "num_committed": 3, "length": 16,
     "block": [0, 16], "token_ids": [...], "tokens": ["He", null, ...], "masked": [1, 2, ...],
     "mask_token_id": 126336}

``token_ids`` is the whole generation canvas (rounded up to the block length, so it may be longer than
``length`` = the client's max_tokens); ``tokens`` holds each committed id's text and null for masks;
``block`` is the [start, end) of the block that holds the first masked position (the one being denoised).
"""
from __future__ import annotations

from unmask.server.engine.batch import StepOutput
from unmask.server.tokenizer import Tokenizer

_CACHE_LIMIT = 1 << 18


class TokenStrings:
    """id -> text of that single token (special tokens included), memoised."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            if len(self._cache) < _CACHE_LIMIT:
                self._cache[token_id] = text
        return text


def denoise_payload(out: StepOutput, index: int, step: int, mask_id: int, block_length: int,
                    max_tokens: int, strings: TokenStrings) -> dict:
    """The ``denoise`` object for one step of one choice (``out.canvas`` must be set)."""
    canvas = list(out.canvas or ())
    masked = [i for i, t in enumerate(canvas) if t == mask_id]
    first = masked[0] if masked else max(len(canvas) - 1, 0)
    lo = (first // block_length) * block_length
    return {
        "index": index, "step": step, "nfe": out.nfe,
        "tpf": round(out.num_committed / out.nfe, 4) if out.nfe else 0.0,
        "num_committed": out.num_committed, "length": max_tokens, "block": [lo, min(lo + block_length, len(canvas))],
        "token_ids": canvas, "tokens": [None if t == mask_id else strings(t) for t in canvas],
        "masked": masked, "mask_token_id": mask_id, "finished": out.finished,
    }
