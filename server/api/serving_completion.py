"""/v1/completions: the body's prompts -> a :class:`Prepared` request, and the completion wire shapes
(SERVING.md §2, vLLM 0.11 / OpenAI; plain dicts, no pydantic on the hot path)."""
from __future__ import annotations

import time
import uuid

from unmask.server.api import logprobs, streaming
from unmask.server.api.errors import APIError, bad_request
from unmask.server.api.protocol import CompletionRequest, GenerateRequest
from unmask.server.api.serving import Prepared, StreamFlags
from unmask.server.engine.client import RequestRejected
from unmask.server.engine.budget import DEFAULT_BLOCK_LENGTH, round_up
from unmask.server.engine.params import DiffusionParams


class CompletionShape:
    """``chunk()`` for a stream delta, ``role_chunk()`` (None here; chat's first chunk), ``usage_chunk()`` for
    the ``choices: []`` usage chunk and ``final()`` for a non-streaming answer."""

    def __init__(self, response_id: str, created: int, model: str, strings=None):
        self.id, self.created, self.model = response_id, created, model
        self.strings = strings  # token id -> its text (streaming.TokenStrings), for logprobs
        self._offsets: dict[int, int] = {}  # choice -> text offset of its next token (completions logprobs)

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def chunk(self, index: int, text: str, finish_reason: str | None = None, stop_reason: str | None = None,
              usage_: dict | None = None, logprobs: list | None = None) -> dict:
        """``logprobs``: (token id, entry) of the tokens this chunk carries (None: not asked for)."""
        choice = {"index": index, "text": text, "logprobs": self._logprobs(index, logprobs),
                  "finish_reason": finish_reason, "stop_reason": stop_reason}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage_}

    def _logprobs(self, index: int, entries: list | None) -> dict | None:
        if entries is None:
            return None
        out = logprobs.completion(entries, self.strings, self._offsets.get(index, 0))
        self._offsets[index] = self._offsets.get(index, 0) + sum(len(t) for t in out["tokens"])
        return out

    def role_chunk(self, index: int) -> dict | None:
        return None

    def usage_chunk(self, usage_: dict | None) -> dict:
        return {**self._head("text_completion"), "choices": [], "usage": usage_}

    def head(self) -> list[bytes]:
        return []

    def encode(self, event: dict) -> bytes:
        return streaming.data(event)

    def tail(self, choices, usage_: dict, include_usage: bool) -> list[bytes]:
        """The usage chunk (``choices: []``) if asked, then ``[DONE]``."""
        return ([streaming.data(self.usage_chunk(usage_))] if include_usage else []) + [streaming.DONE]

    def error_events(self, body: dict) -> bytes:
        return streaming.error(body) + streaming.DONE

    def final(self, choices, usage_: dict, prefixes: list[str]) -> dict:
        """``prefixes[i]``: the echoed prompt text of choice i ('' without echo)."""
        out = [{"index": i, "text": p + c.text, "logprobs": _final_logprobs(c, self.strings, len(p)),
                "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}
               for i, (c, p) in enumerate(zip(choices, prefixes))]
        return {**self._head("text_completion"), "choices": out, "usage": usage_, "system_fingerprint": None}


def _final_logprobs(choice, strings, offset: int) -> dict | None:
    lps = getattr(choice, "logprobs", None)
    return None if lps is None else logprobs.completion(logprobs.pairs(choice.token_ids, lps), strings, offset)


def stream_flags(body: GenerateRequest) -> StreamFlags:
    opts = body.stream_options
    return StreamFlags(include_usage=bool(opts and opts.include_usage),
                       continuous_usage=bool(opts and opts.continuous_usage_stats),
                       denoise=bool(opts and opts.denoise))


def response_id(prefix: str, header: str | None) -> str:
    """``cmpl-``/``chatcmpl-`` + the client's X-Request-Id when sent (vLLM), else a fresh uuid."""
    return prefix + (header[:256] if header else uuid.uuid4().hex)


def encode_text(tokenizer, text: str, param: str) -> list[int]:
    """Tokenize client text; text the tokenizer cannot take (lone surrogates) is a 400 naming the field."""
    try:
        return tokenizer.encode(text)
    except Exception:  # noqa: BLE001 - e.g. text that is not valid Unicode
        raise bad_request(f"{param} could not be tokenized: it is not valid Unicode text", param) from None


def default_budget(state, prompt_len: int, want: int, block_length: int | None = None) -> int:
    """A budget the client did not give: ``want``, or less if its canvas would not fit the context next to
    the prompt (then the largest budget whose canvas fits)."""
    want = min(want, state.settings.max_tokens_limit)
    room = state.client.model_info.max_model_len - prompt_len
    block = block_length or state.defaults.values.get("block_length")
    if room <= 0:
        return 1  # the engine's context check then explains that the prompt leaves no room
    if block is None:  # the budget rule's own block, min(32, budget): a budget below 32 is its own canvas
        return want if round_up(want, min(DEFAULT_BLOCK_LENGTH, want)) <= room else (
            room if room < DEFAULT_BLOCK_LENGTH else room // DEFAULT_BLOCK_LENGTH * DEFAULT_BLOCK_LENGTH)
    if round_up(want, block) <= room:
        return want
    return max(1, room // block * block)


def check_text_size(state, num_chars: int, param: str) -> None:
    """Refuse text that cannot fit before tokenizing it (tokenizing megabytes costs seconds): 400 when even
    the fewest tokens it can encode to exceed the prompt limit."""
    limit = state.client.model_info.max_model_len
    if state.settings.max_prompt_tokens is not None:
        limit = min(limit, state.settings.max_prompt_tokens)
    at_least = state.client.tokenizer.min_tokens(num_chars)
    if at_least > limit:
        raise APIError(400, f"the {param} has {num_chars} characters, which is at least {at_least} tokens; this "
                            f"server accepts prompts of at most {limit} tokens", param, "context_length_exceeded")


def _prompts(state, prompt) -> tuple[list[list[int]], list[str | None]]:
    """The four OpenAI prompt shapes -> token id lists (+ original text where given)."""
    tokenizer = state.client.tokenizer
    if isinstance(prompt, str):
        prompt = [prompt]
    elif not prompt:
        raise bad_request("prompt must not be empty", "prompt")
    elif all(isinstance(p, int) for p in prompt):
        return [list(prompt)], [None]
    if all(isinstance(p, str) for p in prompt):
        for p in prompt:
            check_text_size(state, len(p), "prompt")
        return [encode_text(tokenizer, p, "prompt") for p in prompt], list(prompt)
    return [list(p) for p in prompt], [None] * len(prompt)


def prepare_completion(state, body: CompletionRequest, request_id: str | None) -> Prepared:
    """Validate a completions body (400 before any byte) and tokenize its prompts."""
    t0 = time.monotonic()
    body.check()
    state.check_model(body.model)
    client, settings = state.client, state.settings
    prompts, texts = _prompts(state, body.prompt)
    suffix = ()  # infilling: token ids after the generated middle
    if body.suffix:
        check_text_size(state, len(body.suffix), "suffix")
        suffix = tuple(encode_text(client.tokenizer, body.suffix, "suffix"))
    body.check_choices(len(prompts), settings)
    max_tokens = body.max_tokens
    if max_tokens is None:  # the generation default (checkpoint), else OpenAI's 16; capped by the context
        fallback = state.defaults.values.get("max_tokens", settings.completion_default_max_tokens)
        max_tokens = default_budget(state, max(len(p) for p in prompts) + len(suffix), fallback)
    params = body.engine_params(max_tokens, settings, state.defaults.values) if max_tokens > 0 else None
    for ids in prompts:
        check_prompt(state, ids, "prompt")
        if params is None:  # nothing is submitted: the engine's prompt check runs here
            _validate_echo_only(state, ids)
    echo = [(t if t is not None else client.tokenizer.decode(ids)) if body.echo else ""
            for ids, t in zip(prompts, texts)]
    model = body.model or settings.served_model_name
    shape = CompletionShape(response_id("cmpl-", request_id), int(time.time()), model, state.strings)
    return Prepared(shape, prompts, echo, params, body.n, bool(body.stream), stream_flags(body), t0, "prompt",
                    suffix, body.constraint()[1] or "structured_outputs")


def check_prompt(state, ids: list[int], param: str) -> None:
    """The server's own prompt limits (400). The engine checks the rest once, when the request is submitted."""
    s = state.settings
    if not ids:
        raise bad_request(f"{param} is empty after tokenization; give at least one token", param)
    if s.max_prompt_tokens is not None and len(ids) > s.max_prompt_tokens:
        raise APIError(400, f"the prompt has {len(ids)} tokens; this server accepts at most {s.max_prompt_tokens} "
                            f"(--max-prompt-tokens)", param, "context_length_exceeded")


def _validate_echo_only(state, ids: list[int]) -> None:
    try:
        state.client.validate(ids, DiffusionParams(max_tokens=1))
    except RequestRejected as exc:
        raise APIError(400, str(exc), "prompt", exc.code) from None
