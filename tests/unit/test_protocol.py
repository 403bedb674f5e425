"""Request bodies (server/api/protocol.py) and their mapping to DiffusionParams (server/api/sampling.py)."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from unmask.server.api.errors import APIError, validation_error
from unmask.server.api.protocol import ChatCompletionRequest, CompletionRequest
from unmask.server.api.sampling import build_plan
from unmask.server.api.settings import ServerSettings

S = ServerSettings()


def comp(**kw) -> CompletionRequest:
    return CompletionRequest.model_validate({"prompt": "A", **kw})


def chat(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "A"}], **kw})


@pytest.mark.parametrize("prompt", ["text", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_prompt_shapes(prompt):
    assert comp(prompt=prompt).prompt == prompt


@pytest.mark.parametrize("prompt", [[True, 2], [1.5], [[1], ["a"]], {"a": 1}, 5])
def test_bad_prompt_shapes(prompt):
    with pytest.raises(ValidationError):
        comp(prompt=prompt)


@pytest.mark.parametrize("field,value", [("temperature", float("nan")), ("threshold", float("inf")),
                                         ("n", 0), ("steps", 0), ("seed", 2 ** 64), ("remasking", "x")])
def test_field_validation(field, value):
    with pytest.raises(ValidationError):
        comp(**{field: value})


def test_unsupported_fields_all_named():
    with pytest.raises(APIError) as e:
        chat(logprobs=True, frequency_penalty=0.5, tools=[{"type": "function"}], top_p=0.9).check()
    assert e.value.status == 400 and e.value.code == "unsupported_parameter"
    for name in ("logprobs", "frequency_penalty", "tools", "top_p"):
        assert name in e.value.message


def test_neutral_defaults_pass():
    comp(repetition_penalty=1.0, logprobs=None, best_of=1, top_p=1, top_k=-1, min_p=0, logit_bias={},
         frequency_penalty=0, unknown_field=3).check()
    chat(tool_choice="none", tools=[{"type": "function"}], response_format={"type": "text"}, modalities=["text"],
         logprobs=False, top_logprobs=0).check()


def test_stream_options_need_stream():
    with pytest.raises(APIError) as e:
        comp(stream_options={"include_usage": True}).check()
    assert e.value.param == "stream_options"
    comp(stream=True, stream_options={"include_usage": True, "denoise": True}).check()


def test_max_tokens_zero_needs_echo():
    with pytest.raises(APIError):
        comp(max_tokens=0).check()
    comp(max_tokens=0, echo=True).check()


def test_chat_content_parts_and_roles():
    req = ChatCompletionRequest.model_validate({"messages": [
        {"role": "developer", "content": "S"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": None}]})
    assert req.flat_messages() == [{"role": "system", "content": "S"}, {"role": "user", "content": "a\nb"},
                                   {"role": "assistant", "content": ""}]
    bad = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]})
    with pytest.raises(APIError) as e:
        bad.flat_messages()
    assert e.value.param == "messages.0.content.0.type"


def test_max_completion_tokens_wins():
    assert chat(max_tokens=5, max_completion_tokens=3).requested_max_tokens() == 3
    assert chat(max_tokens=5).requested_max_tokens() == 5
    assert chat().requested_max_tokens() is None


@pytest.mark.parametrize("max_tokens,block,canvas,expect_block", [
    (16, None, 16, 16), (13, 8, 16, 8), (40, None, 64, 32), (64, None, 64, 32), (5, None, 5, 5)])
def test_canvas_is_rounded_up_to_blocks(max_tokens, block, canvas, expect_block):
    plan = build_plan(comp(block_length=block), max_tokens, S)
    assert plan.max_tokens == max_tokens
    assert plan.params.max_tokens == canvas and plan.params.block_length == expect_block


def test_steps_rounded_to_block_multiple():
    plan = build_plan(comp(block_length=8, steps=3), 16, S)
    assert plan.params.steps == 4 and plan.params.steps_per_block == 2


def test_limits():
    small = ServerSettings(max_tokens_limit=32, max_steps=10)
    with pytest.raises(APIError) as e:
        build_plan(comp(), 33, small)
    assert e.value.param == "max_tokens"
    with pytest.raises(APIError) as e:
        build_plan(comp(steps=11), 8, small)
    assert e.value.param == "steps"


def test_diffusion_errors_become_400_with_param():
    with pytest.raises(APIError) as e:
        build_plan(comp(threshold=0.5, factor=1.0), 8, S)
    assert e.value.status == 400 and e.value.param == "threshold"
    with pytest.raises(APIError) as e:
        build_plan(comp(preset="exact", cache="dual"), 8, S)
    assert e.value.param == "preset"


def test_seeds_and_choices():
    plan = build_plan(comp(seed=-1, temperature=0.7), 8, S)
    assert plan.params.seed == (1 << 63) - 1 and plan.params.temperature == 0.7
    assert plan.for_choice(1).seed == 0 and plan.for_choice(0) is plan.params
    assert build_plan(comp(), 8, S).for_choice(3).seed is None


def test_default_preset():
    fast = ServerSettings(default_preset="fast")
    assert build_plan(comp(), 8, fast).params.cache == "prefix"
    assert build_plan(comp(cfg_scale=1.0), 8, fast).params.cache == "none"
    assert build_plan(comp(cache="none"), 8, fast).params.is_exact
    assert build_plan(comp(), 8, S).params.is_exact


def test_ignore_eos_maps_to_eos_logit():
    assert build_plan(comp(ignore_eos=True), 8, S).params.logits_eos_inf


def test_validation_error_message_names_fields():
    from fastapi.exceptions import RequestValidationError
    exc = RequestValidationError([{"loc": ("body", "n"), "msg": "must be ≥ 1", "type": "x"}])
    err = validation_error(exc)
    assert err.status == 400 and err.param == "n" and "n: must be ≥ 1" in err.message
