"""A minimal W3C WebDriver client (httpx -> chromedriver) driving Debian's headless Chromium.

No selenium or playwright needed: chromedriver speaks WebDriver over HTTP, and the few commands a
browser test needs (open a page, find an element, type, run a script, screenshot) are one POST each.
``ensure_chromium()`` installs ``chromium`` + ``chromium-driver`` with apt when they are missing.
"""
from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")


def _which(*names: str) -> str | None:
    return next((p for p in map(shutil.which, names) if p), None)


def ensure_chromium() -> tuple[str, str] | str:
    """(chromium, chromedriver) paths, installing them with apt if needed; a reason string if impossible."""
    found = _which("chromium", "chromium-browser"), _which("chromedriver", "chromium-driver")
    if all(found):
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        return "chromium/chromedriver missing and apt-get is unavailable (not root or not Debian)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in ([apt, "update", "-qq"], [apt, "install", "-y", "-qq", "chromium", "chromium-driver"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {done.stderr[-500:]}"
    found = _which("chromium", "chromium-browser"), _which("chromedriver", "chromium-driver")
    return found if all(found) else "apt installed chromium but the binaries are not on PATH"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """One chromedriver process and one session: ``with Browser(chromium, driver) as b: b.open(url)``."""

    def __init__(self, chromium: str, driver: str, width: int = 1280, height: int = 900):
        port = _free_port()
        self.profile = tempfile.mkdtemp(prefix="unmask-chromium-")
        self.proc = subprocess.Popen([driver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        self.session = None
        try:
            self._wait_driver()
            args = [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}"]
            caps = {"browserName": "chrome", "goog:chromeOptions": {"binary": chromium, "args": args}}
            self.session = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})["sessionId"]
        except BaseException:
            self.close()
            raise

    def _wait_driver(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.http.get("/status").json()["value"]["ready"]:
                    return
            except (httpx.TransportError, ValueError, KeyError):
                pass
            time.sleep(0.1)
        raise TimeoutError("chromedriver did not start")

    def _call(self, method: str, path: str, body: dict | None = None):
        resp = self.http.request(method, path, json=body)
        value = resp.json().get("value")
        if resp.status_code != 200:
            raise RuntimeError(f"WebDriver {method} {path}: {value}")
        return value

    def _s(self, path: str) -> str:
        return f"/session/{self.session}{path}"

    def open(self, url: str) -> None:
        self._call("POST", self._s("/url"), {"url": url})

    def run(self, script: str, *args):
        """Run a function body in the page (``arguments[i]`` are ``args``) and return its value."""
        return self._call("POST", self._s("/execute/sync"), {"script": script, "args": list(args)})

    def type(self, css: str, text: str) -> None:
        """Focus the element and type ``text`` as key presses ("\\n" presses Enter)."""
        el = self._call("POST", self._s("/element"), {"using": "css selector", "value": css})[ELEMENT]
        self._call("POST", self._s(f"/element/{el}/click"), {})
        self._call("POST", self._s(f"/element/{el}/value"), {"text": text})

    def resize(self, width: int, height: int) -> None:
        self._call("POST", self._s("/window/rect"), {"width": width, "height": height})

    def wait_for(self, script: str, timeout: float, interval: float = 0.1):
        """Poll ``script`` until it returns a truthy value; that value, or TimeoutError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.run(script)
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError(f"condition not met in {timeout} s: {script}")

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self._call("GET", self._s("/screenshot"))))
        return path

    def close(self) -> None:
        try:
            if self.session is not None:
                self._call("DELETE", self._s(""))
        except (httpx.HTTPError, RuntimeError):
            pass
        finally:
            self.http.close()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
