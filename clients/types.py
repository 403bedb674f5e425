"""Typed results of the unmask client (plain dataclasses built from the server's JSON; ``raw`` keeps it)."""
from __future__ import annotations

import dataclasses

DIFFUSION_FIELDS = ("steps", "block_length", "threshold", "factor", "remasking", "cache", "cfg_scale", "preset",
                    "early_stop", "logits_eos_inf", "confidence_eos_eot_inf")


class UnmaskAPIError(Exception):
    """An error answer (HTTP status ≥ 400) or an error event inside a stream."""

    def __init__(self, status: int, message: str, type_: str | None = None, param: str | None = None,
                 code: str | None = None):
        super().__init__(f"{status} {type_ or 'error'}: {message}")
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    @classmethod
    def from_body(cls, status: int, body) -> "UnmaskAPIError":
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict):
            return cls(status, str(body))
        return cls(status, str(err.get("message")), err.get("type"), err.get("param"), err.get("code"))


@dataclasses.dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    nfe: int | None = None
    """Forward evaluations (only with the denoise stream)."""
    tokens_per_forward: float | None = None

    @classmethod
    def parse(cls, d: dict | None) -> "Usage | None":
        if not d:
            return None
        return cls(d["prompt_tokens"], d["completion_tokens"], d["total_tokens"], d.get("nfe"),
                   d.get("tokens_per_forward"))


@dataclasses.dataclass(frozen=True)
class Choice:
    index: int
    text: str
    finish_reason: str | None
    stop_reason: str | None = None


@dataclasses.dataclass(frozen=True)
class Completion:
    """A non-streaming answer of /v1/completions or /v1/chat/completions (chat: ``text`` = message content)."""
    id: str
    model: str
    created: int
    choices: list[Choice]
    usage: Usage | None
    raw: dict

    @property
    def text(self) -> str:
        return self.choices[0].text if self.choices else ""

    @classmethod
    def parse(cls, d: dict) -> "Completion":
        choices = [Choice(c["index"], c["message"]["content"] if "message" in c else c["text"],
                          c.get("finish_reason"), c.get("stop_reason")) for c in d.get("choices", [])]
        return cls(d["id"], d["model"], d["created"], choices, Usage.parse(d.get("usage")), d)


@dataclasses.dataclass(frozen=True)
class StreamEvent:
    """One streamed event. ``kind``: 'delta' (text for one choice; chat's role chunk has text ''),
    'usage' (the final usage chunk) or 'denoise' (one step's canvas, see server/api/streaming.py)."""
    kind: str
    index: int | None = None
    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    denoise: dict | None = None
    raw: dict | None = None

    @classmethod
    def parse(cls, name: str | None, d: dict) -> "StreamEvent":
        if name == "denoise":
            return cls("denoise", d["denoise"]["index"], denoise=d["denoise"], raw=d)
        if not d.get("choices"):
            return cls("usage", usage=Usage.parse(d.get("usage")), raw=d)
        c = d["choices"][0]
        text = c["delta"].get("content") or "" if "delta" in c else c.get("text") or ""
        return cls("delta", c["index"], text, c.get("finish_reason"), Usage.parse(d.get("usage")), raw=d)
