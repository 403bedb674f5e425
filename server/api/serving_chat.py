"""/v1/chat/completions: messages rendered with the checkpoint's chat template -> a :class:`Prepared`
request, and the chat wire shapes. :func:`render_messages` is the one message renderer (chat and
``/tokenize`` both use it)."""
from __future__ import annotations

import time

from unmask.server.api import logprobs as lp, tools
from unmask.server.api.errors import bad_request
from unmask.server.api.protocol import ChatCompletionRequest, ChatMessage
from unmask.server.api.serving import Prepared
from unmask.server.api.serving_completion import (CompletionShape, check_prompt, check_text_size, default_budget,
                                                  response_id, stream_flags)
from unmask.server.tokenizer import ChatTemplateError


class ChatShape(CompletionShape):
    """The chat.completion / chat.completion.chunk shapes."""

    def chunk(self, index: int, text: str, finish_reason: str | None = None, stop_reason: str | None = None,
              usage_: dict | None = None, logprobs: list | None = None) -> dict:
        choice = {"index": index, "delta": {"content": text} if text else {},
                  "logprobs": None if logprobs is None else lp.chat(logprobs, self.strings),
                  "finish_reason": finish_reason}
        if finish_reason is not None:
            choice["stop_reason"] = stop_reason
        out = {**self._head("chat.completion.chunk"), "choices": [choice]}
        if usage_ is not None:
            out["usage"] = usage_
        return out

    def role_chunk(self, index: int) -> dict | None:
        choice = {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                  "finish_reason": None}
        return {**self._head("chat.completion.chunk"), "choices": [choice]}

    def usage_chunk(self, usage_: dict | None) -> dict:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage_}

    def final(self, choices, usage_: dict, prefixes: list[str]) -> dict:
        out = [{"index": i,
                "message": {"role": "assistant", "content": c.text, "tool_calls": [], "refusal": None},
                "logprobs": None if c.logprobs is None else lp.chat(lp.pairs(c.token_ids, c.logprobs), self.strings),
                "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}
               for i, c in enumerate(choices)]
        return {**self._head("chat.completion"), "choices": out, "usage": usage_, "system_fingerprint": None}


class ToolChatShape(ChatShape):
    """Chat shapes for a request whose answer may be tool calls (tools.py): a forced call streams as
    ``tool_calls`` deltas from its first complete name on; under ``auto`` an answer that starts like JSON is
    held back until it finishes, then sent as calls if it parses as one, else as text. Finish reason
    ``tool_calls`` when the answer is calls."""
    plan: tools.ToolPlan

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._calls: dict[int, tools.CallStream] = {}  # forced: each choice's calls so far
        self._held: dict[int, str] = {}  # auto: text held back while it may still be a call
        self._mode: dict[int, str] = {}  # auto: "text" once a choice's answer cannot be a call

    def chunk(self, index: int, text: str, finish_reason: str | None = None, stop_reason: str | None = None,
              usage_: dict | None = None, logprobs: list | None = None) -> dict | None:
        if self.plan.forced:
            deltas = self._calls.setdefault(index, tools.CallStream()).feed(text)
            return self._tool_chunk(index, deltas, finish_reason, stop_reason, usage_)
        if self._mode.get(index) == "text":
            return super().chunk(index, text, finish_reason, stop_reason, usage_, logprobs)
        held = self._held.pop(index, "") + text
        head = held.lstrip()[:1]
        if head and head not in "{[":  # not a call: text from here on
            self._mode[index] = "text"
            return super().chunk(index, held, finish_reason, stop_reason, usage_, logprobs)
        if finish_reason is None:
            self._held[index] = held
            return None
        calls = tools.parse_calls(held, self.plan) if finish_reason == "stop" else None
        if calls is None:
            return super().chunk(index, held, finish_reason, stop_reason, usage_, logprobs)
        return self._tool_chunk(index, [{"index": k, **c} for k, c in enumerate(calls)], finish_reason, stop_reason,
                                usage_)

    def _tool_chunk(self, index, deltas, finish_reason, stop_reason, usage_) -> dict | None:
        if not deltas and finish_reason is None:
            return None
        finish = "tool_calls" if finish_reason == "stop" else finish_reason
        out = super().chunk(index, "", finish, stop_reason, usage_)
        if deltas:
            out["choices"][0]["delta"] = {"tool_calls": deltas}
        return out

    def final(self, choices, usage_: dict, prefixes: list[str]) -> dict:
        out = super().final(choices, usage_, prefixes)
        for c, choice in zip(choices, out["choices"]):
            calls = tools.parse_calls(c.text, self.plan) if c.finish_reason == "stop" else None
            if calls is not None:
                choice["message"].update(content=None, tool_calls=calls)
                choice["finish_reason"] = "tool_calls"
        return out


def message_text(message: ChatMessage, i: int) -> str:
    """A message's content as one string: text parts joined by newlines (vLLM). 400 for other part types and
    for missing content (only an assistant turn may omit it)."""
    if message.content is None:
        if message.role != "assistant":
            raise bad_request(f"a {message.role} message needs content", f"messages.{i}.content")
        return ""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for j, part in enumerate(message.content):
        if part.type != "text" or part.text is None:
            raise bad_request(f"content part type {part.type!r} is not supported; only text parts are",
                              f"messages.{i}.content.{j}.type", "unsupported_content")
        texts.append(part.text)
    return "\n".join(texts)


def flat_message(message: ChatMessage, i: int, template: str | None) -> dict:
    """One message as the chat template sees it: role (``developer`` as ``system``), content text, and for tool
    use (tools.py) an assistant's ``tool_calls`` (as the call JSON in its content, unless the template renders
    ``tool_calls``) and a tool message's ``tool_call_id``."""
    out = {"role": "system" if message.role == "developer" else message.role, "content": message_text(message, i)}
    if message.tool_calls:
        text, calls = tools.history_calls(message.tool_calls, i)
        if template and "tool_calls" in template:
            out["tool_calls"] = calls
        else:
            out["content"] = (out["content"] + "\n" if out["content"] else "") + text
    call_id = (message.model_extra or {}).get("tool_call_id")
    if message.role == "tool" and call_id is not None:
        out["tool_call_id"] = call_id
    return out


def render_messages(state, messages: list[ChatMessage], add_generation_prompt: bool,
                    plan: tools.ToolPlan | None = None) -> list[int]:
    """Messages (and the request's tools) -> prompt token ids through the checkpoint's chat template. Text too
    long to fit, template or tokenizer failures are 400s naming ``messages``."""
    tokenizer = state.client.tokenizer
    flat = [flat_message(m, i, tokenizer.chat_template) for i, m in enumerate(messages)]
    if plan is not None:
        flat = tools.with_tools(flat, plan, tokenizer.chat_template)
    check_text_size(state, sum(len(m["content"]) for m in flat), "messages")
    try:
        return tokenizer.encode_chat(flat, add_generation_prompt=add_generation_prompt,
                                     tools=None if plan is None else tools.openai_tools(plan))
    except ChatTemplateError as exc:
        raise bad_request(str(exc), "messages", "chat_template_error") from None
    except Exception:  # noqa: BLE001 - untokenizable text (lone surrogates)
        raise bad_request("messages could not be tokenized: they are not valid Unicode text", "messages") from None


def prepare_chat(state, body: ChatCompletionRequest, request_id: str | None) -> Prepared:
    """Validate a chat body (400 before any byte) and render its messages."""
    t0 = time.monotonic()
    body.check()
    state.check_model(body.model)
    settings = state.settings
    body.check_choices(1, settings)
    plan = body.tool_plan()
    ids = render_messages(state, body.messages, body.add_generation_prompt, plan)
    check_prompt(state, ids, "messages")
    requested = body.requested_max_tokens()
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    if requested is None:  # the generation default (checkpoint), else --default-max-tokens; capped by context
        want = state.defaults.values.get("max_tokens", settings.default_max_tokens)
        requested = default_budget(state, len(ids), want, body.block_length)
    params = body.engine_params(requested, settings, state.defaults.values, param)
    model = body.model or settings.served_model_name
    shape_cls = ChatShape if plan is None or plan.choice == "none" else ToolChatShape
    shape = shape_cls(response_id("chatcmpl-", request_id), int(time.time()), model, state.strings)
    shape.plan = plan
    return Prepared(shape, [ids], [""], params, body.n, bool(body.stream), stream_flags(body), t0, "messages",
                    constraint_param=body.constraint()[1] or "structured_outputs")
