"""One budget rule: the same prompt and settings at temperature 0 give the same text and finish reason
through ``LLM.generate``, HTTP non-streaming and HTTP streaming, for budgets that are and are not block
multiples, on both embedded models."""
from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from tests.e2e.remote import RemoteServer

MAX_TOKENS = (1, 7, 31, 32, 40, 64, 100)
BLOCKS = (8, 32)
MESSAGES = [{"role": "user", "content": "Write these letters backwards: q w e r t"}]
CASES = [(m, b) for m in MAX_TOKENS for b in BLOCKS]


async def _http_answers(base: str) -> tuple[dict, dict]:
    """(max_tokens, block) -> (text, finish_reason), non-streamed and streamed, all requests concurrent."""
    async with httpx.AsyncClient(base_url=base, timeout=300) as client:
        async def plain(m, b):
            r = await client.post("/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": m,
                                                                "block_length": b})
            assert r.status_code == 200, r.text
            choice = r.json()["choices"][0]
            return choice["message"]["content"], choice["finish_reason"]

        async def streamed(m, b):
            text, reason = "", None
            async with client.stream("POST", "/v1/chat/completions",
                                     json={"messages": MESSAGES, "max_tokens": m, "block_length": b,
                                           "stream": True}) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    for ch in json.loads(line[6:])["choices"]:
                        text += ch["delta"].get("content", "")
                        reason = ch["finish_reason"] or reason
            return text, reason

        plain_out = await asyncio.gather(*[plain(m, b) for m, b in CASES])
        stream_out = await asyncio.gather(*[streamed(m, b) for m, b in CASES])
    return dict(zip(CASES, plain_out)), dict(zip(CASES, stream_out))


@pytest.mark.e2e
@pytest.mark.parametrize("model", ["tiny-llada-instruct", "tiny-llada-moe-instruct"])
def test_offline_http_and_stream_agree_for_every_budget(model, tmp_path):
    from unmask import LLM, DiffusionParams

    llm = LLM(model, device="cpu", dtype="float32")
    offline = llm.generate([MESSAGES] * len(CASES),
                           [DiffusionParams(max_tokens=m, block_length=b) for m, b in CASES])
    expected = {case: (o.text, o.finish_reason) for case, o in zip(CASES, offline)}
    assert all(len(o.token_ids) <= m for o, (m, _) in zip(offline, CASES))
    assert {r for _, r in expected.values()} <= {"stop", "length"}
    with RemoteServer(model, log_path=tmp_path / "server.log") as srv:
        plain, streamed = asyncio.run(_http_answers(srv.base_url))
    for case in CASES:
        assert plain[case] == expected[case], (case, plain[case], expected[case])
        assert streamed[case] == expected[case], (case, streamed[case], expected[case])
