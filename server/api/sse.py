"""Server-sent events framing (SERVING.md §2.4).

OpenAI chunks are ``data: <json>\\n\\n`` with no ``event:`` line, and the stream ends with
``data: [DONE]\\n\\n``. The opt-in diffusion events carry an ``event: denoise`` line so that OpenAI-only
readers can tell them apart. An error after the stream started is ``data: {"error": ...}`` and then
``[DONE]`` (the openai client raises APIError on it).
"""
from __future__ import annotations

from unmask.server.api.jsonio import dumps

DONE = b"data: [DONE]\n\n"
DENOISE_EVENT = "denoise"
MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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
    """The in-stream error event (the body is :func:`errors.error_body`'s shape)."""
    return data(body)
