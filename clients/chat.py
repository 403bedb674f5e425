"""``unmask chat``: an interactive terminal chat against a running server (``python -m unmask.clients.chat``).

Type a message and press Enter; the answer streams in as blocks are committed. Commands: ``/reset``
clears the conversation, ``/denoise`` toggles the live view of the canvas (masked positions shown as
``·``), ``/exit`` (or Ctrl-D) quits. The conversation is sent in full each turn, so multi-turn answers
use the checkpoint's chat template on the server.
"""
from __future__ import annotations

import argparse
import shutil
import sys

import httpx

from unmask.clients.client import Client
from unmask.clients.types import UnmaskAPIError

MASK_GLYPH = "·"


def add_chat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server base URL")
    p.add_argument("--api-key", default=None, help="bearer key, if the server needs one")
    p.add_argument("--model", default=None, help="model name (default: the server's)")
    p.add_argument("--system", default=None, help="system message opening the conversation")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--preset", choices=["exact", "fast"], default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--block-length", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--denoise", action="store_true", help="show the canvas while it is denoised")


def render_canvas(denoise: dict, width: int) -> str:
    """One line: committed tokens as text, masked positions as MASK_GLYPH, cut to ``width``."""
    parts = [MASK_GLYPH if t is None else t.replace("\n", " ") for t in denoise["tokens"][:denoise["length"]]]
    line = "".join(parts)
    return line[: max(width - 1, 1)]


def _answer(client: Client, messages: list[dict], fields: dict, show_denoise: bool, out) -> str:
    text, width = [], shutil.get_terminal_size((100, 20)).columns
    for ev in client.chat_stream(messages, denoise=show_denoise, **fields):
        if ev.kind == "denoise" and show_denoise:
            out.write("\r\x1b[K" + render_canvas(ev.denoise, width))
        elif ev.kind == "delta" and ev.text:
            if show_denoise:  # from the first final text on, the answer replaces the canvas line
                out.write("\r\x1b[K")
                show_denoise = False
            text.append(ev.text)
            out.write(ev.text)
        elif ev.kind == "usage" and ev.usage is not None:
            out.write(f"\n[{ev.usage.completion_tokens} tokens]")
        out.flush()
    out.write("\n")
    return "".join(text)


def run_chat(args: argparse.Namespace, stdin=None, out=None) -> int:
    stdin, out = stdin or sys.stdin, out or sys.stdout
    fields = {"max_tokens": args.max_tokens, "preset": args.preset, "steps": args.steps,
              "block_length": args.block_length, "temperature": args.temperature}
    base = [{"role": "system", "content": args.system}] if args.system else []
    messages, denoise = list(base), args.denoise
    with Client(args.url, api_key=args.api_key, model=args.model) as client:
        while True:
            out.write("> ")
            out.flush()
            line = stdin.readline()
            if not line or line.strip() in ("/exit", "/quit"):
                return 0
            line = line.rstrip("\n")
            if line.strip() == "/reset":
                messages = list(base)
                continue
            if line.strip() == "/denoise":
                denoise = not denoise
                out.write(f"[denoise view {'on' if denoise else 'off'}]\n")
                continue
            if not line.strip():
                continue
            messages.append({"role": "user", "content": line})
            try:
                reply = _answer(client, messages, fields, denoise, out)
            except (UnmaskAPIError, httpx.HTTPError) as exc:
                out.write(f"\n[error: {exc}]\n")
                messages.pop()
                continue
            messages.append({"role": "assistant", "content": reply})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unmask chat", description=__doc__.splitlines()[0])
    add_chat_args(parser)
    return run_chat(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
