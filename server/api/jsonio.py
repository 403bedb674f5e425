"""JSON out: compact UTF-8 that never fails on odd text and never emits NaN/inf."""
from __future__ import annotations

import json

from starlette.responses import Response


def dumps(obj) -> bytes:
    """Compact UTF-8 JSON. NaN/inf are not JSON, so they are refused rather than sent; text that cannot
    be UTF-8 (a lone surrogate from a client's ``\\ud800`` escape) falls back to ASCII escapes."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode()
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


class JSONAnswer(Response):
    """Starlette's JSONResponse with :func:`dumps` (it would raise on a lone surrogate)."""
    media_type = "application/json"

    def render(self, content) -> bytes:
        return dumps(content)
