"""/v1/chat/completions: messages rendered with the checkpoint's chat template -> a :class:`Prepared`
request, and the chat wire shapes. :func:`render_messages` is the one message renderer (chat and
``/tokenize`` both use it)."""
from __future__ import annotations

import time

from unmask.server.api import logprobs as lp
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


def message_text(message: ChatMessage, i: int) -> str:
    """A message's content as one string: text parts joined by newlines (vLLM). 400 for other part types,
    for missing content (only an assistant turn may omit it) and for history ``tool_calls`` (which the
    chat templates served here cannot render, so they are refused rather than dropped)."""
    if message.tool_calls:
        raise bad_request("assistant messages with tool_calls cannot be rendered by this model's chat template",
                          f"messages.{i}.tool_calls", "unsupported_content")
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


def render_messages(state, messages: list[ChatMessage], add_generation_prompt: bool) -> list[int]:
    """Messages -> prompt token ids through the checkpoint's chat template (``developer`` is rendered as
    ``system``). Text too long to fit, template or tokenizer failures are 400s naming ``messages``."""
    flat = [{"role": "system" if m.role == "developer" else m.role, "content": message_text(m, i)}
            for i, m in enumerate(messages)]
    check_text_size(state, sum(len(m["content"]) for m in flat), "messages")
    tokenizer = state.client.tokenizer
    try:
        return tokenizer.encode_chat(flat, add_generation_prompt=add_generation_prompt)
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
    ids = render_messages(state, body.messages, body.add_generation_prompt)
    check_prompt(state, ids, "messages")
    requested = body.requested_max_tokens()
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    if requested is None:  # the generation default (checkpoint), else --default-max-tokens; capped by context
        want = state.defaults.values.get("max_tokens", settings.default_max_tokens)
        requested = default_budget(state, len(ids), want, body.block_length)
    params = body.engine_params(requested, settings, state.defaults.values, param)
    model = body.model or settings.served_model_name
    shape = ChatShape(response_id("chatcmpl-", request_id), int(time.time()), model, state.strings)
    return Prepared(shape, [ids], [""], params, body.n, bool(body.stream), stream_flags(body), t0, "messages")
