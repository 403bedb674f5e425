"""Pure-ASGI middleware (no BaseHTTPMiddleware: it breaks streaming and disconnect detection).

``GuardMiddleware`` runs before any route: it echoes ``X-Request-Id``, checks the API key (constant-time,
every key compared, so timing reveals nothing; several Authorization headers are refused) and caps the
request body (413 from ``Content-Length`` alone, or as soon as a chunked body grows past the cap). The body
is read here and replayed to the app; later ``receive()`` calls go to the server, so the app still sees the
client's disconnect.
"""
from __future__ import annotations

import hashlib
import hmac

from unmask.server.api.errors import APIError
from unmask.server.api.settings import ServerSettings


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


class GuardMiddleware:
    def __init__(self, app, settings: ServerSettings):
        self.app, self.settings = app, settings
        self._keys = [_digest(k) for k in settings.api_keys]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw = scope.get("headers", [])
        headers = {k.lower(): v for k, v in raw}
        request_id = headers.get(b"x-request-id")
        if request_id is not None:
            send = _echo_header(send, b"x-request-id", request_id[:256])
        if self._keys and scope["method"] != "OPTIONS" and not self._open(scope["path"]):
            if sum(k.lower() == b"authorization" for k, _ in raw) > 1:  # which one counts is ambiguous: refuse
                err = APIError(400, "send one Authorization header, not several", None, "invalid_request")
                return await err.response()(scope, receive, send)
            if not self._authorized(headers.get(b"authorization", b"")):
                err = APIError(401, "Invalid or missing API key. Send it as 'Authorization: Bearer <key>'.",
                               None, "invalid_api_key")
                return await err.response()(scope, receive, send)
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body = await self._read_body(headers, receive)
            if isinstance(body, APIError):
                return await body.response()(scope, receive, send)
            receive = _replay(body, receive)
        return await self.app(scope, receive, send)

    def _open(self, path: str) -> bool:
        return any(path == p or (p.endswith("/*") and path.startswith(p[:-1])) for p in self.settings.open_paths)

    def _authorized(self, header: bytes) -> bool:
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer":
            token = ""
        got = _digest(token.strip())
        ok = False
        for key in self._keys:  # no early exit: every key is compared
            ok |= hmac.compare_digest(got, key)
        return ok

    async def _read_body(self, headers: dict, receive) -> bytes | APIError:
        limit = self.settings.max_body_bytes
        too_big = APIError(413, f"the request body is larger than this server's limit of {limit} bytes "
                                f"(--max-body-bytes)", None, "request_too_large")
        length = headers.get(b"content-length")
        if length is not None:
            try:
                if int(length) > limit:
                    return too_big
            except ValueError:
                return APIError(400, "invalid Content-Length header", None, "invalid_request")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return replay


def _echo_header(send, name: bytes, value: bytes):
    async def wrapped(message):
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (name, value)]}
        await send(message)
    return wrapped
