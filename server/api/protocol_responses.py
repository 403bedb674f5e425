"""The Responses API request body (``POST /v1/responses``; pydantic, like protocol.py) and its mapping onto
the chat request path.

``input`` is a string or a list of messages (``{"role", "content"}``, optionally ``"type": "message"``; content
a string or ``input_text``/``output_text`` parts); ``instructions`` becomes a leading system message;
``max_output_tokens`` is the budget. Nothing is stored (every response behaves as ``store: false``), so
``previous_response_id`` is refused with a 400 that says so. The diffusion fields are those of chat.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr

from unmask.server.api.errors import bad_request
from unmask.server.api.protocol import ChatMessage, ContentPart, GenerateRequest, OpenAIBase, check_top_logprobs

_TEXT_PARTS = ("input_text", "output_text", "text")
LOGPROBS_INCLUDE = "message.output_text.logprobs"


class InputPart(OpenAIBase):
    type: StrictStr
    text: StrictStr | None = None


class InputItem(OpenAIBase):
    type: StrictStr | None = "message"
    role: Literal["system", "developer", "user", "assistant"] | None = None
    content: StrictStr | list[InputPart] | None = None


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
                  ("tool_choice", self.tool_choice in (None, "none", "auto") or not self.tools),
                  ("tools", not self.tools), *self.unsupported_common()]
        bad = [name for name, ok in fields if not ok]
        if "previous_response_id" in bad:
            raise bad_request("previous_response_id is not supported: this server stores no responses (every "
                              "response behaves as store=false); send the whole conversation as input",
                              "previous_response_id", "unsupported_parameter")
        self.check_common(fields, " Tools, structured output and reasoning are not offered on /v1/responses.")
        if self.n != 1:
            raise bad_request("the Responses API returns one output; n must be 1", "n")
        asked = LOGPROBS_INCLUDE in (self.include or ())
        check_top_logprobs(self.top_logprobs, asked, f"include=[{LOGPROBS_INCLUDE!r}]")

    def logprobs_count(self) -> int | None:
        """``include: ["message.output_text.logprobs"]`` asks for logprobs, with ``top_logprobs`` alternatives."""
        return (self.top_logprobs or 0) if LOGPROBS_INCLUDE in (self.include or ()) else None

    def messages(self) -> list[ChatMessage]:
        """``instructions`` + ``input`` as chat messages (400 naming the item that cannot be one)."""
        out = [ChatMessage(role="system", content=self.instructions)] if self.instructions else []
        if isinstance(self.input, str):
            return out + [ChatMessage(role="user", content=self.input)]
        for i, item in enumerate(self.input):
            if item.type != "message" or item.role is None:
                raise bad_request(f"input item type {item.type!r} is not supported; only messages are",
                                  f"input.{i}.type", "unsupported_content")
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
