"""/v1/responses: the Responses API over the chat request path (same message renderer, budget rule,
engine client and deltas), with its own wire shapes: a ``response`` object, and when streaming the event
sequence the openai SDK's ``responses.stream()`` consumes (created, in_progress, output item and content
part added, ``output_text`` deltas, the matching done events, then completed or incomplete)."""
from __future__ import annotations

import time
import uuid

from unmask.server.api import logprobs as lp, streaming
from unmask.server.api.protocol_responses import ResponsesRequest
from unmask.server.api.serving import Prepared, StreamFlags
from unmask.server.api.serving_chat import render_messages
from unmask.server.api.serving_completion import check_prompt, default_budget


class ResponseShape:
    """One response's object and events (``n`` is always 1: choice 0)."""

    def __init__(self, body: ResponsesRequest, model: str, request_id: str | None, strings=None):
        self.id = "resp_" + (request_id[:256] if request_id else uuid.uuid4().hex)
        self.item_id = "msg_" + uuid.uuid4().hex
        self.body, self.model, self.created = body, model, int(time.time())
        self._seq = 0
        self.strings = strings  # token id -> text, for logprobs

    def response(self, status: str, text: str | None = None, usage_: dict | None = None,
                 finish_reason: str | None = None, logprobs: list | None = None) -> dict:
        """The ``response`` object: in progress (no output yet) or finished with its one message."""
        b = self.body
        output = [] if text is None else [self._item("completed", text, logprobs)]
        incomplete = {"reason": "max_output_tokens"} if finish_reason == "length" else None
        return {"id": self.id, "object": "response", "created_at": self.created, "model": self.model,
                "status": status, "output": output, "error": None, "incomplete_details": incomplete,
                "instructions": b.instructions, "max_output_tokens": b.max_output_tokens,
                "temperature": b.temperature, "top_p": b.top_p, "parallel_tool_calls": False, "tool_choice": "none",
                "tools": [], "store": False, "previous_response_id": None, "metadata": b.metadata or {},
                "text": {"format": (b.text or {}).get("format") or {"type": "text"}}, "truncation": "disabled",
                "usage": None if usage_ is None else _usage(usage_)}

    def _item(self, status: str, text: str | None, logprobs: list | None = None) -> dict:
        content = [] if text is None else [_part(text, logprobs)]
        return {"id": self.item_id, "type": "message", "status": status, "role": "assistant", "content": content}

    def _event(self, kind: str, **fields) -> dict:
        return {"type": kind, **fields}

    def head(self) -> list[bytes]:
        pending = self.response("in_progress")
        return [self.encode(e) for e in (
            self._event("response.created", response=pending), self._event("response.in_progress", response=pending),
            self._event("response.output_item.added", output_index=0, item=self._item("in_progress", None)),
            self._event("response.content_part.added", item_id=self.item_id, output_index=0, content_index=0,
                        part=_part("")))]

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

    def encode(self, event: dict) -> bytes:
        event["sequence_number"] = self._seq
        self._seq += 1
        return streaming.event(event["type"], event)

    def _logprobs(self, choice) -> list:
        return lp.chat_content(lp.pairs(choice.token_ids, choice.logprobs), self.strings)

    def tail(self, choices, usage_: dict, include_usage: bool) -> list[bytes]:
        c = choices[0]
        ids = {"item_id": self.item_id, "output_index": 0, "content_index": 0}
        lps = self._logprobs(c)
        final = self.response("incomplete" if c.finish_reason == "length" else "completed", c.text, usage_,
                              c.finish_reason, lps)
        done = "response.incomplete" if c.finish_reason == "length" else "response.completed"
        return [self.encode(e) for e in (
            self._event("response.output_text.done", **ids, text=c.text, logprobs=lps),
            self._event("response.content_part.done", **ids, part=_part(c.text, lps)),
            self._event("response.output_item.done", output_index=0, item=self._item("completed", c.text, lps)),
            self._event(done, response=final))]

    def error_events(self, body: dict) -> bytes:
        err = body["error"]
        return self.encode(self._event("error", code=err.get("code"), message=err["message"], param=err.get("param")))

    def final(self, choices, usage_: dict, prefixes: list[str]) -> dict:
        c = choices[0]
        status = "incomplete" if c.finish_reason == "length" else "completed"
        return self.response(status, c.text, usage_, c.finish_reason, self._logprobs(c))


def _part(text: str, logprobs: list | None = None) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def _usage(u: dict) -> dict:
    """Chat-style usage -> the Responses API's (diffusion extras kept)."""
    extra = {k: v for k, v in u.items() if k not in ("prompt_tokens", "completion_tokens", "total_tokens")}
    return {"input_tokens": u["prompt_tokens"], "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": u["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u["total_tokens"], **extra}


def prepare_responses(state, body: ResponsesRequest, request_id: str | None) -> Prepared:
    """Validate a Responses body (400 before any byte) and render its input as a chat prompt."""
    t0 = time.monotonic()
    body.check()
    state.check_model(body.model)
    settings = state.settings
    ids = render_messages(state, body.messages(), True)
    check_prompt(state, ids, "input")
    budget = body.max_output_tokens
    if budget is None:
        want = state.defaults.values.get("max_tokens", settings.default_max_tokens)
        budget = default_budget(state, len(ids), want, body.block_length)
    params = body.engine_params(budget, settings, state.defaults.values, "max_output_tokens")
    shape = ResponseShape(body, body.model or settings.served_model_name, request_id, state.strings)
    return Prepared(shape, [ids], [""], params, 1, bool(body.stream), StreamFlags(), t0, "input",
                    constraint_param=body.constraint()[1] or "structured_outputs")
