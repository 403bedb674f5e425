"""Start ``unmask serve`` as a subprocess on a free loopback port and scrape its diffusion counters.

Used by the sweep (and the serving test) so a benchmark can bring its own server: the process is started
with the given model and flags, ``/health`` is polled until 200 (failing fast, with the log tail, if the
process exits first) and SIGTERM ends it (SIGKILL after a grace period).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``with ServerProcess(model, flags, log) as srv: srv.base_url``."""

    def __init__(self, model: str | None, flags: list[str], log_path: Path, ready_timeout: float = 300.0):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "unmask.server", "serve", *([model] if model else []),
               "--host", "127.0.0.1", "--port", str(self.port), *flags]
        self.command = cmd
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            self._wait(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with status {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"server not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, size: int = 3000) -> str:
        return self.log_path.read_bytes()[-size:].decode(errors="replace") if self.log_path.exists() else ""

    def stop(self, grace: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


SCRAPED = ("unmask:request_nfe_sum", "unmask:request_nfe_count", "unmask:request_tokens_per_forward_sum",
           "unmask:request_tokens_per_forward_count", "unmask:nfe_total", "unmask:engine_iterations_total")


def scrape(base_url: str) -> dict[str, float]:
    """The diffusion counters of an unmask server's /metrics (empty for servers without them)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = httpx.get(base_url.rstrip("/") + "/metrics", timeout=10).text
        families = list(text_string_to_metric_families(text))
    except (httpx.HTTPError, ValueError):
        return {}
    out: dict[str, float] = {}
    for fam in families:
        for sample in fam.samples:
            if sample.name in SCRAPED:
                out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def server_side(before: dict[str, float], after: dict[str, float]) -> dict:
    """Per-run means from two scrapes: NFE and TPF per finished choice, sequences per engine iteration."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in SCRAPED}

    def ratio(a: str, b: str) -> float | None:
        return d[a] / d[b] if d[b] > 0 else None
    return {"server_mean_nfe": ratio("unmask:request_nfe_sum", "unmask:request_nfe_count"),
            "server_mean_tpf": ratio("unmask:request_tokens_per_forward_sum",
                                     "unmask:request_tokens_per_forward_count"),
            "server_mean_batch_size": ratio("unmask:nfe_total", "unmask:engine_iterations_total")}
