"""Structured-output fields of the HTTP API -> one engine ``StructuredOutputs`` (or None), 400 naming the field.

Sources, all compiled by the engine's one grammar engine (server/engine/structured.py):

- ``response_format`` (chat, completions): ``{"type": "text"}`` (none), ``{"type": "json_object"}``,
  ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`` (``strict: false`` ignores schema
  keywords the engine does not implement instead of refusing them);
- the Responses API's ``text.format``: the same types, with ``name`` / ``schema`` / ``strict`` inline;
- vLLM's ``structured_outputs``: ``{"json" | "regex" | "choice" | "grammar" | "json_object": ...}``;
- vLLM's older ``guided_json`` / ``guided_regex`` / ``guided_choice`` / ``guided_grammar``.

At most one source per request (two are a 400: which one should win is not obvious). Tool calls
(server/api/tools.py) build their constraint the same way, from ``tools`` and ``tool_choice``.
"""
from __future__ import annotations

from typing import Any

from unmask.server.api.errors import bad_request
from unmask.server.engine.constraint import StructuredOutputs

GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}
STRUCTURED_KEYS = ("json", "regex", "choice", "grammar", "json_object")
IGNORED_OPTIONS = ("disable_fallback", "disable_any_whitespace", "disable_additional_properties",
                   "whitespace_pattern")
"""vLLM backend options of ``structured_outputs`` that do not change what is valid here: accepted, ignored."""


def request_constraint(body: Any) -> tuple[StructuredOutputs | None, str | None]:
    """(constraint, the field it came from) of a completions / chat / responses body; (None, None) without one.
    400 for malformed values and for more than one source."""
    found = []
    fmt = getattr(body, "response_format", None)
    if fmt is not None:
        found.append(("response_format", _response_format(fmt, "response_format", nested=True)))
    text = getattr(body, "text", None)
    if isinstance(text, dict) and text.get("format") is not None:
        found.append(("text.format", _response_format(text["format"], "text.format", nested=False)))
    if getattr(body, "structured_outputs", None) is not None:
        found.append(("structured_outputs", _structured(body.structured_outputs)))
    for field, kind in GUIDED.items():
        value = getattr(body, field, None)
        if value is not None:
            found.append((field, _build(field, **{kind: value})))
    found = [(f, c) for f, c in found if c is not None]
    if len(found) > 1:
        names = ", ".join(f for f, _ in found)
        raise bad_request(f"{names}: give at most one structured-output constraint per request", found[1][0])
    return (found[0][1], found[0][0]) if found else (None, None)


def constraint_with_tools(body) -> tuple[StructuredOutputs | None, str | None]:
    """A body's structured-output constraint and the field it came from (protocol_structured.py); a forced tool
    call (tool_choice required / named, ``body.tool_plan()``) is the constraint, and then no other may be set."""
    own = request_constraint(body)
    plan = body.tool_plan()
    if plan is None or not plan.forced:
        return own
    if own[0] is not None:
        raise bad_request(f"tool_choice={body.tool_choice!r} forces a tool call; it cannot be combined with "
                          f"{own[1]}", own[1])
    return plan.constraint(), "tools"


def _response_format(fmt: Any, field: str, nested: bool) -> StructuredOutputs | None:
    """OpenAI's response_format (chat: the schema under ``json_schema``) or text.format (Responses: inline)."""
    if not isinstance(fmt, dict):
        raise bad_request(f"{field} must be an object with a 'type'", field)
    kind = fmt.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return _build(field, json_object=True)
    if kind != "json_schema":
        raise bad_request(f"{field}.type={kind!r} is not supported; use 'text', 'json_object' or 'json_schema'",
                          f"{field}.type")
    spec = fmt.get("json_schema") if nested else fmt
    where = f"{field}.json_schema" if nested else field
    if not isinstance(spec, dict) or "schema" not in spec:
        raise bad_request(f"{where} needs a 'schema' (the JSON schema the output must follow)", where)
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise bad_request(f"{where}.strict must be true or false", f"{where}.strict")
    return _build(f"{where}.schema", json=spec["schema"], strict=bool(strict))


def _structured(value: Any) -> StructuredOutputs | None:
    """vLLM's structured_outputs object."""
    if not isinstance(value, dict):
        raise bad_request("structured_outputs must be an object such as {\"json\": {...}}", "structured_outputs")
    unknown = [k for k in value if k not in STRUCTURED_KEYS and k not in IGNORED_OPTIONS]
    if unknown:
        raise bad_request(f"structured_outputs.{unknown[0]} is not supported; use one of {STRUCTURED_KEYS}",
                          f"structured_outputs.{unknown[0]}", "unsupported_parameter")
    given = {k: value[k] for k in STRUCTURED_KEYS if value.get(k) not in (None, False)}
    return _build("structured_outputs", **given) if given else None


def _build(field: str, **fields: Any) -> StructuredOutputs:
    """StructuredOutputs(**fields), a 400 naming ``field`` when the value is malformed."""
    if "json" in fields and not isinstance(fields["json"], (str, dict, bool)):  # JSON text: StructuredOutputs parses it
        raise bad_request(f"{field} must be a JSON schema object", field)
    try:
        return StructuredOutputs(**fields)
    except ValueError as exc:
        raise bad_request(str(exc).replace("structured_outputs", field, 1), field) from None
