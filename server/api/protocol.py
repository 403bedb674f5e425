"""Request bodies of the HTTP API (pydantic; only here and in protocol_responses.py) and their validation.

Field names and defaults mirror vLLM's OpenAI server (SERVING.md §1). Unknown fields are accepted and
ignored, as vLLM does; known fields whose semantics a masked diffusion LM cannot honour are rejected with
400 only when they carry a non-default value, so benchmarks that send neutral defaults keep working.
The diffusion settings are top-level fields (the openai SDK sends them through ``extra_body``).

Validation happens here, once per request, in the order the fields appear in the OpenAI reference:
``check()`` names every unsupported field (in that order), then :meth:`GenerateRequest.engine_params`
checks the values against the server's limits and maps them through the one budget rule
(``DiffusionParams``) to the engine's settings.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal, Mapping, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from unmask.server.api.errors import bad_request, unsupported
from unmask.server.api.protocol_structured import constraint_with_tools, request_constraint
from unmask.server.api.tools import ToolPlan, tool_plan
from unmask.server.api.settings import ServerSettings
from unmask.server.engine.constraint import StructuredOutputs
from unmask.server.engine.params import DiffusionParams

INT64 = 1 << 63
WHY = "A masked diffusion LM commits tokens by its denoising schedule; these controls do not apply."
NO_PROMPT_LOGPROBS = ("prompt logprobs, which have no meaning for a masked diffusion LM: it never predicts the "
                      "prompt left to right (a prompt token is context), so it has no log-probability")


class OpenAIBase(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class StreamOptions(OpenAIBase):
    include_usage: StrictBool | None = False
    """Send one extra chunk with ``choices: []`` and the aggregate usage before ``[DONE]``."""
    continuous_usage_stats: StrictBool | None = False
    """vLLM extension: running usage on every chunk."""
    denoise: StrictBool | None = False
    """unmask extension: send each step's canvas as ``event: denoise`` SSE events."""


class DiffusionFields(OpenAIBase):
    """The block-diffusion settings (see engine/params.py for their meaning)."""
    steps: StrictInt | None = Field(None, ge=1)
    block_length: StrictInt | None = Field(None, ge=1)
    threshold: StrictFloat | None = Field(None, gt=0, le=1)
    factor: StrictFloat | None = Field(None, gt=0)
    remasking: Literal["low_confidence", "random"] | None = None
    cache: Literal["none", "prefix", "dual"] | None = None
    cfg_scale: StrictFloat | None = Field(None, ge=0)
    preset: Literal["exact", "fast"] | None = None
    early_stop: StrictBool | None = None
    logits_eos_inf: StrictBool | None = None
    confidence_eos_eot_inf: StrictBool | None = None
    editing_threshold: StrictFloat | None = Field(None, gt=0, le=1)
    """LLaDA2.1 models: token editing (engine/params.py)."""
    max_post_steps: StrictInt | None = Field(None, ge=0)
    alg: Literal["maskgit_plus", "topk_margin", "entropy"] | None = None
    """Dream models: Dream's own diffusion_generate rule (engine/params.py)."""


class GenerateRequest(DiffusionFields):
    """Fields shared by /v1/completions and /v1/chat/completions."""
    model: StrictStr | None = None
    n: StrictInt = Field(1, ge=1)
    temperature: StrictFloat | None = Field(None, ge=0)
    top_p: StrictFloat | None = None
    top_k: StrictInt | None = None
    min_p: StrictFloat | None = None
    seed: StrictInt | None = Field(None, ge=-INT64, lt=2 * INT64)
    stop: StrictStr | list[StrictStr] | None = None
    stop_token_ids: list[StrictInt] | None = None
    include_stop_str_in_output: StrictBool = False
    skip_special_tokens: StrictBool = True
    ignore_eos: StrictBool = False
    min_tokens: StrictInt = 0
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    frequency_penalty: StrictFloat | None = None
    presence_penalty: StrictFloat | None = None
    repetition_penalty: StrictFloat | None = None
    length_penalty: StrictFloat | None = None
    logit_bias: dict[StrictStr, StrictFloat] | None = None
    use_beam_search: StrictBool = False
    prompt_logprobs: StrictInt | None = None
    guided_json: Any = None
    guided_regex: StrictStr | None = None
    guided_choice: list[StrictStr] | None = None
    guided_grammar: StrictStr | None = None
    structured_outputs: Any = None
    user: StrictStr | None = None
    request_id: StrictStr | None = None

    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def unsupported_common(self) -> list[tuple[str, bool]]:
        """(field, acceptable) for the shared fields we cannot honour, in the OpenAI reference's order."""
        return [
            ("length_penalty", self.length_penalty in (None, 1)), ("use_beam_search", not self.use_beam_search),
        ]

    def check_common(self, fields: list[tuple[str, bool]], why: str = "") -> None:
        """400 naming every unsupported field of ``fields`` (already in reference order), then the
        combination rules of the shared fields."""
        if self.prompt_logprobs is not None:
            raise bad_request("prompt_logprobs asks for " + NO_PROMPT_LOGPROBS, "prompt_logprobs",
                              "unsupported_parameter")
        bad = [name for name, ok in fields if not ok]
        if bad:
            raise unsupported(bad, WHY + why)
        stops = self.stop_list()
        if any(not s for s in stops):
            raise bad_request("stop strings must be non-empty", "stop")
        if len(stops) > 16 or any(len(s) > 1000 for s in stops):
            raise bad_request("at most 16 stop strings of at most 1000 characters each", "stop")
        if self.stream_options is not None and not self.stream:
            raise bad_request("stream_options can only be given when stream=true", "stream_options")

    def engine_params(self, max_tokens: int, settings: ServerSettings, defaults: Mapping[str, Any] = (),
                      param: str = "max_tokens") -> DiffusionParams:
        """This request's engine settings for a budget of ``max_tokens`` (already resolved against the
        defaults), its own fields over ``defaults`` (the generation defaults, see server/engine/
        generation_config.py: override > checkpoint > server). 400 naming the field on errors."""
        if max_tokens > settings.max_tokens_limit:
            raise bad_request(f"{param}={max_tokens} exceeds this server's limit of {settings.max_tokens_limit} "
                              f"(--max-tokens-limit)", param)
        if self.block_length is not None and self.block_length > settings.max_tokens_limit:
            raise bad_request(f"block_length={self.block_length} exceeds the generation limit "
                              f"{settings.max_tokens_limit}", "block_length")
        if self.steps is not None and self.steps > settings.max_steps:
            raise bad_request(f"steps={self.steps} exceeds this server's limit of {settings.max_steps} "
                              f"(--max-steps)", "steps")
        fields = {
            "max_tokens": max_tokens, "block_length": self.block_length, "steps": self.steps,
            "temperature": self.temperature, "remasking": self.remasking, "cfg_scale": self.cfg_scale,
            "seed": self.seed, "stop": self.stop_list(), "include_stop_str_in_output": self.include_stop_str_in_output,
            "skip_special_tokens": self.skip_special_tokens, "logits_eos_inf": self.logits_eos_inf,
            "confidence_eos_eot_inf": self.confidence_eos_eot_inf, "threshold": self.threshold, "factor": self.factor,
            "cache": self.cache, "early_stop": self.early_stop, "preset": self.preset, "alg": self.alg,
            "editing_threshold": self.editing_threshold, "max_post_steps": self.max_post_steps,
            **self.sampling_fields(),
            "structured_outputs": self.constraint()[0]}
        try:
            params = DiffusionParams.from_fields(fields, defaults)
        except ValueError as exc:
            raise bad_request(str(exc), _param_of(str(exc))) from None
        if params.steps > settings.max_steps:  # a default block length or step count can still exceed the limit
            raise bad_request(f"steps={params.steps} exceeds this server's limit of {settings.max_steps} "
                              f"(--max-steps)", "steps")
        return params

    def sampling_fields(self) -> dict[str, Any]:
        """The sampling controls as DiffusionParams fields (None = not given). 400 for a non-integer logit_bias key."""
        try:
            bias = tuple((int(k), v) for k, v in self.logit_bias.items()) if self.logit_bias else None
        except ValueError:
            raise bad_request("logit_bias keys must be token ids (integers as strings)", "logit_bias") from None
        return {"top_p": self.top_p, "top_k": self.top_k, "min_p": self.min_p, "logit_bias": bias,
                "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty,
                "repetition_penalty": self.repetition_penalty, "min_tokens": self.min_tokens or None,
                "stop_token_ids": tuple(self.stop_token_ids) if self.stop_token_ids else None,
                "ignore_eos": self.ignore_eos or None, "logprobs": self.logprobs_count()}

    def logprobs_count(self) -> int | None:
        """Top alternatives per output token when logprobs were asked for, else None."""

    def constraint(self) -> tuple[StructuredOutputs | None, str | None]:
        """(structured-output constraint, the field it came from), or (None, None) (protocol_structured.py)."""
        return request_constraint(self)

    def check_choices(self, num_prompts: int, settings: ServerSettings) -> None:
        """400 when prompts × n exceeds --max-choices."""
        if num_prompts * self.n > settings.max_choices:
            raise bad_request(f"{num_prompts} prompt(s) × n={self.n} = {num_prompts * self.n} choices; this server "
                              f"allows at most {settings.max_choices} per request (--max-choices)", "n")


_FIELDS = {f.name for f in dataclasses.fields(DiffusionParams)}


def _param_of(message: str) -> str | None:
    """DiffusionParams messages start with the field at fault (``threshold=2 is not valid``)."""
    m = re.match(r"([a-z_]+)", message)
    return m.group(1) if m and m.group(1) in _FIELDS else None


PromptType = Union[StrictStr, list[StrictInt], list[StrictStr], list[list[StrictInt]]]


class CompletionRequest(GenerateRequest):
    prompt: PromptType
    max_tokens: StrictInt | None = Field(None, ge=0)
    echo: StrictBool = False
    logprobs: StrictInt | None = None
    best_of: StrictInt | None = None
    suffix: StrictStr | None = None
    response_format: dict[StrictStr, Any] | None = None

    def check(self) -> None:
        """400 for fields we cannot honour (OpenAI reference order), then max_tokens=0 without echo, the
        logprobs range, and echo with logprobs (prompt logprobs: no meaning here)."""
        self.check_common([("best_of", self.best_of in (None, self.n)), *self.unsupported_common()],
                          " (best_of must equal n)")
        if self.max_tokens == 0 and not self.echo:
            raise bad_request("max_tokens must be ≥ 1 (0 is only allowed with echo=true)", "max_tokens")
        if self.logprobs is not None and not 0 <= self.logprobs <= 5:
            raise bad_request(f"logprobs={self.logprobs} is not valid; use an integer in [0, 5]", "logprobs")
        if self.logprobs is not None and self.echo:
            raise bad_request("echo with logprobs asks for " + NO_PROMPT_LOGPROBS, "logprobs", "unsupported_parameter")

    def logprobs_count(self) -> int | None:
        return self.logprobs


class ContentPart(OpenAIBase):
    type: StrictStr
    text: StrictStr | None = None


class ChatMessage(OpenAIBase):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = None
    tool_calls: list[Any] | None = None


class ChatCompletionRequest(GenerateRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    logprobs: StrictBool | None = False
    top_logprobs: StrictInt | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: StrictBool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[StrictStr, Any] | None = None
    add_generation_prompt: StrictBool = True
    continue_final_message: StrictBool = False
    chat_template: StrictStr | None = None
    echo: StrictBool = False
    audio: Any = None
    modalities: list[StrictStr] | None = None
    prediction: Any = None
    web_search_options: Any = None

    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens`` wins over the deprecated ``max_tokens`` (vLLM)."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def check(self) -> None:
        """400 for fields we cannot honour, in the OpenAI reference's order."""
        fields = [
            ("audio", self.audio is None), ("function_call", self.function_call in (None, "none")),
            ("functions", not self.functions), ("modalities", self.modalities in (None, ["text"])),
            ("prediction", self.prediction is None),
            ("web_search_options", self.web_search_options is None),
            ("echo", not self.echo), ("continue_final_message", not self.continue_final_message),
            ("chat_template", self.chat_template is None), *self.unsupported_common(),
        ]
        self.check_common(fields, " Audio, predicted outputs, web search and the deprecated functions are not offered.")
        check_top_logprobs(self.top_logprobs, bool(self.logprobs))

    def tool_plan(self) -> ToolPlan | None:
        """The validated tools (tools.py), or None without tools."""
        return tool_plan(self)

    def constraint(self) -> tuple[StructuredOutputs | None, str | None]:
        return constraint_with_tools(self)

    def logprobs_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


def check_top_logprobs(top: int | None, asked: bool, flag: str = "logprobs") -> None:
    """top_logprobs is in [0, 20] and needs logprobs (OpenAI)."""
    if top is not None and not 0 <= top <= 20:
        raise bad_request(f"top_logprobs={top} is not valid; use an integer in [0, 20]", "top_logprobs")
    if top and not asked:
        raise bad_request(f"top_logprobs needs {flag}", "top_logprobs")
