"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` with the right HTTP status.

Every failure the server answers goes through :class:`APIError` (or one of the handlers below that turn
FastAPI/Starlette exceptions into it), so clients always see the same shape, also for 401/404/413/503.
Streams that already started send :func:`error_body` as an SSE event instead (see streaming.py). JSON out
goes through :func:`dumps`: compact UTF-8 that never fails on odd text and never emits NaN/inf.
"""
from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from unmask.server.engine.client import EngineDeadError, QueueFullError, RequestRejected

log = logging.getLogger("unmask.api")


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


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error", 500: "server_error", 503: "service_unavailable"}


class APIError(Exception):
    """An error answer: HTTP status, message, offending parameter and a machine-readable code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.retry_after = retry_after

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> JSONAnswer:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return JSONAnswer(self.body(), status_code=self.status, headers=headers)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param, code)


def unsupported(params: list[str], why: str) -> APIError:
    """400 naming every known-but-unsupported field that carried a non-default value."""
    names = ", ".join(params)
    return APIError(400, f"unsupported parameter(s) with non-default values: {names}. {why}",
                    params[0], "unsupported_parameter")


def unavailable(message: str, code: str, retry_after: int) -> APIError:
    return APIError(503, message, None, code, retry_after)


def engine_refusal(exc: BaseException, retry_after: int) -> APIError | None:
    """Map an EngineClient refusal to its HTTP answer (None: not a refusal): never fits -> 400, busy -> 503."""
    if isinstance(exc, QueueFullError):
        return unavailable(f"the request queue is full: {exc}", "queue_full", retry_after)
    if isinstance(exc, EngineDeadError):
        return unavailable(f"the engine is not running: {exc}", "engine_dead", retry_after)
    if isinstance(exc, RequestRejected):
        return APIError(400, str(exc), exc.param, exc.code)
    return None


def _loc(loc) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or None


def validation_error(exc: RequestValidationError) -> APIError:
    """pydantic errors -> one 400 listing each failing field (never echoing the input itself)."""
    errs = exc.errors()
    lines = [f"{_loc(e.get('loc', ())) or 'body'}: {e.get('msg', 'invalid')}" for e in errs[:8]]
    if len(errs) > 8:
        lines.append(f"... and {len(errs) - 8} more")
    param = _loc(errs[0].get("loc", ())) if errs else None
    return APIError(400, "invalid request: " + "; ".join(lines), param, "invalid_request")


def install_handlers(app: FastAPI) -> None:
    """Map every exception a route can raise to the OpenAI error shape (400 instead of FastAPI's 422)."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError):
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException):
        status = 400 if exc.status_code == 422 else exc.status_code
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "invalid_request")
        return APIError(status, str(exc.detail), None, code).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception):
        log.exception("unhandled error")
        return APIError(500, "internal error (see the server log)", None, "internal_error").response()
