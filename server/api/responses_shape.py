"""The Responses API's wire shapes: a ``response`` object, and when streaming the event sequence the openai SDK's
``responses.stream()`` consumes (created, in_progress, output item and content part added, ``output_text``
deltas, the matching done events, then completed or incomplete). Tool calls: responses_tool_shape.py."""
from __future__ import annotations

import time
import uuid

from unmask.server.api import logprobs as lp, streaming
from unmask.server.api.protocol_responses import ResponsesRequest
from unmask.server.api.tools import ToolPlan


class ResponseShape:
    """One response's object and events (``n`` is always 1: choice 0)."""

    def __init__(self, body: ResponsesRequest, model: str, request_id: str | None, strings=None,
                 plan: ToolPlan | None = None):
        self.id = "resp_" + (request_id[:256] if request_id else uuid.uuid4().hex)
        self.item_id = "msg_" + uuid.uuid4().hex
        self.body, self.model, self.created, self.plan = body, model, int(time.time()), plan
        self._seq = 0
        self.strings = strings  # token id -> text, for logprobs

    def response(self, status: str, output: list[dict] | None = None, usage_: dict | None = None,
                 finish_reason: str | None = None) -> dict:
        """The ``response`` object: in progress (no output yet) or finished with its output items."""
        b = self.body
        incomplete = {"reason": "max_output_tokens"} if finish_reason == "length" else None
        plan = self.plan
        return {"id": self.id, "object": "response", "created_at": self.created, "model": self.model,
                "status": status, "output": output or [], "error": None, "incomplete_details": incomplete,
                "instructions": b.instructions, "max_output_tokens": b.max_output_tokens,
                "temperature": b.temperature, "top_p": b.top_p,
                "parallel_tool_calls": bool(plan and plan.parallel), "tool_choice": _tool_choice(b, plan),
                "tools": b.tools or [], "store": False, "previous_response_id": None, "metadata": b.metadata or {},
                "text": {"format": (b.text or {}).get("format") or {"type": "text"}}, "truncation": "disabled",
                "usage": None if usage_ is None else _usage(usage_)}

    def output_items(self, choice, logprobs: list | None) -> list[dict]:
        """The finished answer as output items: one message."""
        return [self._item("completed", choice.text, logprobs)]

    def _item(self, status: str, text: str | None, logprobs: list | None = None) -> dict:
        content = [] if text is None else [_part(text, logprobs)]
        return {"id": self.item_id, "type": "message", "status": status, "role": "assistant", "content": content}

    def _event(self, kind: str, **fields) -> dict:
        return {"type": kind, **fields}

    def head(self) -> list[bytes]:
        return [self.encode(e) for e in self.lifecycle_head() + self.open_message()]

    def lifecycle_head(self) -> list[dict]:
        """response.created and response.in_progress."""
        pending = self.response("in_progress")
        return [self._event("response.created", response=pending),
                self._event("response.in_progress", response=pending)]

    def open_message(self) -> list[dict]:
        """The events that open the message item and its text part (before the first text delta)."""
        return [self._event("response.output_item.added", output_index=0, item=self._item("in_progress", None)),
                self._event("response.content_part.added", item_id=self.item_id, output_index=0, content_index=0,
                            part=_part(""))]

    def chunk(self, index: int, text: str, finish_reason: str | None = None, stop_reason: str | None = None,
              usage_: dict | None = None, logprobs: list | None = None) -> dict | None:
        if not text:
            return None
        return self._event("response.output_text.delta", item_id=self.item_id, output_index=0, content_index=0,
                           delta=text, logprobs=lp.chat_content(logprobs or [], self.strings))

    def role_chunk(self, index: int) -> dict | None:
        return None

    def usage_chunk(self, usage_: dict | None) -> dict:
        return {"id": self.id, "object": "response.denoise", "created_at": self.created, "model": self.model}

    def encode(self, event: dict | list[dict]) -> bytes:
        """One event, or several (a delta that opens an item), numbered in order, as SSE bytes."""
        if isinstance(event, list):
            return b"".join(self.encode(e) for e in event)
        event["sequence_number"] = self._seq
        self._seq += 1
        return streaming.event(event["type"], event)

    def _logprobs(self, choice) -> list:
        return lp.chat_content(lp.pairs(choice.token_ids, choice.logprobs), self.strings)

    def tail(self, choices, usage_: dict, include_usage: bool) -> list[bytes]:
        c = choices[0]
        return [self.encode(e) for e in self.close_message(c, self._logprobs(c)) + [self.finished_event(c, usage_)]]

    def close_message(self, c, lps: list) -> list[dict]:
        """The events that end the message item: text done, part done, item done."""
        ids = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        return [self._event("response.output_text.done", **ids, text=c.text, logprobs=lps),
                self._event("response.content_part.done", **ids, part=_part(c.text, lps)),
                self._event("response.output_item.done", output_index=0, item=self._item("completed", c.text, lps))]

    def finished_event(self, c, usage_: dict) -> dict:
        """response.completed, or response.incomplete when the budget ran out, with the final response."""
        status = "incomplete" if c.finish_reason == "length" else "completed"
        final = self.response(status, self.output_items(c, self._logprobs(c)), usage_, c.finish_reason)
        return self._event(f"response.{status}", response=final)

    def error_events(self, body: dict) -> bytes:
        err = body["error"]
        return self.encode(self._event("error", code=err.get("code"), message=err["message"], param=err.get("param")))

    def final(self, choices, usage_: dict, prefixes: list[str]) -> dict:
        c = choices[0]
        status = "incomplete" if c.finish_reason == "length" else "completed"
        return self.response(status, self.output_items(c, self._logprobs(c)), usage_, c.finish_reason)


def _tool_choice(body: ResponsesRequest, plan: ToolPlan | None):
    """tool_choice as the response echoes it: the request's, or ``auto`` with tools and ``none`` without."""
    if body.tool_choice is not None:
        return body.tool_choice
    return "auto" if plan else "none"


def _part(text: str, logprobs: list | None = None) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def _usage(u: dict) -> dict:
    """Chat-style usage -> the Responses API's (diffusion extras kept)."""
    extra = {k: v for k, v in u.items() if k not in ("prompt_tokens", "completion_tokens", "total_tokens")}
    return {"input_tokens": u["prompt_tokens"], "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": u["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u["total_tokens"], **extra}
