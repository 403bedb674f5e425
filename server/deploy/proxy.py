"""OpenAI-shaped errors from Serve's HTTP proxy itself.

The replicas answer every error in the OpenAI shape; the proxy has its own answers for what happens outside
them: a replica that died with the request in flight (plain 500, or a stream cut without its end), no
replica available, its request timeout (408) or its back-pressure (503). This pure-ASGI middleware, loaded
into the proxy by Serve's proxy callback, gives those the server's shape:

- a plain-text error answer becomes ``{"error": {...}}`` with the same status (and Retry-After for 503);
- a request whose replica failed before answering gets 503 ``replica_unavailable`` + Retry-After: 1 (the
  openai SDK retries it; another replica serves the retry);
- a stream whose replica failed mid-way ends with an SSE error event and ``[DONE]``, so no client waits.

Enable it in every proxy with the environment of the Ray nodes (``unmask serve --replicas`` does this for
the Ray cluster it starts; the KubeRay manifest sets it on the pods)::

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=unmask.server.deploy.proxy:middlewares
"""
from __future__ import annotations

import json
import logging

log = logging.getLogger("unmask.deploy")

CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK_PATH = "unmask.server.deploy.proxy:middlewares"
RETRY_AFTER_S = 1
_TYPES = {408: "timeout_error", 429: "rate_limit_error", 503: "service_unavailable"}


def error_json(status: int, message: str, code: str) -> bytes:
    type_ = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()


def _header(headers, name: bytes) -> bytes:
    return next((v for k, v in headers if k.lower() == name), b"")


def _one_request_id(headers) -> list:
    """Serve's proxy appends X-Request-ID even when the app already echoed the client's: keep the first."""
    out, seen = [], False
    for k, v in headers:
        if k.lower() == b"x-request-id":
            if seen:
                continue
            seen = True
        out.append((k, v))
    return out


class OpenAIErrors:
    """See the module docstring."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        st = {"started": False, "done": False, "sse": False, "plain": None}

        async def wrapped(message):
            if message["type"] == "http.response.start":
                ctype = _header(message.get("headers", []), b"content-type")
                if message["status"] >= 400 and not ctype.startswith(b"application/json"):
                    st["plain"] = (message, bytearray())  # rewritten once its body is complete
                    return
                st["started"], st["sse"] = True, ctype.startswith(b"text/event-stream")
                message = {**message, "headers": _one_request_id(message.get("headers", []))}
            elif message["type"] == "http.response.body":
                if st["plain"] is not None:
                    st["plain"][1].extend(message.get("body", b""))
                    if not message.get("more_body", False):
                        await self._rewrite(send, *st["plain"])
                        st["done"] = True
                    return
                st["done"] = not message.get("more_body", False)
            await send(message)

        try:
            await self.app(scope, receive, wrapped)
        except Exception as exc:  # noqa: BLE001 - answered below in the OpenAI shape
            log.warning("request failed in the proxy: %r", exc)
        if not st["done"]:
            await self._finish(send, st)

    @staticmethod
    async def _rewrite(send, start: dict, body: bytearray) -> None:
        status = start["status"]
        text = body.decode(errors="replace").strip() or f"HTTP {status}"
        headers = [(k, v) for k, v in _one_request_id(start.get("headers", []))
                   if k.lower() not in (b"content-type", b"content-length")]
        if status == 503 and not _header(headers, b"retry-after"):
            headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
        payload = error_json(status, text, "proxy_error" if status >= 500 else "proxy_rejected")
        await send({"type": "http.response.start", "status": status, "headers": [
            *headers, (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    @staticmethod
    async def _finish(send, st: dict) -> None:
        """The replica failed before the response ended: answer or end it in the OpenAI shape."""
        message = "the replica serving this request failed; retry the request"
        if st["plain"] is not None:
            await OpenAIErrors._rewrite(send, *st["plain"])
            return
        if not st["started"]:
            payload = error_json(503, message, "replica_unavailable")
            await send({"type": "http.response.start", "status": 503, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                (b"retry-after", str(RETRY_AFTER_S).encode())]})
            await send({"type": "http.response.body", "body": payload})
            return
        tail = b""
        if st["sse"]:
            tail = b"data: " + error_json(503, message, "replica_unavailable") + b"\n\ndata: [DONE]\n\n"
        await send({"type": "http.response.body", "body": tail})


def middlewares() -> list:
    """Serve's proxy callback: the middleware list applied to every HTTP proxy."""
    from starlette.middleware import Middleware
    return [Middleware(OpenAIErrors)]
