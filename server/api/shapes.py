"""The JSON shapes of answers and stream chunks, exactly as SERVING.md §2 (vLLM 0.11 / OpenAI).

Plain dicts (no pydantic on the hot path). ``CompletionShape`` and ``ChatShape`` share one interface:
``chunk()`` for a stream delta, ``role_chunk()`` for chat's first chunk (None for completions),
``usage_chunk()`` for the ``choices: []`` usage chunk and ``final()`` for a non-streaming answer.
"""
from __future__ import annotations

from unmask.server.api.choice import ChoiceState


def usage(prompt_tokens: int, completion_tokens: int, extra: dict | None = None) -> dict:
    out = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
           "total_tokens": prompt_tokens + completion_tokens}
    if extra:
        out.update(extra)
    return out


class CompletionShape:
    prefix = "cmpl-"

    def __init__(self, response_id: str, created: int, model: str):
        self.id, self.created, self.model = response_id, created, model

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def chunk(self, index: int, text: str, finish_reason: str | None = None, stop_reason: str | None = None,
              usage_: dict | None = None) -> dict:
        choice = {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason,
                  "stop_reason": stop_reason}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage_}

    def role_chunk(self, index: int) -> dict | None:
        return None

    def usage_chunk(self, usage_: dict) -> dict:
        return {**self._head("text_completion"), "choices": [], "usage": usage_}

    def final(self, choices: list[ChoiceState], usage_: dict, prefixes: list[str]) -> dict:
        """``prefixes[i]``: the echoed prompt text of choice i ('' without echo)."""
        out = [{"index": c.index, "text": p + c.text, "logprobs": None, "finish_reason": c.finish_reason,
                "stop_reason": c.stop_reason} for c, p in zip(choices, prefixes)]
        return {**self._head("text_completion"), "choices": out, "usage": usage_, "system_fingerprint": None}


class ChatShape(CompletionShape):
    prefix = "chatcmpl-"

    def chunk(self, index: int, text: str, finish_reason: str | None = None, stop_reason: str | None = None,
              usage_: dict | None = None) -> dict:
        choice = {"index": index, "delta": {"content": text} if text else {}, "logprobs": None,
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

    def usage_chunk(self, usage_: dict) -> dict:
        return {**self._head("chat.completion.chunk"), "choices": [], "usage": usage_}

    def final(self, choices: list[ChoiceState], usage_: dict, prefixes: list[str]) -> dict:
        out = [{"index": c.index,
                "message": {"role": "assistant", "content": c.text, "tool_calls": [], "refusal": None},
                "logprobs": None, "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}
               for c in choices]
        return {**self._head("chat.completion"), "choices": out, "usage": usage_, "system_fingerprint": None}
