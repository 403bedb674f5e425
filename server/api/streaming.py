"""Server-sent events (SERVING.md §2.4) and the opt-in ``denoise`` events.

OpenAI chunks are ``data: <json>\\n\\n`` with no ``event:`` line, and the stream ends with
``data: [DONE]\\n\\n``. An error after the stream started is ``data: {"error": ...}`` and then ``[DONE]``
(the openai client raises APIError on it). A ``: ping`` comment keeps proxies from timing out.

With ``stream_options: {"denoise": true}`` every engine step of a choice also produces one
``event: denoise`` SSE event (the event name lets OpenAI-only readers tell them apart). Its data is
shaped like a chunk with empty ``choices`` plus a ``denoise`` object::

    {"index": 0, "step": 3, "nfe": 3, "tpf": 1.0, "num_committed": 3, "length": 16,
     "block": [0, 16], "token_ids": [...], "tokens": ["He", null, ...], "masked": [1, 2, ...],
     "mask_token_id": 126336, "finished": false}

``token_ids`` is the whole generation canvas (rounded up to the block length, so it may be longer than
``length`` = the client's max_tokens); ``tokens`` holds each committed id's text and null for masks;
``block`` is the [start, end) of the block that holds the first masked position (the one being denoised).
"""
from __future__ import annotations

import asyncio
import logging

from starlette.responses import StreamingResponse

from unmask.server.api.errors import dumps
from unmask.server.tokenizer import Tokenizer

log = logging.getLogger("unmask.api")
DONE = b"data: [DONE]\n\n"
DENOISE_EVENT = "denoise"
MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_CACHE_LIMIT = 1 << 18


def data(obj) -> bytes:
    """One ``data:`` event."""
    return b"data: " + dumps(obj) + b"\n\n"


def event(name: str, obj) -> bytes:
    """One named event (``event: name`` + ``data:``); names must be a single line."""
    if "\n" in name or "\r" in name:
        raise ValueError("an SSE event name must be one line")
    return f"event: {name}\ndata: ".encode() + dumps(obj) + b"\n\n"


def comment(text: str = "ping") -> bytes:
    """An SSE comment: ignored by every reader, keeps proxies from timing out."""
    return f": {text}\n\n".encode()


def error(body: dict) -> bytes:
    """The in-stream error event (the body is ``errors.error_body``'s shape)."""
    return data(body)


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


def denoise_payload(canvas: tuple[int, ...], index: int, step: int, nfe: int, num_committed: int, finished: bool,
                    mask_id: int, block_length: int, max_tokens: int, strings: TokenStrings) -> dict:
    """The ``denoise`` object for one step of one choice; ``canvas`` is its generation region."""
    canvas = list(canvas)
    masked = [i for i, t in enumerate(canvas) if t == mask_id]
    first = masked[0] if masked else max(len(canvas) - 1, 0)
    lo = (first // block_length) * block_length
    return {
        "index": index, "step": step, "nfe": nfe, "tpf": round(num_committed / nfe, 4) if nfe else 0.0,
        "num_committed": num_committed, "length": max_tokens, "block": [lo, min(lo + block_length, len(canvas))],
        "token_ids": canvas, "tokens": [None if t == mask_id else strings(t) for t in canvas],
        "masked": masked, "mask_token_id": mask_id, "finished": finished,
    }


async def _send_within(send, message: dict, seconds: float) -> None:
    """``await send(message)``, raising asyncio.TimeoutError after ``seconds`` (``asyncio.timeout`` costs a
    timer handle per call; ``wait_for``, Python 3.10's only way, a task: about 5x more per chunk)."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            await send(message)
    else:
        await asyncio.wait_for(send(message), seconds)


class BoundedStreamingResponse(StreamingResponse):
    """An SSE response whose client must keep reading: a chunk that cannot be handed to the connection
    within ``write_timeout`` seconds (the client's receive window and the server's send buffer are full)
    ends the response; closing the body iterator aborts the request in the engine."""

    def __init__(self, body, write_timeout: float, on_stall):
        super().__init__(body, media_type=MEDIA_TYPE, headers=HEADERS)
        self.write_timeout, self.on_stall = write_timeout, on_stall

    async def stream_response(self, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            try:
                await _send_within(send, {"type": "http.response.body", "body": chunk, "more_body": True},
                                   self.write_timeout)
            except asyncio.TimeoutError:
                log.warning("a streaming client read nothing for %.1f s: disconnecting it", self.write_timeout)
                self.on_stall()
                await self.body_iterator.aclose()
                return  # the response stays incomplete: the server closes the connection
        await send({"type": "http.response.body", "body": b"", "more_body": False})
