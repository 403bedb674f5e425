"""Turn a validated request body into a Job: tokenized prompts, limits checked, engine params built.

Everything that can make a request invalid is checked here, before the engine sees it and before any
byte of a stream is sent (the same status for streaming and non-streaming requests).
"""
from __future__ import annotations

import dataclasses
import time

from unmask.server.api.errors import APIError, bad_request
from unmask.server.api.protocol import ChatCompletionRequest, CompletionRequest, GenerateRequest
from unmask.server.api.sampling import DEFAULT_BLOCK_LENGTH, Plan, build_plan
from unmask.server.api.shapes import ChatShape, CompletionShape
from unmask.server.api.state import AppState, response_id
from unmask.server.engine.params import DiffusionParams
from unmask.server.engine.sequence import Request
from unmask.server.tokenizer import ChatTemplateError


_PROBE = DiffusionParams(max_tokens=1)  # engine.validate() checks the prompt; the canvas is checked here


@dataclasses.dataclass
class Job:
    shape: CompletionShape
    body: GenerateRequest
    prompts: list[list[int]]
    echo: list[str]
    """Per prompt: the text to prepend to each of its choices ('' without echo)."""
    plan: Plan | None
    """None for echo with max_tokens=0 (nothing to generate)."""
    n: int
    t0: float

    def requests(self, ids: list[str]) -> list[Request]:
        """One engine Request per choice: prompt p, sample i -> choice p * n + i."""
        denoise = bool(self.body.stream and self.body.stream_options and self.body.stream_options.denoise)
        return [Request(ids[p * self.n + i], tuple(ids_), self.plan.for_choice(i), stream_canvas=denoise)
                for p, ids_ in enumerate(self.prompts) for i in range(self.n)]


def _encode(state: AppState, text: str, param: str) -> list[int]:
    try:
        return state.tokenizer.encode(text)
    except Exception as exc:  # noqa: BLE001 - e.g. text that is not valid Unicode (lone surrogates)
        raise bad_request(f"{param} could not be tokenized: {type(exc).__name__}", param) from None


def _prompts(state: AppState, prompt) -> tuple[list[list[int]], list[str | None]]:
    """The four OpenAI prompt shapes -> token id lists (+ original text where given)."""
    if isinstance(prompt, str):
        return [_encode(state, prompt, "prompt")], [prompt]
    if not prompt:
        raise bad_request("prompt must not be empty", "prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)], [None]
    if all(isinstance(p, str) for p in prompt):
        return [_encode(state, p, "prompt") for p in prompt], list(prompt)
    return [list(p) for p in prompt], [None] * len(prompt)


def _check_prompt(state: AppState, ids: list[int], canvas: int, param: str) -> None:
    s, limit = state.settings, state.max_model_len
    if not ids:
        raise bad_request(f"{param} is empty after tokenization; give at least one token", param)
    if s.max_prompt_tokens is not None and len(ids) > s.max_prompt_tokens:
        raise APIError(400, f"the prompt has {len(ids)} tokens; this server accepts at most {s.max_prompt_tokens} "
                            f"(--max-prompt-tokens)", param, "context_length_exceeded")
    if len(ids) + canvas > limit:
        raise APIError(400, f"This model's maximum context length is {limit} tokens. However, your request has "
                            f"{len(ids)} input tokens and a generation canvas of {canvas} tokens (max_tokens rounded "
                            f"up to a multiple of block_length). Please reduce the length of the input or of "
                            f"max_tokens.", param, "context_length_exceeded")
    try:
        state.engine.engine.validate(Request("check", tuple(ids), _PROBE))
    except ValueError as exc:
        raise bad_request(str(exc), param, "invalid_prompt") from None


def _check_choices(state: AppState, num_prompts: int, n: int) -> None:
    if num_prompts * n > state.settings.max_choices:
        raise bad_request(f"{num_prompts} prompt(s) × n={n} = {num_prompts * n} choices; this server allows at most "
                          f"{state.settings.max_choices} per request (--max-choices)", "n")


def completion_job(state: AppState, body: CompletionRequest, request_id: str | None) -> Job:
    t0 = time.monotonic()
    body.check()
    state.check_model(body.model)
    prompts, texts = _prompts(state, body.prompt)
    _check_choices(state, len(prompts), body.n)
    max_tokens = state.settings.completion_default_max_tokens if body.max_tokens is None else body.max_tokens
    plan = build_plan(body, max_tokens, state.settings) if max_tokens > 0 else None
    canvas = plan.params.max_tokens if plan else 0
    for ids in prompts:
        _check_prompt(state, ids, canvas, "prompt")
    echo = [(t if t is not None else state.tokenizer.decode(ids)) if body.echo else ""
            for ids, t in zip(prompts, texts)]
    shape = CompletionShape(response_id("cmpl-", request_id), int(time.time()), _model_name(state, body))
    return Job(shape, body, prompts, echo, plan, body.n, t0)


def chat_job(state: AppState, body: ChatCompletionRequest, request_id: str | None) -> Job:
    t0 = time.monotonic()
    body.check()
    state.check_model(body.model)
    _check_choices(state, 1, body.n)
    messages = body.flat_messages()
    try:
        ids = state.tokenizer.encode_chat(messages, add_generation_prompt=body.add_generation_prompt)
    except ChatTemplateError as exc:
        raise bad_request(str(exc), "messages", "chat_template_error") from None
    except Exception as exc:  # noqa: BLE001 - untokenizable text
        raise bad_request(f"messages could not be tokenized: {type(exc).__name__}", "messages") from None
    requested = body.requested_max_tokens()
    param = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    if requested is None:
        requested = _default_chat_tokens(state, body, len(ids))
    plan = build_plan(body, requested, state.settings, param)
    _check_prompt(state, ids, plan.params.max_tokens, "messages")
    shape = ChatShape(response_id("chatcmpl-", request_id), int(time.time()), _model_name(state, body))
    return Job(shape, body, [ids], [""], plan, body.n, t0)


def _default_chat_tokens(state: AppState, body: ChatCompletionRequest, prompt_len: int) -> int:
    """No budget given: the server default, shrunk so the canvas (a block multiple) fits the context."""
    s = state.settings
    want = min(s.default_max_tokens, s.max_tokens_limit, state.max_model_len - prompt_len)
    if want <= 0:
        return 1  # the context check then explains that the prompt leaves no room
    if body.block_length is None:  # short budgets become one block of their own length
        return want if want < DEFAULT_BLOCK_LENGTH else want // DEFAULT_BLOCK_LENGTH * DEFAULT_BLOCK_LENGTH
    return max(1, want // body.block_length * body.block_length)


def _model_name(state: AppState, body: GenerateRequest) -> str:
    return body.model or state.settings.served_model_name
