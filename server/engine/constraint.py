"""StructuredOutputs: what a request's output must match (a JSON schema, a regex, one of several strings, or a
grammar), as a frozen, hashable ``DiffusionParams`` field. It only names the constraint; ``structured.py``
compiles it with the grammar engine and enforces it while decoding.

Exactly one of ``json``, ``regex``, ``choice``, ``grammar`` or ``json_object`` is set (vLLM's
``StructuredOutputsParams``). A JSON schema given as a dict is stored as its compact JSON text (keys in their given
order: a schema's property order is the output's), so equal schemas compare and hash equal and share one
compiled grammar.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any

KINDS = ("json", "regex", "choice", "grammar", "json_object")


@dataclasses.dataclass(frozen=True)
class StructuredOutputs:
    json: str | None = None
    """A JSON schema (dict or JSON text): the output is one JSON value that validates against it."""
    regex: str | None = None
    """The whole output matches this regular expression (the grammar engine's syntax: Rust ``regex``)."""
    choice: tuple[str, ...] | None = None
    """The output is exactly one of these strings."""
    grammar: str | None = None
    """A context-free grammar: Lark syntax (llguidance's dialect), or GBNF when it uses ``::=``."""
    json_object: bool = False
    """The output is any JSON object (``response_format: {"type": "json_object"}``)."""
    strict: bool = True
    """For ``json``: unsupported schema keywords are an error (True) or ignored (False, ``strict: false``)."""

    def __post_init__(self) -> None:
        if isinstance(self.json, (dict, list, bool)):
            object.__setattr__(self, "json", canonical_json(self.json))
        if isinstance(self.choice, (list, tuple)):
            object.__setattr__(self, "choice", tuple(self.choice))
        given = [k for k in KINDS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise ValueError(f"structured_outputs sets {' and '.join(given) or 'nothing'}; set exactly one of "
                             f"{', '.join(KINDS)}")
        if self.json is not None:
            if not isinstance(self.json, str):
                raise ValueError("structured_outputs.json must be a JSON schema (an object or its JSON text)")
            try:
                schema = json.loads(self.json)
            except ValueError as exc:
                raise ValueError(f"structured_outputs.json is not valid JSON: {exc}") from None
            if not isinstance(schema, (dict, bool)):
                raise ValueError("structured_outputs.json must be a JSON schema object")
            object.__setattr__(self, "json", canonical_json(schema))
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"structured_outputs.{name} must be a non-empty string")
        if self.choice is not None and (not isinstance(self.choice, tuple) or not self.choice
                                        or any(not isinstance(c, str) or not c for c in self.choice)):
            raise ValueError("structured_outputs.choice must be a non-empty list of non-empty strings")
        if not isinstance(self.strict, bool) or not isinstance(self.json_object, bool):
            raise ValueError("structured_outputs.strict and .json_object must be true or false")

    @property
    def kind(self) -> str:
        """Which constraint this is: one of ``KINDS``."""
        return next(k for k in KINDS if getattr(self, k) not in (None, False))


def canonical_json(value: Any) -> str:
    """value -> its compact JSON text (key order kept: it is the order of the output's properties), the cache key
    of a schema."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
