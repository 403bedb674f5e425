"""Request bodies of the HTTP API (pydantic; the only module that uses it).

Field names and defaults mirror vLLM's OpenAI server (SERVING.md §1). Unknown fields are accepted and
ignored, as vLLM does; known fields whose semantics a masked diffusion LM cannot honour are rejected with
400 only when they carry a non-default value, so benchmarks that send neutral defaults keep working.
The diffusion settings are top-level fields (the openai SDK sends them through ``extra_body``).
"""
from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from unmask.server.api.errors import bad_request, unsupported

INT64 = 1 << 63
WHY = "A masked diffusion LM commits tokens by its denoising schedule; these controls do not apply."


class OpenAIBase(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class StreamOptions(OpenAIBase):
    include_usage: bool | None = False
    """Send one extra chunk with ``choices: []`` and the aggregate usage before ``[DONE]``."""
    continuous_usage_stats: bool | None = False
    """vLLM extension: running usage on every chunk."""
    denoise: bool | None = False
    """unmask extension: send each step's canvas as ``event: denoise`` SSE events."""


class DiffusionFields(OpenAIBase):
    """The block-diffusion settings (see engine/params.py for their meaning)."""
    steps: int | None = Field(None, ge=1)
    block_length: int | None = Field(None, ge=1)
    threshold: float | None = Field(None, gt=0, le=1)
    factor: float | None = Field(None, gt=0)
    remasking: Literal["low_confidence", "random"] | None = None
    cache: Literal["none", "prefix", "dual"] | None = None
    cfg_scale: float | None = Field(None, ge=0)
    preset: Literal["exact", "fast"] | None = None
    early_stop: bool | None = None
    logits_eos_inf: bool | None = None
    confidence_eos_eot_inf: bool | None = None


class GenerateRequest(DiffusionFields):
    """Fields shared by /v1/completions and /v1/chat/completions."""
    model: str | None = None
    n: int = Field(1, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = Field(None, ge=-INT64, lt=2 * INT64)
    stop: str | list[str] | None = None
    stop_token_ids: list[StrictInt] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    ignore_eos: bool = False
    min_tokens: int = 0
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    repetition_penalty: float | None = None
    length_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    use_beam_search: bool = False
    prompt_logprobs: int | None = None
    guided_json: Any = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    structured_outputs: Any = None
    user: str | None = None
    request_id: str | None = None

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def unsupported_common(self) -> list[str]:
        """Known fields we cannot honour that carry a non-default value."""
        return [name for name, ok in (
            ("frequency_penalty", self.frequency_penalty in (None, 0)),
            ("presence_penalty", self.presence_penalty in (None, 0)),
            ("repetition_penalty", self.repetition_penalty in (None, 1)),
            ("length_penalty", self.length_penalty in (None, 1)),
            ("logit_bias", not self.logit_bias), ("top_p", self.top_p in (None, 1)),
            ("top_k", self.top_k in (None, 0, -1)), ("min_p", self.min_p in (None, 0)),
            ("min_tokens", self.min_tokens == 0), ("use_beam_search", not self.use_beam_search),
            ("prompt_logprobs", self.prompt_logprobs is None), ("stop_token_ids", not self.stop_token_ids),
            ("guided_json", self.guided_json is None), ("guided_regex", self.guided_regex is None),
            ("guided_choice", self.guided_choice is None), ("guided_grammar", self.guided_grammar is None),
            ("structured_outputs", self.structured_outputs is None),
        ) if not ok]

    def check_common(self, bad: list[str], why: str = "") -> None:
        """400 naming every unsupported field (``bad`` + the common ones), then the combination rules."""
        bad = self.unsupported_common() + bad
        if bad:
            raise unsupported(bad, WHY + why)
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options can only be given when stream=true", "stream_options")
        stops = self.stop_list()
        if any(not s for s in stops):
            raise bad_request("stop strings must be non-empty", "stop")
        if len(stops) > 16 or any(len(s) > 1000 for s in stops):
            raise bad_request("at most 16 stop strings of at most 1000 characters each", "stop")


PromptType = Union[str, list[StrictInt], list[str], list[list[StrictInt]]]


class CompletionRequest(GenerateRequest):
    prompt: PromptType
    max_tokens: int | None = Field(None, ge=0)
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def check(self) -> None:
        bad = [name for name, ok in (("logprobs", self.logprobs is None), ("suffix", self.suffix is None),
                                     ("best_of", self.best_of in (None, self.n))) if not ok]
        self.check_common(bad, " (best_of must equal n; infilling via suffix is not offered)")
        if self.max_tokens == 0 and not self.echo:
            raise bad_request("max_tokens must be ≥ 1 (0 is only allowed with echo=true)", "max_tokens")


class ContentPart(OpenAIBase):
    type: str
    text: str | None = None


class ChatMessage(OpenAIBase):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(GenerateRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: str | None = None
    echo: bool = False
    audio: Any = None
    modalities: list[str] | None = None
    prediction: Any = None
    web_search_options: Any = None

    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens`` wins over the deprecated ``max_tokens`` (vLLM)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def check(self) -> None:
        fmt = (self.response_format or {}).get("type", "text")
        bad = [name for name, ok in (
            ("logprobs", not self.logprobs), ("top_logprobs", not self.top_logprobs),
            ("tools", not self.tools or self.tool_choice == "none"),
            ("tool_choice", self.tool_choice in (None, "none") or (self.tool_choice == "auto" and not self.tools)),
            ("functions", not self.functions), ("function_call", self.function_call in (None, "none")),
            ("response_format", fmt == "text"), ("continue_final_message", not self.continue_final_message),
            ("chat_template", self.chat_template is None), ("echo", not self.echo), ("audio", self.audio is None),
            ("modalities", self.modalities in (None, ["text"])), ("prediction", self.prediction is None),
            ("web_search_options", self.web_search_options is None),
        ) if not ok]
        self.check_common(bad, " Tool calls, structured output, logprobs and audio are not offered.")

    def flat_messages(self) -> list[dict[str, str]]:
        """[{role, content: str}] for the chat template: text parts joined by newlines (vLLM); others rejected."""
        return [{"role": "system" if m.role == "developer" else m.role, "content": _text(m, i)}
                for i, m in enumerate(self.messages)]


def _text(message: ChatMessage, i: int) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = []
    for j, part in enumerate(message.content):
        if part.type != "text" or part.text is None:
            raise bad_request(f"content part type {part.type!r} is not supported; only text parts are",
                              f"messages.{i}.content.{j}.type", "unsupported_content")
        texts.append(part.text)
    return "\n".join(texts)


class TokenizeRequest(OpenAIBase):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_generation_prompt: bool = True
    add_special_tokens: bool = True
    return_token_strs: bool = False


class DetokenizeRequest(OpenAIBase):
    model: str | None = None
    tokens: list[StrictInt]
