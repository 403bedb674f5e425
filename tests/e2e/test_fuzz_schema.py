"""Property-based fuzzing of the live server's OpenAPI schema with schemathesis: valid (positive) and
invalid (negative) bodies for /v1/completions and /v1/chat/completions must never get a 5xx or hang,
and every rejection must be in the OpenAI error shape.

The server runs with tight limits (steps, max_tokens, choices) so that valid-but-expensive bodies stay
cheap on a CPU; the number of cases tried is printed (run with ``-s`` to see it)."""
from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.e2e.remote import RemoteServer

MAX_EXAMPLES = 50  # per operation and generation mode: 4 x 50 = 200 cases
ROUTES = ("/v1/completions", "/v1/chat/completions")
LIMITS = ("--max-steps", "64", "--max-tokens-limit", "64", "--max-choices", "4", "--max-num-seqs", "16",
          "--served-model-name", "tiny")
CASES: dict[str, int] = {}
STATUSES: dict[str, dict[int, int]] = {}


@pytest.fixture(scope="module")
def fuzz_server(chat_ckpt, tmp_path_factory):
    with RemoteServer(chat_ckpt, LIMITS, log_path=tmp_path_factory.mktemp("fuzz") / "server.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def schema(fuzz_server):
    raw = httpx.get(fuzz_server.url_for("openapi.json"), timeout=10).json()
    return schemathesis.openapi.from_dict(raw)


def _check(response: httpx.Response, what: str) -> None:
    assert response.status_code < 500, f"{what} -> {response.status_code}: {response.text[:500]}"
    if response.status_code >= 400:
        err = response.json()["error"]
        assert isinstance(err["message"], str) and err["message"], what
        assert {"type", "param", "code"} <= set(err), what
    elif response.headers.get("content-type", "").startswith("text/event-stream"):
        lines = [line for line in response.text.splitlines() if line]
        assert lines[-1] == "data: [DONE]", what
        assert not any(line.startswith('data: {"error"') for line in lines), what


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
                         ids=["positive", "negative"])
@pytest.mark.parametrize("route", ROUTES)
def test_fuzz_openapi(fuzz_server, schema, route, mode):
    operation = schema[route]["POST"]
    strategy = operation.as_strategy(generation_mode=mode)
    key = f"{route} {mode.value}"
    CASES[key] = 0
    statuses = STATUSES.setdefault(key, {})

    with httpx.Client(base_url=fuzz_server.base_url, timeout=30) as client:  # 30 s: a hang fails the test
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def run(case):
            CASES[key] += 1
            if isinstance(case.body, bytes):
                kwargs = {"content": case.body}
            else:
                kwargs = {} if case.body is None else {"json": case.body}
            headers = {"content-type": case.media_type or "application/json"}
            r = client.post(route, headers=headers, **kwargs)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            _check(r, f"{key} body={str(case.body)[:300]}")

        run()
    print(f"\nfuzz {key}: {CASES[key]} cases, statuses {dict(sorted(statuses.items()))}")
    assert CASES[key] >= 10
    if mode == schemathesis.GenerationMode.NEGATIVE:
        assert 200 not in statuses or len(statuses) > 1  # invalid bodies are mostly rejected
    assert httpx.get(fuzz_server.url_for("health"), timeout=10).status_code == 200


SPECIAL_ONLY = "<|endoftext|><|eot_id|><|startoftext|>"
HAND_WRITTEN = [  # hostile inputs test_errors.py does not already send
    ("/v1/completions", {"prompt": SPECIAL_ONLY, "max_tokens": 4}),
    ("/v1/completions", {"prompt": "A<|mdm_mask|>B", "max_tokens": 4}),
    ("/v1/completions", {"prompt": "<|mdm_mask|>" * 8, "max_tokens": 4, "stream": True}),
    ("/v1/completions", {"prompt": [1, 2, 95, 3], "max_tokens": 4}),
    ("/v1/completions", {"prompt": [[1, 2], [95]], "max_tokens": 4}),
    ("/v1/completions", {"prompt": ["A"] * 1000, "max_tokens": 1}),
    ("/v1/completions", {"prompt": "A", "max_tokens": 4, "stop": ["x"] * 10000}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": SPECIAL_ONLY}], "max_tokens": 4}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "<|mdm_mask|>"}], "max_tokens": 4}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "text", "text": [[["A"]]]}]}]}),
    ("/v1/chat/completions", {"messages": [{"role": "x" * 100000, "content": "A"}], "max_tokens": 4}),
    ("/v1/chat/completions", {"messages": [], "max_tokens": 4}),
]


@pytest.mark.parametrize("route,body", HAND_WRITTEN)
def test_hand_written_hostile_inputs(fuzz_server, route, body):
    with httpx.Client(base_url=fuzz_server.base_url, timeout=30) as client:
        _check(client.post(route, json=body), f"{route} {str(body)[:200]}")
