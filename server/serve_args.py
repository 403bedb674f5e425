"""``unmask serve`` flags -> EngineConfig + server settings, and the uvicorn launch."""
from __future__ import annotations

import argparse


def add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-num-seqs", type=int, default=64)


def run_server(args: argparse.Namespace) -> int:
    raise SystemExit("unmask serve: the HTTP server is not part of this build yet")
