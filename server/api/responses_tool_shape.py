"""Tool calls on /v1/responses: an answer that is calls (tools.py decides, as on chat) comes back as
``function_call`` output items (``id``, ``call_id``, ``name``, ``arguments``), and streams as the events the
openai SDK accumulates: ``response.output_item.added`` per call, ``response.function_call_arguments.delta`` /
``.done``, ``response.output_item.done``. A forced call (``required`` / named) streams its arguments as they are
committed; under ``auto`` an answer that starts like JSON is held back until it finishes, then sent as calls if it
parses as calls, else as the message text (the message item opens with its first text)."""
from __future__ import annotations

import uuid

from unmask.server.api import tools
from unmask.server.api.responses_shape import ResponseShape


class ToolResponseShape(ResponseShape):
    """ResponseShape for a request with tools (``tool_choice`` other than ``none``)."""
    plan: tools.ToolPlan

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._calls = tools.CallStream()  # the answer's calls so far (forced, or auto once parsed)
        self._item_ids: list[str] = []  # fc_ id of each call announced
        self._held = ""  # auto: text held back while it may still be a call
        self._mode: str | None = None  # "text" or "calls" once decided

    def head(self) -> list[bytes]:
        return [self.encode(e) for e in self.lifecycle_head()]

    def chunk(self, index: int, text: str, finish_reason: str | None = None, stop_reason: str | None = None,
              usage_: dict | None = None, logprobs: list | None = None) -> list[dict] | None:
        if self.plan.forced:
            self._mode = "calls"
            return self._call_events(self._calls.feed(text)) or None
        if self._mode == "text":
            return self._text_events(text, logprobs)
        self._held += text
        head = self._held.lstrip()[:1]
        if head and head not in "{[":  # not a call: text from here on
            self._mode = "text"
            return self._text_events(self._held, logprobs, opening=True)
        if finish_reason is None:
            return None
        if finish_reason == "stop" and tools.parse_calls(self._held, self.plan) is not None:
            self._mode = "calls"
            return self._call_events(self._calls.feed(self._held)) or None
        self._mode = "text"
        return self._text_events(self._held, logprobs, opening=True)

    def _text_events(self, text: str, logprobs: list | None, opening: bool = False) -> list[dict] | None:
        delta = super().chunk(0, text, logprobs=logprobs)
        events = (self.open_message() if opening else []) + ([delta] if delta else [])
        return events or None

    def _call_events(self, deltas: list[dict]) -> list[dict]:
        """CallStream deltas -> output_item.added (a new call) and function_call_arguments.delta events."""
        events = []
        for d in deltas:
            k = d["index"]
            if "id" in d:
                self._item_ids.append("fc_" + uuid.uuid4().hex)
                events.append(self._event("response.output_item.added", output_index=k,
                                          item=self._call_item(k, d["function"]["name"], "", "in_progress")))
            if d["function"].get("arguments"):
                events.append(self._event("response.function_call_arguments.delta", item_id=self._item_ids[k],
                                          output_index=k, delta=d["function"]["arguments"]))
        return events

    def _call_item(self, k: int, name: str, arguments: str, status: str) -> dict:
        return {"id": self._item_ids[k], "type": "function_call", "status": status, "call_id": self._calls.sent[k][0],
                "name": name, "arguments": arguments}

    def _announced(self) -> list[tuple[str, str]]:
        """(name, arguments text) of each call announced so far."""
        return [(p.name, self._calls.text[p.args_start:p.args_end if p.args_end is not None else None])
                for p in tools.scan_calls(self._calls.text)[:len(self._item_ids)]]

    def tail(self, choices, usage_: dict, include_usage: bool) -> list[bytes]:
        c = choices[0]
        if self._mode != "calls":
            opening = self.open_message() if self._mode is None else []
            return [self.encode(e) for e in opening + self.close_message(c, self._logprobs(c))
                    + [self.finished_event(c, usage_)]]
        status = "completed" if c.finish_reason == "stop" else "incomplete"
        events = []
        for k, (name, arguments) in enumerate(self._announced()):
            events += [self._event("response.function_call_arguments.done", item_id=self._item_ids[k], output_index=k,
                                   name=name, arguments=arguments),
                       self._event("response.output_item.done", output_index=k,
                                   item=self._call_item(k, name, arguments, status))]
        return [self.encode(e) for e in events + [self.finished_event(c, usage_)]]

    def output_items(self, choice, logprobs: list | None) -> list[dict]:
        """Calls as function_call items when the answer is calls (streamed: the ids already sent), else the
        message."""
        if self._item_ids:  # streamed: the items the client has seen
            status = "completed" if choice.finish_reason == "stop" else "incomplete"
            return [self._call_item(k, name, arguments, status)
                    for k, (name, arguments) in enumerate(self._announced())]
        calls = tools.parse_calls(choice.text, self.plan) if choice.finish_reason == "stop" else None
        if calls is None:
            return super().output_items(choice, logprobs)
        return [{"id": "fc_" + uuid.uuid4().hex, "type": "function_call", "status": "completed", "call_id": c["id"],
                 "name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in calls]
