"""``unmask serve --tensor-parallel-size 2`` as a real process (gloo on CPU): the embedded models answer the same
text as on one device at temperature 0, streamed and not, and a stopped or SIGKILLed server leaves no rank; a worker
rank killed (or hung) under load fails every request with a clear error, /health says why, the server exits and
leaves no process behind."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.remote import RemoteServer

QUESTIONS = ["What is 12 + 30?", "reverse: abc", "Sort ascending: 7 6 8 5 7 6", "Uppercase: v c h o r"]
EXACT = ("--dtype", "float64")  # exact comparison with one device: float64 rounding cannot flip a choice


def _children(pid: int) -> dict[int, str]:
    """Live processes whose parent is ``pid`` -> their command lines (Linux /proc): the spawned ranks and
    multiprocessing's resource tracker."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out[int(stat.parent.name)] = cmd
    return out


def _ranks(pid: int) -> list[int]:
    return [child for child, cmd in _children(pid).items() if "spawn_main" in cmd]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


def _answers(srv: RemoteServer, stream: bool) -> list[str]:
    client = srv.openai()
    texts = []
    for q in QUESTIONS:
        kw = dict(model="m", messages=[{"role": "user", "content": q}], max_tokens=32, temperature=0)
        if stream:
            texts.append("".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
                stream=True, **kw) if c.choices))
        else:
            texts.append(client.chat.completions.create(**kw).choices[0].message.content)
    return texts


@pytest.mark.parametrize("model,extra,stop", [("tiny-llada-instruct", (), signal.SIGTERM),
                                              ("tiny-llada-moe-instruct", ("--enable-expert-parallel",),
                                               signal.SIGKILL)])
def test_two_ranks_answer_as_one_device(model, extra, stop, tmp_path):
    """Then the server is stopped: SIGTERM (it drains and exits 0) or SIGKILL; either way no rank stays."""
    args = (*EXACT, "--served-model-name", "m")
    with RemoteServer(model, args, log_path=tmp_path / "tp1.log") as one:
        want = _answers(one, stream=False)
    with RemoteServer(model, (*args, "-tp", "2", *extra), log_path=tmp_path / "tp2.log") as two:
        assert len(_ranks(two.proc.pid)) == 1  # rank 1
        assert _answers(two, stream=False) == want
        assert _answers(two, stream=True) == want
        _stop_leaves_no_rank(two, stop)
    assert any(w.strip() for w in want)


def _stop_leaves_no_rank(srv: RemoteServer, sig: int) -> None:
    """SIGTERM: the server stops its ranks and exits 0. SIGKILL on the server (rank 0): each worker sees its pipe
    close and exits. Either way no worker (nor multiprocessing's tracker) keeps running."""
    children = list(_children(srv.proc.pid))
    srv.proc.send_signal(sig)
    assert srv.proc.wait(30) == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
    deadline = time.monotonic() + 15
    while not all(_gone(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(c) for c in children)


def _long_request(srv: RemoteServer, results: list, started: threading.Event) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "reverse: abcdefgh"}], "max_tokens": 256,
            "steps": 256, "block_length": 32, "ignore_eos": True, "stream": True}
    try:
        with httpx.stream("POST", srv.url_for("v1/chat/completions"), json=body, timeout=60) as r:
            events = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    started.set()
            results.append((r.status_code, events))
    except httpx.HTTPError as exc:  # the server went away before answering
        results.append((None, [repr(exc)]))


@pytest.mark.parametrize("sig,reason", [(signal.SIGKILL, "tensor-parallel rank 1 (pid {pid}) exited with code -9"),
                                        (signal.SIGSTOP, "a tensor-parallel step did not finish within 2 s")])
def test_failed_rank_fails_requests_and_the_server_exits(sig, reason, tmp_path):
    """SIGKILL: the rank dies; SIGSTOP: it hangs (found by --tp-step-timeout)."""
    srv = RemoteServer("tiny-llada-instruct", ("--served-model-name", "m", "-tp", "2", "--tp-step-timeout", "2"),
                       log_path=tmp_path / "s.log")
    try:
        (worker,) = _ranks(srv.proc.pid)
        children = list(_children(srv.proc.pid))  # rank 1 and the resource tracker
        results, started = [], threading.Event()
        threads = [threading.Thread(target=_long_request, args=(srv, results, started)) for _ in range(4)]
        for t in threads:
            t.start()
        assert started.wait(60), srv.log_tail()
        os.kill(worker, sig)
        reason = reason.format(pid=worker)
        health = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and health is None:
            r = httpx.get(srv.url_for("health"), timeout=5)
            if r.status_code == 503:
                health = r.text
            time.sleep(0.05)
        assert health is not None and reason in health, health
        for t in threads:
            t.join(60)
        assert len(results) == 4
        for status, events in results:
            assert status == 200 and events[-1] == "[DONE]", events[-3:]
            error = json.loads(events[-2])["error"]
            assert reason in error["message"], error
        assert srv.proc.wait(30) == 1
        deadline = time.monotonic() + 10
        while not all(_gone(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(_gone(c) for c in children), _children(1)
    finally:
        srv.stop()

