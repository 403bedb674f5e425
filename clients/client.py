"""Python client for an unmask server: sync (:class:`Client`) and async (:class:`AsyncClient`).

    from unmask.clients import Client
    c = Client("http://127.0.0.1:8000")
    print(c.complete("The capital of France is", max_tokens=16, preset="fast").text)
    for ev in c.chat_stream([{"role": "user", "content": "Hi"}], max_tokens=32):
        print(ev.text, end="", flush=True)

Diffusion settings (``steps``, ``block_length``, ``threshold``, ``preset``, …) are keyword arguments
like any OpenAI field; unknown keywords go into the body as they are. 503 answers (queue full, server
draining) are retried ``max_retries`` times, waiting as long as the server's Retry-After says.
"""
from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Iterator

import httpx

from unmask.clients.sse import aiter_events, iter_events
from unmask.clients.types import Completion, StreamEvent, UnmaskAPIError

RETRY_STATUSES = (503,)
MAX_WAIT = 30.0


def retry_delay(response: httpx.Response | None, attempt: int) -> float:
    """Retry-After (seconds) when the server sends it, else exponential backoff from 0.5 s."""
    if response is not None:
        try:
            return min(float(response.headers.get("retry-after", "")), MAX_WAIT)
        except ValueError:
            pass
    return min(0.5 * 2 ** attempt, MAX_WAIT)


def build_body(model: str | None, stream: bool, denoise: bool, include_usage: bool, fields: dict) -> dict:
    body = {k: v for k, v in fields.items() if v is not None}
    if model is not None:
        body.setdefault("model", model)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": include_usage, **({"denoise": True} if denoise else {})}
    return body


def _raise_for(response: httpx.Response) -> None:
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        raise UnmaskAPIError.from_body(response.status_code, body)


def _event(ev) -> StreamEvent | None:
    """SSE event -> StreamEvent; None at [DONE]; raises on an in-stream error event."""
    if ev.is_done:
        return None
    data = ev.json()
    if isinstance(data, dict) and "error" in data:
        raise UnmaskAPIError.from_body(200, data)
    return StreamEvent.parse(ev.event, data)


class _Base:
    def __init__(self, base_url: str, api_key: str | None, model: str | None, max_retries: int):
        self.base_url, self.model, self.max_retries = base_url.rstrip("/"), model, max_retries
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}


class Client(_Base):
    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, model: str | None = None,
                 timeout: float = 600.0, max_retries: int = 3, transport: httpx.BaseTransport | None = None):
        super().__init__(base_url, api_key, model, max_retries)
        self.http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _post(self, path: str, body: dict, stream: bool = False) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            req = self.http.build_request("POST", path, json=body)
            resp = self.http.send(req, stream=stream)
            if resp.status_code not in RETRY_STATUSES or attempt == self.max_retries:
                break
            resp.close()
            time.sleep(retry_delay(resp, attempt))
        if resp.status_code >= 400:
            resp.read()
            _raise_for(resp)
        return resp

    def complete(self, prompt, **fields) -> Completion:
        body = build_body(self.model, False, False, False, {"prompt": prompt, **fields})
        return Completion.parse(self._post("/v1/completions", body).json())

    def chat(self, messages: list[dict], **fields) -> Completion:
        body = build_body(self.model, False, False, False, {"messages": messages, **fields})
        return Completion.parse(self._post("/v1/chat/completions", body).json())

    def complete_stream(self, prompt, denoise: bool = False, **fields) -> Iterator[StreamEvent]:
        body = build_body(self.model, True, denoise, True, {"prompt": prompt, **fields})
        return self._stream("/v1/completions", body)

    def chat_stream(self, messages: list[dict], denoise: bool = False, **fields) -> Iterator[StreamEvent]:
        body = build_body(self.model, True, denoise, True, {"messages": messages, **fields})
        return self._stream("/v1/chat/completions", body)

    def _stream(self, path: str, body: dict) -> Iterator[StreamEvent]:
        resp = self._post(path, body, stream=True)
        try:
            for ev in iter_events(resp.iter_lines()):
                out = _event(ev)
                if out is None:
                    return
                yield out
        finally:
            resp.close()  # leaving early closes the connection: the server aborts the request

    def get(self, path: str) -> httpx.Response:
        resp = self.http.get(path)
        _raise_for(resp)
        return resp

    def models(self) -> list[str]:
        return [m["id"] for m in self.get("/v1/models").json()["data"]]

    def tokenize(self, text: str) -> list[int]:
        return self._post("/tokenize", {"prompt": text}).json()["tokens"]

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll /health until the model is loaded (200)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.http.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.base_url} not ready after {timeout} s")
            time.sleep(0.25)


class AsyncClient(_Base):
    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, model: str | None = None,
                 timeout: float = 600.0, max_retries: int = 3, transport: httpx.AsyncBaseTransport | None = None,
                 max_connections: int = 256):
        super().__init__(base_url, api_key, model, max_retries)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=timeout,
                                      transport=transport, limits=limits)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()

    async def _post(self, path: str, body: dict, stream: bool = False) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            req = self.http.build_request("POST", path, json=body)
            resp = await self.http.send(req, stream=stream)
            if resp.status_code not in RETRY_STATUSES or attempt == self.max_retries:
                break
            await resp.aclose()
            await asyncio.sleep(retry_delay(resp, attempt))
        if resp.status_code >= 400:
            await resp.aread()
            _raise_for(resp)
        return resp

    async def complete(self, prompt, **fields) -> Completion:
        body = build_body(self.model, False, False, False, {"prompt": prompt, **fields})
        return Completion.parse((await self._post("/v1/completions", body)).json())

    async def chat(self, messages: list[dict], **fields) -> Completion:
        body = build_body(self.model, False, False, False, {"messages": messages, **fields})
        return Completion.parse((await self._post("/v1/chat/completions", body)).json())

    def complete_stream(self, prompt, denoise: bool = False, **fields) -> AsyncIterator[StreamEvent]:
        body = build_body(self.model, True, denoise, True, {"prompt": prompt, **fields})
        return self._stream("/v1/completions", body)

    def chat_stream(self, messages: list[dict], denoise: bool = False, **fields) -> AsyncIterator[StreamEvent]:
        body = build_body(self.model, True, denoise, True, {"messages": messages, **fields})
        return self._stream("/v1/chat/completions", body)

    async def _stream(self, path: str, body: dict) -> AsyncIterator[StreamEvent]:
        resp = await self._post(path, body, stream=True)
        try:
            async for ev in aiter_events(resp.aiter_lines()):
                out = _event(ev)
                if out is None:
                    return
                yield out
        finally:
            await resp.aclose()
