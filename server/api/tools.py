"""Tool calls on /v1/chat/completions: ``tools``, ``tool_choice``, ``parallel_tool_calls`` -> the prompt, the
grammar constraint, and the model's answer -> OpenAI ``tool_calls`` (whole, or streamed as argument deltas).

The call format the model writes (and the grammar enforces) is JSON: one call is
``{"name": "<function>", "arguments": {...}}``; with ``parallel_tool_calls`` (OpenAI's default: true) the answer
is a JSON array of one or more calls. ``arguments`` follows the function's ``parameters`` schema.

- ``tool_choice: "required"`` or a named function: the whole answer is constrained to that format (the named
  function only), so every call parses and its arguments validate against the schema (unless the budget runs
  out first: finish reason ``length``).
- ``"auto"`` (the default with tools): unconstrained; an answer that parses as a call of a known function is
  returned as ``tool_calls``, anything else as text. ``"none"``: tools are shown but never parsed.
- Rendering: the tool definitions are passed to the chat template as ``tools``; a template that does not use
  them gets them in a system message that also states the call format. History: an assistant message's
  ``tool_calls`` are rendered as the call JSON it stands for (unless the template renders ``tool_calls``
  itself), and ``role: "tool"`` messages as turns of role ``tool`` with their content.
"""
from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

from unmask.server.api.errors import bad_request
from unmask.server.engine.constraint import StructuredOutputs

SYSTEM_HEADER = ("You can call these functions. To call one, answer with only the JSON "
                 '{"name": <function name>, "arguments": <arguments object>}')
PARALLEL_NOTE = "; to call several, answer with a JSON list of such objects"


@dataclasses.dataclass(frozen=True)
class ToolPlan:
    """A chat request's tools after validation."""
    functions: tuple[dict, ...]
    """Each tool's ``function``: name, description, parameters (a JSON schema object)."""
    choice: str
    """'none', 'auto', 'required' or 'named'."""
    named: str | None
    parallel: bool

    @property
    def forced(self) -> bool:
        """The answer must be a call (required or named): it is constrained by the grammar."""
        return self.choice in ("required", "named")

    @property
    def names(self) -> set[str]:
        return {f["name"] for f in self.functions}

    def constraint(self) -> StructuredOutputs:
        """The grammar of a forced answer (call_schema as a JSON-schema constraint)."""
        funcs = [f for f in self.functions if self.named is None or f["name"] == self.named]
        return StructuredOutputs(json=call_schema(funcs, self.parallel))


def call_schema(functions: list[dict], parallel: bool) -> dict:
    """The JSON schema of an answer that calls one of ``functions`` (a list of calls when ``parallel``)."""
    calls = [{"type": "object", "properties": {"name": {"const": f["name"]},
                                               "arguments": f.get("parameters") or {"type": "object"}},
              "required": ["name", "arguments"], "additionalProperties": False} for f in functions]
    one = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return {"type": "array", "items": one, "minItems": 1} if parallel else one


def tool_plan(body: Any) -> ToolPlan | None:
    """The request's ToolPlan, or None without tools. 400 naming the field for malformed tools / tool_choice."""
    tools, choice = body.tools, body.tool_choice
    if not tools:
        if choice not in (None, "none", "auto"):
            raise bad_request("tool_choice needs tools", "tool_choice")
        return None
    functions = []
    for i, t in enumerate(tools):
        f = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(f, dict):
            raise bad_request("each tool must be {\"type\": \"function\", \"function\": {...}}", f"tools.{i}")
        if not isinstance(f.get("name"), str) or not f["name"]:
            raise bad_request("a function needs a non-empty name", f"tools.{i}.function.name")
        params = f.get("parameters")
        if params is not None and (not isinstance(params, dict) or params.get("type", "object") != "object"):
            raise bad_request("function parameters must be a JSON schema of type object", f"tools.{i}.function.parameters")
        functions.append({"name": f["name"], "description": f.get("description"), "parameters": params})
    names = [f["name"] for f in functions]
    if len(set(names)) != len(names):
        raise bad_request("function names must be unique", "tools")
    named = None
    if choice is None:
        choice = "auto"
    elif isinstance(choice, dict):
        named = (choice.get("function") or {}).get("name")
        if choice.get("type") != "function" or named not in names:
            raise bad_request(f"tool_choice names a function that is not among the tools: {named!r}", "tool_choice")
        choice = "named"
    elif choice not in ("none", "auto", "required"):
        raise bad_request(f"tool_choice={choice!r} is not valid; use 'none', 'auto', 'required' or "
                          "{\"type\": \"function\", \"function\": {\"name\": ...}}", "tool_choice")
    parallel = body.parallel_tool_calls is not False and choice != "named"
    return ToolPlan(tuple(functions), choice, named, parallel)


def openai_tools(plan: ToolPlan) -> list[dict]:
    """The tool definitions in OpenAI's shape, for a template's ``tools`` variable."""
    return [{"type": "function", "function": {k: v for k, v in f.items() if v is not None}} for f in plan.functions]


def system_text(plan: ToolPlan) -> str:
    """The tools and the call format as text (for templates that do not render ``tools``)."""
    header = SYSTEM_HEADER + (PARALLEL_NOTE if plan.parallel else "") + ".\n"
    return header + "\n".join(json.dumps(t["function"], ensure_ascii=False, separators=(",", ":"))
                               for t in openai_tools(plan))


def with_tools(messages: list[dict], plan: ToolPlan, template: str | None) -> list[dict]:
    """Flat messages with the tool description added as (or to) the system message, unless the template renders
    ``tools`` itself."""
    if template and "tools" in template:
        return messages
    text = system_text(plan)
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": messages[0]["content"] + "\n\n" + text}] + messages[1:]
    return [{"role": "system", "content": text}] + messages


def history_calls(tool_calls: list[Any], i: int) -> tuple[str, list[dict]]:
    """An assistant message's ``tool_calls`` -> (the call JSON the model would have written, the calls with their
    arguments parsed, for templates that render ``tool_calls``). 400 naming the entry when one is malformed."""
    calls = []
    for j, c in enumerate(tool_calls):
        f = c.get("function") if isinstance(c, dict) else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str):
            raise bad_request("a tool call needs function.name and function.arguments", f"messages.{i}.tool_calls.{j}")
        args = f.get("arguments", "{}")
        try:
            parsed = json.loads(args) if isinstance(args, str) else args
        except ValueError:
            raise bad_request("function.arguments must be a JSON string", f"messages.{i}.tool_calls.{j}") from None
        calls.append({"id": c.get("id"), "type": "function", "function": {"name": f["name"], "arguments": parsed}})
    body = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in calls]
    text = json.dumps(body[0] if len(body) == 1 else body, ensure_ascii=False, separators=(",", ":"))
    return text, calls


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


@dataclasses.dataclass
class CallPiece:
    """One call found in (a prefix of) the model's answer: its name once complete, its arguments text so far."""
    name: str | None = None
    args_start: int | None = None
    args_end: int | None = None
    done: bool = False


def scan_calls(text: str) -> list[CallPiece]:
    """The calls in a prefix of an answer in the call format (an object, or an array of objects), found by one
    pass that tracks JSON strings and nesting. Arguments are text[args_start:args_end] (args_end None: still
    open). Tolerates whitespace; does not validate (``parse_calls`` does, on the whole answer)."""
    calls: list[CallPiece] = []
    stripped = text.lstrip()
    base = 1 if stripped.startswith("[") else 0
    depth, in_str, esc, str_start, key, expect_key = 0, False, False, None, None, False
    cur: CallPiece | None = None
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
                if str_start is not None and cur is not None:
                    value = _json_string(text[str_start:i + 1])
                    if expect_key:
                        key = value
                    elif key == "name":
                        cur.name = value
            continue
        if ch == '"':
            in_str, str_start = True, (i if depth == base + 1 else None)
        elif ch in "{[":
            if depth == base and ch == "{":
                cur, key, expect_key = CallPiece(), None, True
                calls.append(cur)
            elif depth == base + 1 and key == "arguments" and cur is not None and cur.args_start is None:
                cur.args_start = i
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == base + 1 and key == "arguments" and cur is not None and cur.args_end is None:
                cur.args_end = i + 1
            elif depth == base and cur is not None:
                cur.done = True
        elif depth == base + 1 and ch == ":":
            expect_key = False
        elif depth == base + 1 and ch == ",":
            expect_key = True
    return calls


def _json_string(raw: str) -> str | None:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def parse_calls(text: str, plan: ToolPlan) -> list[dict] | None:
    """A whole answer -> OpenAI tool_calls (ids, function.name, function.arguments as the JSON text the model
    wrote), or None when it is not a call of known functions with object arguments."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    items = value if isinstance(value, list) and plan.parallel else [value]
    if not items or not all(isinstance(c, dict) and set(c) == {"name", "arguments"} and c["name"] in plan.names
                            and isinstance(c["arguments"], dict) for c in items):
        return None
    pieces = scan_calls(text)
    if len(pieces) != len(items):
        return None
    return [{"id": new_call_id(), "type": "function",
             "function": {"name": c["name"], "arguments": text[p.args_start:p.args_end]}}
            for c, p in zip(items, pieces)]


class CallStream:
    """One choice's streamed tool calls: feed the answer's text as it grows, get OpenAI ``tool_calls`` deltas
    (the first for a call carries id, type and name; then argument fragments whose concatenation is the
    call's arguments text)."""

    def __init__(self):
        self.text = ""
        self.sent: list[tuple[str, int]] = []  # per call announced: (id, argument characters sent)

    def feed(self, text: str) -> list[dict]:
        self.text += text
        out = []
        for k, piece in enumerate(scan_calls(self.text)):
            if piece.name is None or piece.args_start is None:
                break
            if k == len(self.sent):
                self.sent.append((new_call_id(), 0))
                out.append({"index": k, "id": self.sent[k][0], "type": "function",
                            "function": {"name": piece.name, "arguments": ""}})
            end = piece.args_end if piece.args_end is not None else len(self.text)
            call_id, done = self.sent[k]
            if end > piece.args_start + done:
                out.append({"index": k, "function": {"arguments": self.text[piece.args_start + done:end]}})
                self.sent[k] = (call_id, end - piece.args_start)
        return out
