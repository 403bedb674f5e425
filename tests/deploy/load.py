"""Concurrent OpenAI requests for the scale-out tests: the same cases sent plain or streamed, chat or
completions, and their text (a stream's text is its deltas joined)."""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx

PROMPTS = ["What is 12 + 30?", "reverse: abcdef", "sort: 9 3 7 1", "What is 7 + 8?", "reverse: hello",
           "sort: 5 2 8", "What is 40 + 2?", "reverse: xyz"]
BODY = {"max_tokens": 16, "steps": 4, "temperature": 0}
KINDS = ("completion", "chat", "completion-stream", "chat-stream")


def request(kind: str, prompt: str, **extra) -> tuple[str, dict]:
    body = {**BODY, **extra}
    if kind.startswith("chat"):
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": prompt}]
    else:
        path, body["prompt"] = "/v1/completions", prompt
    if kind.endswith("stream"):
        body["stream"] = True
    return path, body


@dataclass
class Result:
    status: int
    text: str = ""
    error: dict | None = None
    chunk_times: list[float] = field(default_factory=list)
    """Seconds from the request's start to each content chunk (streams)."""
    events: list[str] = field(default_factory=list)
    """``event:`` names seen in a stream (``denoise``)."""
    event_times: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    """Seconds until the answer (or the stream's [DONE]) was complete."""
    headers: dict = field(default_factory=dict)
    finished: bool = False
    """A stream that ended with [DONE] (a plain answer that parsed)."""


def _delta_text(chunk: dict) -> str:
    out = ""
    for choice in chunk.get("choices", []):
        out += choice.get("text") or (choice.get("delta") or {}).get("content") or ""
    return out


async def send(client: httpx.AsyncClient, path: str, body: dict) -> Result:
    t0 = time.monotonic()
    if not body.get("stream"):
        r = await client.post(path, json=body)
        data = r.json()
        if r.status_code != 200:
            return Result(r.status_code, error=data.get("error"), headers=dict(r.headers))
        choice = data["choices"][0]
        text = choice.get("text") if "text" in choice else choice["message"]["content"]
        return Result(200, text=text or "", headers=dict(r.headers), finished=True)
    res = Result(0)
    async with client.stream("POST", path, json=body) as r:
        res.status, res.headers = r.status_code, dict(r.headers)
        if r.status_code != 200:
            res.error = json.loads(await r.aread()).get("error")
            return res
        async for line in r.aiter_lines():
            if line.startswith("event:"):
                res.events.append(line[6:].strip())
                res.event_times.append(time.monotonic() - t0)
            if not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload == "[DONE]":
                res.finished, res.elapsed = True, time.monotonic() - t0
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                res.error = chunk["error"]
                continue
            text = _delta_text(chunk)
            if text:
                res.text += text
                res.chunk_times.append(time.monotonic() - t0)
    return res


async def send_obeying_retry_after(client: httpx.AsyncClient, path: str, body: dict, retries: int) -> Result:
    """``send``, and after a 503 with Retry-After wait that long and send again, up to ``retries`` times (what the
    openai SDK does by default): the answer a well-behaved client ends with."""
    for _ in range(retries):
        res = await send(client, path, body)
        if res.status != 503 or "retry-after" not in res.headers:
            return res
        await asyncio.sleep(float(res.headers["retry-after"]))
    return await send(client, path, body)


async def send_many(base_url: str, jobs: list[tuple[str, dict]], timeout: float = 90.0,
                    retries: int = 0) -> list[Result | BaseException]:
    """Every job at once; an exception (transport error, timeout) is returned in its slot."""
    limits = httpx.Limits(max_connections=len(jobs) + 8, max_keepalive_connections=len(jobs) + 8)
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, limits=limits) as client:
        return await asyncio.gather(*(send_obeying_retry_after(client, p, b, retries) for p, b in jobs),
                                    return_exceptions=True)


def run_many(base_url: str, jobs: list[tuple[str, dict]], timeout: float = 90.0,
             retries: int = 0) -> list[Result | BaseException]:
    return asyncio.run(send_many(base_url, jobs, timeout, retries))


def mixed_jobs(count: int, **extra) -> list[tuple[tuple[str, str], tuple[str, dict]]]:
    """((kind, prompt), (path, body)) for ``count`` requests cycling through every kind and prompt."""
    out = []
    for i in range(count):
        kind, prompt = KINDS[i % len(KINDS)], PROMPTS[(i // len(KINDS)) % len(PROMPTS)]
        out.append(((kind, prompt), request(kind, prompt, **extra)))
    return out


def expected_texts(base_url: str) -> dict[tuple[str, str], str]:
    """(kind, prompt) -> text from one server, every kind (plain and streamed) of every prompt."""
    cases = [(k, p) for k in KINDS for p in PROMPTS]
    results = run_many(base_url, [request(k, p) for k, p in cases])
    out = {}
    for case, res in zip(cases, results):
        assert isinstance(res, Result) and res.status == 200 and res.finished, (case, res)
        out[case] = res.text
    return out
