"""RemoteServer: a real ``unmask serve`` subprocess on a free loopback port (vLLM's RemoteOpenAIServer).

Starts the CLI, polls /health until 200 (failing fast if the process exits), and hands out clients:
the official ``openai`` package (the oracle) and ``httpx`` for raw bodies and non-OpenAI routes.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }}<|eot_id|>"
                 "{% endfor %}{% if add_generation_prompt %}ASSISTANT: {% endif %}")
SMALL_ARGS = ("--device", "cpu", "--dtype", "float32", "--kv-cache-memory", "32M", "--disable-access-log")


def add_chat_template(ckpt: Path) -> Path:
    """Give a tiny test checkpoint (chat-less tokenizer) a simple chat template."""
    cfg = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "chat_template": CHAT_TEMPLATE}
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    return ckpt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RemoteServer:
    def __init__(self, model: str | Path, args: tuple[str, ...] = (), log_path: Path | None = None,
                 timeout: float = 120.0, api_key: str | None = None):
        self.port = free_port()
        self.api_key = api_key
        cmd = [sys.executable, "-m", "unmask.server", "serve", str(model), "--port", str(self.port),
               *SMALL_ARGS, *args]
        self.log_path = log_path
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._wait_ready(timeout)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_for(self, *parts: str) -> str:
        return "/".join([self.base_url, *[p.strip("/") for p in parts]])

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.url_for("health"), timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"server not ready after {timeout} s: {self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def openai(self, **kw):
        import openai
        return openai.OpenAI(base_url=self.url_for("v1"), api_key=self.api_key or "token-abc123",
                             max_retries=0, timeout=kw.pop("timeout", 60), **kw)

    def async_openai(self, **kw):
        import openai
        return openai.AsyncOpenAI(base_url=self.url_for("v1"), api_key=self.api_key or "token-abc123",
                                  max_retries=0, timeout=kw.pop("timeout", 60), **kw)

    def http(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=kw.pop("timeout", 60), headers=self.headers(), **kw)

    def metrics(self) -> dict[str, float]:
        """Sample name (with labels, minus model_name) -> value, parsed with prometheus_client."""
        from prometheus_client.parser import text_string_to_metric_families
        text = httpx.get(self.url_for("metrics"), timeout=10).text
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "model_name")
                out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
        return out

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
