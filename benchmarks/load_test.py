"""Reliability load test: many mixed requests, every answer checked, streamed == non-streamed.

    python -m benchmarks.load_test --spawn --requests 2000 --concurrency 64 --seed 0 --json out.json
    python -m benchmarks.load_test --base-url http://127.0.0.1:8000 --requests 200

Each case (route, preset, max_tokens, block_length, prompt) is sent twice at temperature 0, once
streamed and once not, with a unique ``X-Request-Id``. The run passes when there are zero transport or
HTTP errors, every request id is answered exactly once (no lost, no duplicated answers), every answer
has the OpenAI shape (ids, finish_reason, usage arithmetic) and every streamed answer equals its
non-streamed twin (text, finish_reason, usage). ``--spawn [MODEL]`` starts its own server (a tiny random
checkpoint when no model is given).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.load.report import save

FINISH = {"stop", "length"}
WORDS = ["ALPHA", "BETA", "GAMMA", "DELTA", "ONE", "TWO", "THREE", "SKY", "SEA", "RED", "BLUE", "SUM", "2+2="]


def make_cases(pairs: int, seed: int) -> list[dict]:
    """``pairs`` mixed cases: route, body (without ``stream``) and the budget used for checks."""
    rng = random.Random(seed)
    cases = []
    for _ in range(pairs):
        max_tokens = rng.choice([1, 4, 8, 16, 24, 32])
        body: dict = {"max_tokens": max_tokens, "temperature": 0}
        if rng.random() < 0.5:
            body["preset"] = rng.choice(["exact", "fast"])
        if rng.random() < 0.5:
            body["block_length"] = rng.choice([b for b in (1, 2, 4, 8, 16, 32) if b <= max(max_tokens, 1)])
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
        chat = rng.random() < 0.5
        if chat:
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        cases.append({"route": "/v1/chat/completions" if chat else "/v1/completions", "body": body})
    return cases


def _parse_stream(lines: list[str], chat: bool) -> dict:
    """SSE lines -> an answer shaped like the non-streamed one (text, finish_reason, usage, ids)."""
    text, finish, usage, ids, done = "", [], None, set(), False
    for line in lines:
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            done = True
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            raise ValueError(f"stream error: {chunk['error']}")
        ids.add(chunk["id"])
        if chunk.get("usage"):
            usage = chunk["usage"]
        for c in chunk["choices"]:
            text += (c["delta"].get("content") or "") if chat else c["text"]
            if c["finish_reason"] is not None:
                finish.append(c["finish_reason"])
    if not done:
        raise ValueError("stream ended without [DONE]")
    if len(ids) != 1 or len(finish) != 1:
        raise ValueError(f"stream ids {ids}, finish reasons {finish}")
    return {"id": ids.pop(), "text": text, "finish_reason": finish[0], "usage": usage}


def _parse_full(data: dict, chat: bool) -> dict:
    if data["object"] != ("chat.completion" if chat else "text_completion") or len(data["choices"]) != 1:
        raise ValueError(f"bad object/choices: {data['object']} {len(data['choices'])}")
    c = data["choices"][0]
    text = c["message"]["content"] if chat else c["text"]
    if chat and c["message"]["role"] != "assistant":
        raise ValueError("chat message role is not assistant")
    return {"id": data["id"], "text": text or "", "finish_reason": c["finish_reason"], "usage": data["usage"]}


def check_answer(ans: dict, rid: str, chat: bool, max_tokens: int) -> None:
    """Raise ValueError unless the answer is well-formed for request id ``rid``."""
    want_id = ("chatcmpl-" if chat else "cmpl-") + rid
    if ans["id"] != want_id:
        raise ValueError(f"id {ans['id']!r} != {want_id!r}")
    if ans["finish_reason"] not in FINISH:
        raise ValueError(f"finish_reason {ans['finish_reason']!r}")
    u = ans["usage"]
    if u is None or u["prompt_tokens"] + u["completion_tokens"] != u["total_tokens"]:
        raise ValueError(f"usage inconsistent: {u}")
    if not 0 <= u["completion_tokens"] <= max_tokens or u["prompt_tokens"] < 1:
        raise ValueError(f"usage out of range: {u} (max_tokens {max_tokens})")


async def send_one(client: httpx.AsyncClient, case: dict, stream: bool, rid: str) -> dict:
    """One request; returns the parsed answer (raises on any error)."""
    chat = case["route"].endswith("chat/completions")
    body = {**case["body"], "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
        async with client.stream("POST", case["route"], json=body, headers={"X-Request-Id": rid}) as r:
            if r.status_code != 200:
                raise ValueError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
            ans = _parse_stream([line async for line in r.aiter_lines()], chat)
    else:
        r = await client.post(case["route"], json=body, headers={"X-Request-Id": rid})
        if r.status_code != 200:
            raise ValueError(f"HTTP {r.status_code}: {r.text[:300]}")
        ans = _parse_full(r.json(), chat)
    check_answer(ans, rid, chat, case["body"]["max_tokens"])
    return ans


async def run_load(base_url: str, requests: int, concurrency: int, seed: int = 0,
                   api_key: str | None = None, timeout: float = 600.0) -> dict:
    """Send ``requests`` (rounded down to pairs) mixed requests; return the summary (see module doc)."""
    cases = make_cases(max(1, requests // 2), seed)
    jobs = [(i, stream) for i in range(len(cases)) for stream in (False, True)]
    random.Random(seed + 1).shuffle(jobs)
    sem = asyncio.Semaphore(concurrency)
    answers: dict[str, list[dict]] = {}
    errors: list[str] = []
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def one(client: httpx.AsyncClient, i: int, stream: bool) -> None:
        rid = f"load-{seed}-{i}-{'s' if stream else 'n'}"
        async with sem:
            try:
                ans = await send_one(client, cases[i], stream, rid)
                answers.setdefault(rid, []).append(ans)
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported
                errors.append(f"{rid}: {type(exc).__name__}: {exc}")

    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=headers, limits=limits) as client:
        await asyncio.gather(*(one(client, i, s) for i, s in jobs))
    wall = time.perf_counter() - t0
    duplicated = sum(1 for v in answers.values() if len(v) > 1)
    lost = len(jobs) - len(answers) - len(errors)
    mismatches = []
    for i in range(len(cases)):
        a, b = answers.get(f"load-{seed}-{i}-n"), answers.get(f"load-{seed}-{i}-s")
        if a and b and (a[0]["text"], a[0]["finish_reason"], a[0]["usage"]) != (
                b[0]["text"], b[0]["finish_reason"], b[0]["usage"]):
            mismatches.append({"case": cases[i], "full": a[0], "streamed": b[0]})
    return {"requests": len(jobs), "concurrency": concurrency, "seed": seed, "answered": len(answers),
            "errors": len(errors), "lost": lost, "duplicated": duplicated,
            "stream_mismatches": len(mismatches), "wall_s": round(wall, 2),
            "requests_per_s": round(len(jobs) / wall, 2), "error_samples": errors[:10],
            "mismatch_samples": mismatches[:3],
            "ok": not errors and lost == 0 and duplicated == 0 and not mismatches}


def tiny_checkpoint(root: Path) -> Path:
    """A tiny random checkpoint (with its LLaDA-style chat template)."""
    from benchmarks.reference.checkpoints import write_checkpoint
    return write_checkpoint(root / "tiny", "dense", seed=5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--base-url")
    g.add_argument("--spawn", nargs="?", const="", metavar="MODEL", help="start a server (default: tiny random)")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--api-key")
    p.add_argument("--server-args", default="--device cpu --dtype float32 --kv-cache-memory 64M",
                   help="flags for the spawned server")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.base_url:
        result = asyncio.run(run_load(args.base_url, args.requests, args.concurrency, args.seed, args.api_key))
    else:
        from benchmarks.load.launch import ServerProcess
        with tempfile.TemporaryDirectory() as tmp:
            model = args.spawn or str(tiny_checkpoint(Path(tmp)))
            flags = [*args.server_args.split(), "--max-num-seqs", str(args.concurrency), "--disable-access-log"]
            with ServerProcess(model, flags, Path(tmp) / "server.log") as srv:
                result = asyncio.run(run_load(srv.base_url, args.requests, args.concurrency, args.seed))
        result["model"] = args.spawn or "tiny random (benchmarks/reference/checkpoints.py, seed 5)"
    summary = {k: v for k, v in result.items() if not k.endswith("_samples")}
    print(json.dumps(summary, indent=1))
    for e in result["error_samples"]:
        print("error:", e, file=sys.stderr)
    if args.json:
        save(result, str(args.json.parent), args.json.name)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
