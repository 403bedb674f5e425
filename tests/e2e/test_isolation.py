"""Isolation: a tokenizer or detokenizer failure in one request leaves concurrent requests untouched
(in-process server, tokenizer monkeypatched), and API keys never reach the server's logs."""
from __future__ import annotations

import concurrent.futures as cf
import json
import time

import httpx
import pytest

import tests.e2e.remote as remote
from tests.e2e.remote import RemoteServer
from tests.e2e.test_faults import inproc  # noqa: F401 - the in-process server fixture (engine reachable)

GOOD = [("/v1/completions", {"prompt": "ALPHA BETA", "max_tokens": 12}),
        ("/v1/completions", {"prompt": "SEA", "max_tokens": 20, "block_length": 4}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "HI"}], "max_tokens": 16}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "RED"}], "max_tokens": 8,
                                  "preset": "fast"})]


def _send(base: str, route: str, body: dict) -> tuple[int, str | dict]:
    """(status, text of the answer) or (status, error body); streamed answers are reassembled."""
    chat = route.endswith("chat/completions")
    if not body.get("stream"):
        r = httpx.post(base + route, json=body, timeout=60)
        if r.status_code != 200:
            return r.status_code, r.json()
        c = r.json()["choices"][0]
        return 200, c["message"]["content"] if chat else c["text"]
    text, error = "", None
    with httpx.stream("POST", base + route, json=body, timeout=60) as r:
        if r.status_code != 200:
            return r.status_code, json.loads(r.read())
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    for line in lines:
        if line.startswith("data: {"):
            chunk = json.loads(line[6:])
            if "error" in chunk:
                error = chunk
            for c in chunk.get("choices", []):
                text += (c["delta"].get("content") or "") if chat else c["text"]
    return (500, error) if error else (200, text)


def _baseline(base: str) -> list[str]:
    return [_send(base, route, body)[1] for route, body in GOOD]


def _run_mixed(base: str, poisoned: list[tuple[str, dict]]) -> tuple[list, list]:
    """Good requests (streamed and not) and the poisoned ones, all at once."""
    good = [(route, {**body, "stream": s}) for route, body in GOOD for s in (False, True)]
    with cf.ThreadPoolExecutor(len(good) + len(poisoned)) as pool:
        bad_f = [pool.submit(_send, base, r, b) for r, b in poisoned]
        good_f = [pool.submit(_send, base, r, b) for r, b in good]
        return [f.result() for f in good_f], [f.result() for f in bad_f]


def _assert_error_shape(body: dict) -> None:
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"] and {"type", "param", "code"} <= set(err)


def _assert_idle(base: str) -> None:
    text = httpx.get(base + "/metrics", timeout=10).text
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")]
        assert values and all(v == 0 for v in values), name


def test_tokenizer_failure_only_fails_its_request(inproc, monkeypatch):  # noqa: F811
    base, engine = inproc
    expected = _baseline(base)
    tok = engine.tokenizer

    def poisoned_on(real):
        def encode(text: str) -> list[int]:
            if "POISON" in text:
                raise RuntimeError("tokenizer exploded")
            return real(text)
        return encode
    monkeypatch.setattr(tok, "encode", poisoned_on(tok.encode))  # prompts and chat-template markup
    monkeypatch.setattr(tok, "encode_text", poisoned_on(tok.encode_text))  # message text
    poisoned = [("/v1/completions", {"prompt": "POISON", "max_tokens": 8}),
                ("/v1/completions", {"prompt": ["A", "POISON"], "max_tokens": 8, "stream": True}),
                ("/v1/chat/completions", {"messages": [{"role": "user", "content": "POISON"}], "stream": True})]
    good, bad = _run_mixed(base, poisoned)
    assert [t for _, t in good] == [e for e in expected for _ in (0, 1)]
    for status, body in bad:
        assert 400 <= status < 600
        _assert_error_shape(body)
    _assert_idle(base)


class _BrokenDetokenizer:
    """Fails on the first tokens it is given, like a detokenizer hitting a bug mid-generation."""

    def add(self, ids):
        raise RuntimeError("detokenizer exploded")

    def flush(self):
        raise RuntimeError("detokenizer exploded")


def test_detokenizer_failure_only_fails_its_request(inproc, monkeypatch):  # noqa: F811
    base, engine = inproc
    expected = _baseline(base)
    tok, real = engine.tokenizer, engine.tokenizer.detokenizer
    # the poisoned requests are the only ones asking for special tokens in their text
    monkeypatch.setattr(tok, "detokenizer", lambda skip=True: real(skip) if skip else _BrokenDetokenizer())
    poisoned = [("/v1/completions", {"prompt": "A", "max_tokens": 16, "skip_special_tokens": False}),
                ("/v1/completions", {"prompt": "A", "max_tokens": 16, "skip_special_tokens": False,
                                     "stream": True}),
                ("/v1/chat/completions", {"messages": [{"role": "user", "content": "B"}], "max_tokens": 16,
                                          "skip_special_tokens": False, "stream": True})]
    good, bad = _run_mixed(base, poisoned)
    assert [t for _, t in good] == [e for e in expected for _ in (0, 1)]
    for status, body in bad:
        assert status == 500, body
        _assert_error_shape(body)
        assert "exploded" not in body["error"]["message"]  # internals stay in the server log
    _assert_idle(base)
    monkeypatch.undo()
    assert _baseline(base) == expected


KEY = "sk-isolation-7f3c9a1e5b"


@pytest.fixture
def keyed(chat_ckpt, tmp_path, monkeypatch):
    """A keyed server with the access log on and debug logging, so every log line a request can cause
    is produced."""
    monkeypatch.setattr(remote, "SMALL_ARGS", tuple(a for a in remote.SMALL_ARGS if a != "--disable-access-log"))
    log = tmp_path / "server.log"
    with RemoteServer(chat_ckpt, ("--api-key", KEY, "--log-level", "debug"), log_path=log, api_key=KEY) as srv:
        yield srv


def test_api_key_never_logged(keyed):
    url = keyed.url_for("v1/completions")
    good = {"Authorization": f"Bearer {KEY}"}
    assert httpx.post(url, json={"prompt": "A", "max_tokens": 4}, headers=good, timeout=60).status_code == 200
    assert httpx.post(url, json={"prompt": "A", "stop": 5}, headers=good, timeout=60).status_code == 400
    with httpx.stream("POST", url, json={"prompt": "A", "max_tokens": 4, "stream": True}, headers=good) as r:
        assert r.status_code == 200 and [x for x in r.iter_lines() if x][-1] == "data: [DONE]"
    for wrong in (KEY + "x", KEY[:-1], KEY.upper(), f"{KEY} {KEY}"):
        r = httpx.post(url, json={"prompt": "A"}, headers={"Authorization": f"Bearer {wrong}"}, timeout=60)
        assert r.status_code == 401 and KEY.lower() not in r.text.lower()
    r = httpx.post(url, content=b"{bad json", headers={**good, "content-type": "application/json"}, timeout=60)
    assert r.status_code == 400
    httpx.get(keyed.url_for("metrics"), timeout=10)
    assert keyed.stop() == 0
    log = keyed.log_path.read_text(errors="replace")
    assert "POST /v1/completions" in log  # the access log really was on
    assert KEY.lower() not in log.lower() and KEY[:-1] not in log


def _finish_reasons(url: str, body: dict) -> list[str]:
    with httpx.stream("POST", url, json=body, timeout=60) as r:
        assert r.status_code == 200
        return [c["finish_reason"] for line in r.iter_lines() if line.startswith("data: {")
                for c in json.loads(line[6:])["choices"] if c["finish_reason"]]


def test_sigterm_under_load_drains_everything(chat_ckpt, tmp_path):
    """test_shutdown.py drains two requests; here 16 (6 running, the rest queued) all finish normally."""
    srv = RemoteServer(chat_ckpt, ("--drain-timeout", "20", "--max-num-seqs", "6"), log_path=tmp_path / "s.log")
    try:
        url = srv.url_for("v1/completions")
        body = {"prompt": "A", "max_tokens": 48, "block_length": 8, "steps": 48, "stream": True}
        with cf.ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(_finish_reasons, url, {**body, "prompt": f"A{i}"}) for i in range(16)]
            deadline, m = time.monotonic() + 20, {}
            while time.monotonic() < deadline:  # SIGTERM once all 16 are admitted and some still wait
                m = srv.metrics()
                admitted = m["vllm:num_requests_running"] + m["vllm:num_requests_waiting"]
                if admitted + sum(f.done() for f in futures) >= 16 and m["vllm:num_requests_waiting"] > 0:
                    break
                time.sleep(0.01)
            assert m["vllm:num_requests_waiting"] > 0, m
            srv.signal()
            r = httpx.post(url, json={"prompt": "A", "max_tokens": 2}, timeout=10)
            assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["code"] == "shutting_down"
            reasons = [f.result(timeout=30) for f in futures]
        assert all(rs in (["length"], ["stop"]) for rs in reasons), reasons
        assert srv.proc.wait(30) == 0
    finally:
        srv.stop()
    assert "Traceback" not in srv.log_tail(100000)
