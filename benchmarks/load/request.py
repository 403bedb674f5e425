"""One streamed request against an OpenAI-compatible server, timed the way ``vllm bench serve`` times it.

``st`` is taken just before the POST. An event counts as a chunk when it is a plain ``data:`` event whose
JSON has a non-empty ``choices`` list (named events, e.g. unmask's ``event: denoise``, and ``: ping``
comments are ignored). TTFT = first chunk − st; ITL = gaps between successive chunks (per chunk, not per
token); latency (E2EL) = last chunk − st. Output tokens come from the final ``usage`` chunk, else from a
client-side tokenizer, else the chunk count. ``nfe`` / ``tokens_per_forward`` are read from ``usage``
when the server reports them (unmask does). With ``continuous_usage_stats`` the per-chunk token counts
are exact; otherwise tokens per chunk is the request's average.
"""
from __future__ import annotations

import dataclasses
import time

import httpx

from benchmarks.load.datasets import SampleRequest, TextTokenizer
from unmask.clients.sse import Event, SSEDecoder


@dataclasses.dataclass
class RequestSpec:
    """What every request of a run shares."""
    url: str
    model: str
    chat: bool
    temperature: float = 0.0
    ignore_eos: bool = False
    continuous_usage: bool = False
    extra_body: dict = dataclasses.field(default_factory=dict)
    headers: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RequestOutput:
    success: bool = False
    error: str = ""
    start: float = 0.0
    """perf_counter() at dispatch."""
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = dataclasses.field(default_factory=list)
    chunk_times: list[float] = dataclasses.field(default_factory=list)
    """Seconds after ``start`` of each chunk."""
    chunk_tokens: list[int] = dataclasses.field(default_factory=list)
    """Tokens per chunk (exact only with continuous usage; else empty)."""
    prompt_len: int | None = None
    output_tokens: int = 0
    generated_text: str = ""
    finish_reason: str | None = None
    nfe: int | None = None
    tpf: float | None = None


def build_body(spec: RequestSpec, req: SampleRequest) -> dict:
    """vLLM's streaming payload (chat: ``max_completion_tokens``, completions: ``max_tokens``) + extras."""
    opts = {"include_usage": True}
    if spec.continuous_usage:
        opts["continuous_usage_stats"] = True
    body = {"model": spec.model, "temperature": spec.temperature, "stream": True, "stream_options": opts}
    if spec.chat:
        body.update(messages=[{"role": "user", "content": req.prompt}], max_completion_tokens=req.output_len)
    else:
        body.update(prompt=req.prompt, max_tokens=req.output_len)
    if spec.ignore_eos:
        body["ignore_eos"] = True
    extra = dict(spec.extra_body)
    if "stream_options" in extra:
        opts.update(extra.pop("stream_options"))
    body.update(extra)
    return body


def _delta_text(choice: dict) -> str:
    if "delta" in choice:
        return (choice.get("delta") or {}).get("content") or ""
    return choice.get("text") or ""


class _Reader:
    """Accumulates one response's SSE events (parsed by unmask's client decoder) into a RequestOutput."""

    def __init__(self, out: RequestOutput):
        self.out, self.last, self.usage = out, None, None
        self.decoder = SSEDecoder()

    def line(self, line: str, now: float) -> bool:
        """Feed one line; True once ``[DONE]`` arrived."""
        event = self.decoder.feed(line)
        return event is not None and self._dispatch(event, now)

    def close(self, now: float) -> None:
        """End of the body: an event not followed by a blank line still counts."""
        event = self.decoder.close()
        if event is not None:
            self._dispatch(event, now)

    def _dispatch(self, event: Event, now: float) -> bool:
        if event.event not in (None, "message") or not event.data:
            return False
        if event.is_done:
            return True
        obj = event.json()
        if "error" in obj and "choices" not in obj:
            err = obj["error"]
            raise RuntimeError(err.get("message", str(err)) if isinstance(err, dict) else str(err))
        usage = obj.get("usage")
        if obj.get("choices"):
            self._on_chunk(obj["choices"], now)
            if usage and "completion_tokens" in usage:  # continuous usage: this chunk's own token count
                seen = (self.usage or {}).get("completion_tokens", 0)
                self.out.chunk_tokens.append(usage["completion_tokens"] - seen)
        if usage:
            self.usage = usage
        return False

    def _on_chunk(self, choices: list[dict], now: float) -> None:
        out = self.out
        if self.last is None:
            out.ttft = now - out.start
        else:
            out.itl.append(now - self.last)
        self.last = now
        out.chunk_times.append(now - out.start)
        for choice in choices:
            out.generated_text += _delta_text(choice)
            out.finish_reason = choice.get("finish_reason") or out.finish_reason

    def finish(self, tok: TextTokenizer | None) -> None:
        out, usage = self.out, self.usage or {}
        if self.last is None:
            raise RuntimeError("the stream ended without a chunk carrying choices")
        out.latency = self.last - out.start
        if "completion_tokens" in usage:
            out.output_tokens = int(usage["completion_tokens"])
        else:
            out.output_tokens = tok.count(out.generated_text) if tok else len(out.chunk_times)
        out.prompt_len = usage.get("prompt_tokens", out.prompt_len)
        out.nfe = usage.get("nfe")
        out.tpf = usage.get("tokens_per_forward", usage.get("tpf"))
        if out.chunk_tokens and len(out.chunk_tokens) != len(out.chunk_times):
            out.chunk_tokens = []  # usage was not on every chunk: fall back to the average
        out.success = True


async def send(client: httpx.AsyncClient, spec: RequestSpec, req: SampleRequest, request_id: str,
               tok: TextTokenizer | None) -> RequestOutput:
    """POST one request and time its stream; never raises (failures are in ``error``)."""
    out = RequestOutput(prompt_len=req.prompt_len)
    headers = {**spec.headers, "x-request-id": request_id}
    reader = _Reader(out)
    out.start = time.perf_counter()
    try:
        async with client.stream("POST", spec.url, json=build_body(spec, req), headers=headers) as resp:
            if resp.status_code != 200:
                body = (await resp.aread()).decode(errors="replace")[:500]
                out.error = f"HTTP {resp.status_code} {resp.reason_phrase}: {body}"
                return out
            async for line in resp.aiter_lines():
                if reader.line(line, time.perf_counter()):
                    break
            else:
                reader.close(time.perf_counter())
        reader.finish(tok)
    except Exception as exc:  # noqa: BLE001 - every failure is one failed request
        out.success = False
        out.error = f"{type(exc).__name__}: {exc}"
    return out
