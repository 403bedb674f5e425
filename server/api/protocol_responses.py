"""The Responses API request body (``POST /v1/responses``; pydantic, like protocol.py) and its mapping onto
the chat request path.

``input`` is a string or a list of messages (``{"role", "content"}``, optionally ``"type": "message"``; content
a string or ``input_text``/``output_text`` parts); ``instructions`` becomes a leading system message;
``max_output_tokens`` is the budget. Nothing is stored (every response behaves as ``store: false``), so
``previous_response_id`` is refused with a 400 that says so. The diffusion fields are those of chat.

Tools: ``tools`` holds function tools in the Responses shape (``{"type": "function", "name", "description",
"parameters", "strict"}``), ``tool_choice`` is ``none`` / ``auto`` / ``required`` / ``{"type": "function",
"name"}``, and ``parallel_tool_calls``; they map onto chat's tool plan (tools.py), so the prompt, the grammar of a
forced call and the parsing are chat's. History items ``function_call`` (``call_id``, ``name``, ``arguments``)
and ``function_call_output`` (``call_id``, ``output``) become an assistant message with ``tool_calls`` and a
``tool`` message. Hosted tools (web search, file search, ...) are refused: this server runs none.
"""
from __future__ import annotations

import types
from typing import Any, Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr

from unmask.server.api.errors import bad_request
from unmask.server.api.protocol import ChatMessage, ContentPart, GenerateRequest, OpenAIBase, check_top_logprobs
from unmask.server.api.protocol_structured import constraint_with_tools
from unmask.server.api.tools import ToolPlan, tool_plan
from unmask.server.engine.constraint import StructuredOutputs

_TEXT_PARTS = ("input_text", "output_text", "text")
LOGPROBS_INCLUDE = "message.output_text.logprobs"


class InputPart(OpenAIBase):
    type: StrictStr
    text: StrictStr | None = None


class InputItem(OpenAIBase):
    type: StrictStr | None = "message"
    role: Literal["system", "developer", "user", "assistant"] | None = None
    content: StrictStr | list[InputPart] | None = None
    call_id: StrictStr | None = None
    """function_call / function_call_output: the call this item is or answers."""
    name: StrictStr | None = None
    arguments: StrictStr | None = None
    output: StrictStr | None = None


class ResponsesRequest(GenerateRequest):
    input: StrictStr | list[InputItem]
    instructions: StrictStr | None = None
    max_output_tokens: StrictInt | None = Field(None, ge=1)
    store: StrictBool | None = None
    previous_response_id: StrictStr | None = None
    metadata: dict[StrictStr, StrictStr] | None = None
    text: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: StrictBool | None = None
    reasoning: dict[str, Any] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[StrictStr] | None = None
    top_logprobs: StrictInt | None = None

    def check(self) -> None:
        """400 for what this server cannot do, in the reference's field order."""
        fields = [("include", set(self.include or ()) <= {LOGPROBS_INCLUDE}),
                  ("previous_response_id", self.previous_response_id is None),
                  ("reasoning", not (self.reasoning or {}).get("effort")),
                  *self.unsupported_common()]
        bad = [name for name, ok in fields if not ok]
        if "previous_response_id" in bad:
            raise bad_request("previous_response_id is not supported: this server stores no responses (every "
                              "response behaves as store=false); send the whole conversation as input",
                              "previous_response_id", "unsupported_parameter")
        self.check_common(fields, " reasoning.effort has no counterpart in the supported models (no reasoning-effort "
                                  "control).")
        if self.n != 1:
            raise bad_request("the Responses API returns one output; n must be 1", "n")
        asked = LOGPROBS_INCLUDE in (self.include or ())
        check_top_logprobs(self.top_logprobs, asked, f"include=[{LOGPROBS_INCLUDE!r}]")

    def tool_plan(self) -> ToolPlan | None:
        """The validated function tools (tools.py) from the Responses shapes, or None without tools."""
        return tool_plan(types.SimpleNamespace(tools=_chat_tools(self.tools),
                                               tool_choice=_chat_tool_choice(self.tool_choice),
                                               parallel_tool_calls=self.parallel_tool_calls))

    def constraint(self) -> tuple[StructuredOutputs | None, str | None]:
        return constraint_with_tools(self)

    def logprobs_count(self) -> int | None:
        """``include: ["message.output_text.logprobs"]`` asks for logprobs, with ``top_logprobs`` alternatives."""
        return (self.top_logprobs or 0) if LOGPROBS_INCLUDE in (self.include or ()) else None

    def messages(self) -> list[ChatMessage]:
        """``instructions`` + ``input`` as chat messages (400 naming the item that cannot be one)."""
        out = [ChatMessage(role="system", content=self.instructions)] if self.instructions else []
        if isinstance(self.input, str):
            return out + [ChatMessage(role="user", content=self.input)]
        for i, item in enumerate(self.input):
            if item.type == "function_call":
                call = {"id": _required(item.call_id, i, "call_id"), "type": "function",
                        "function": {"name": _required(item.name, i, "name"), "arguments": item.arguments or "{}"}}
                if out and out[-1].role == "assistant" and out[-1].tool_calls and not out[-1].content:
                    out[-1].tool_calls.append(call)  # consecutive calls: one assistant turn
                else:
                    out.append(ChatMessage(role="assistant", content=None, tool_calls=[call]))
            elif item.type == "function_call_output":
                out.append(ChatMessage(role="tool", content=_required(item.output, i, "output"),
                                       tool_call_id=_required(item.call_id, i, "call_id")))
            elif item.type != "message" or item.role is None:
                raise bad_request(f"input item type {item.type!r} is not supported; use messages, function_call "
                                  "and function_call_output items", f"input.{i}.type", "unsupported_content")
            else:
                out.append(ChatMessage(role=item.role, content=_content(item, i)))
        if not out:
            raise bad_request("input must not be empty", "input")
        return out


def _content(item: InputItem, i: int) -> str | list[ContentPart] | None:
    if not isinstance(item.content, list):
        return item.content
    parts = []
    for j, part in enumerate(item.content):
        if part.type not in _TEXT_PARTS or part.text is None:
            raise bad_request(f"content part type {part.type!r} is not supported; only text parts are",
                              f"input.{i}.content.{j}.type", "unsupported_content")
        parts.append(ContentPart(type="text", text=part.text))
    return parts


def _required(value: str | None, i: int, field: str) -> str:
    if value is None:
        raise bad_request(f"this input item needs {field}", f"input.{i}.{field}")
    return value


def _chat_tools(tools: list[Any] | None) -> list[dict] | None:
    """Responses function tools -> chat's ``{"type": "function", "function": {...}}`` (400 for other tool types)."""
    if not tools:
        return tools
    out = []
    for i, t in enumerate(tools):
        kind = t.get("type") if isinstance(t, dict) else None
        if kind != "function":
            raise bad_request(f"tool type {kind!r} is not supported: this server runs no hosted tools; send "
                              "function tools", f"tools.{i}.type", "unsupported_parameter")
        if "function" in t:  # chat's nested shape, accepted as well
            out.append(t)
            continue
        if not isinstance(t.get("name"), str) or not t["name"]:
            raise bad_request("a function tool needs a non-empty name", f"tools.{i}.name")
        out.append({"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters")
                                                     if t.get(k) is not None}})
    return out


def _chat_tool_choice(choice: Any) -> Any:
    """Responses ``{"type": "function", "name"}`` -> chat's ``{"type": "function", "function": {"name"}}``."""
    if isinstance(choice, dict) and choice.get("type") == "function" and "name" in choice:
        return {"type": "function", "function": {"name": choice["name"]}}
    if isinstance(choice, dict) and choice.get("type") != "function":
        raise bad_request(f"tool_choice type {choice.get('type')!r} is not supported; use 'none', 'auto', "
                          "'required' or {\"type\": \"function\", \"name\": ...}", "tool_choice")
    return choice
