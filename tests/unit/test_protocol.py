"""Request bodies (server/api/protocol.py), their validation order and their mapping through the budget rule
to DiffusionParams (``GenerateRequest.engine_params``)."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from unmask.server.api.errors import APIError, validation_error
from unmask.server.api.protocol import ChatCompletionRequest, CompletionRequest
from unmask.server.api.serving_chat import message_text
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


def test_unsupported_fields_all_named_in_reference_order():
    with pytest.raises(APIError) as e:
        chat(prediction={"type": "content"}, audio={"voice": "x"}, functions=[{"name": "f"}],
             use_beam_search=True).check()
    assert e.value.status == 400 and e.value.code == "unsupported_parameter"
    names = ("audio", "functions", "prediction", "use_beam_search")  # the order of OpenAI's chat reference
    positions = [e.value.message.index(name) for name in names]
    assert positions == sorted(positions) and e.value.param == "audio"
    with pytest.raises(APIError) as e:
        comp(best_of=3, length_penalty=0.5).check()
    assert e.value.param == "best_of" and "length_penalty" in e.value.message


@pytest.mark.parametrize("body, param, needle", [
    (dict(prompt_logprobs=1), "prompt_logprobs", "never predicts the prompt"),
    (dict(echo=True, logprobs=1), "logprobs", "never predicts the prompt"),
    (dict(logprobs=6), "logprobs", "[0, 5]"),
])
def test_prompt_logprobs_refused_with_reason(body, param, needle):
    with pytest.raises(APIError) as e:
        comp(**body).check()
    assert e.value.status == 400 and e.value.param == param and needle in e.value.message


def test_chat_top_logprobs_rules():
    chat(logprobs=True, top_logprobs=20).check()
    for body, needle in [(dict(logprobs=True, top_logprobs=21), "[0, 20]"), (dict(top_logprobs=2), "needs logprobs")]:
        with pytest.raises(APIError) as e:
            chat(**body).check()
        assert e.value.param == "top_logprobs" and needle in e.value.message
    assert chat(logprobs=True, top_logprobs=3).engine_params(8, S).logprobs == 3
    assert chat(logprobs=True).engine_params(8, S).logprobs == 0 and chat().engine_params(8, S).logprobs is None


def test_sampling_fields_reach_params():
    p = comp(temperature=0.7, top_p=0.9, top_k=5, min_p=0.1, logit_bias={"5": -3.0}, presence_penalty=0.5,
             frequency_penalty=-0.5, repetition_penalty=1.2, min_tokens=3, stop_token_ids=[7], ignore_eos=True,
             logprobs=2, suffix="xy").engine_params(8, S)
    assert (p.top_p, p.top_k, p.min_p, p.logit_bias, p.presence_penalty, p.frequency_penalty) == (
        0.9, 5, 0.1, ((5, -3.0),), 0.5, -0.5)
    assert (p.repetition_penalty, p.min_tokens, p.stop_token_ids, p.ignore_eos, p.logprobs) == (1.2, 3, (7,), True, 2)
    assert not p.logits_eos_inf  # ignore_eos is its own field (vLLM's meaning), not LLaDA's flag


@pytest.mark.parametrize("body, param", [
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=-2), "top_k"), (dict(min_p=1.5), "min_p"),
    (dict(logit_bias={"x": 1.0}), "logit_bias"), (dict(logit_bias={"5": 101.0}), "logit_bias"),
    (dict(presence_penalty=2.5), "presence_penalty"), (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(min_tokens=9), "min_tokens"), (dict(min_tokens=-1), "min_tokens"),
    (dict(stop_token_ids=[-1]), "stop_token_ids"),
])
def test_sampling_field_errors_name_the_field(body, param):
    with pytest.raises(APIError) as e:
        comp(**body).engine_params(8, S)
    assert e.value.status == 400 and e.value.param == param


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
    assert [message_text(m, i) for i, m in enumerate(req.messages)] == ["S", "a\nb", ""]
    bad = ChatCompletionRequest.model_validate(
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]})
    with pytest.raises(APIError) as e:
        message_text(bad.messages[0], 0)
    assert e.value.param == "messages.0.content.0.type"


def test_max_completion_tokens_wins():
    assert chat(max_tokens=5, max_completion_tokens=3).requested_max_tokens() == 3
    assert chat(max_tokens=5).requested_max_tokens() == 5
    assert chat().requested_max_tokens() is None


@pytest.mark.parametrize("max_tokens,block,canvas,expect_block", [
    (16, None, 16, 16), (13, 8, 16, 8), (40, None, 64, 32), (64, None, 64, 32), (5, None, 5, 5)])
def test_canvas_is_rounded_up_to_blocks(max_tokens, block, canvas, expect_block):
    params = comp(block_length=block).engine_params(max_tokens, S)
    assert params.max_tokens == max_tokens
    assert params.canvas_length == canvas and params.block_length == expect_block


def test_steps_rounded_to_block_multiple():
    params = comp(block_length=8, steps=3).engine_params(16, S)
    assert params.steps == 4 and params.steps_per_block == 2


def test_limits():
    small = ServerSettings(max_tokens_limit=32, max_steps=10)
    with pytest.raises(APIError) as e:
        comp().engine_params(33, small)
    assert e.value.param == "max_tokens"
    with pytest.raises(APIError) as e:
        comp(steps=11).engine_params(8, small)
    assert e.value.param == "steps"


def test_diffusion_errors_become_400_with_param():
    with pytest.raises(APIError) as e:
        comp(threshold=0.5, factor=1.0).engine_params(8, S)
    assert e.value.status == 400 and e.value.param == "threshold"
    with pytest.raises(APIError) as e:
        comp(preset="exact", cache="dual").engine_params(8, S)
    assert e.value.param == "preset"


def test_seeds_and_choices():
    params = comp(seed=-1, temperature=0.7).engine_params(8, S)
    assert params.seed == (1 << 63) - 1 and params.temperature == 0.7
    assert params.for_choice(1).seed == 0 and params.for_choice(0) is params
    assert comp().engine_params(8, S).for_choice(3).seed is None


def test_defaults_apply_to_unset_fields_and_never_mix_commit_rules():
    fast = {"preset": "fast"}
    assert comp().engine_params(8, S, fast).cache == "prefix"
    assert comp(cfg_scale=1.0).engine_params(8, S, fast).cache == "none"
    assert comp(cache="none").engine_params(8, S, fast).is_exact
    assert comp().engine_params(8, S).is_exact
    ckpt = {"block_length": 4, "steps": 4, "threshold": 0.7, "temperature": 0.5}
    p = comp().engine_params(8, S, ckpt)
    assert (p.block_length, p.steps, p.threshold, p.temperature) == (4, 4, 0.7, 0.5)
    q = comp(block_length=8, temperature=0.0, preset="exact").engine_params(8, S, ckpt)
    assert (q.block_length, q.steps, q.temperature, q.threshold, q.is_exact) == (8, 4, 0.0, None, True)


def test_output_fields_reach_params():
    p = comp(stop=["x", "yz"], include_stop_str_in_output=True, skip_special_tokens=False).engine_params(8, S)
    assert p.stop == ("x", "yz") and p.include_stop_str_in_output and not p.skip_special_tokens


def test_validation_error_message_names_fields():
    from fastapi.exceptions import RequestValidationError
    exc = RequestValidationError([{"loc": ("body", "n"), "msg": "must be ≥ 1", "type": "x"}])
    err = validation_error(exc)
    assert err.status == 400 and err.param == "n" and "n: must be ≥ 1" in err.message
