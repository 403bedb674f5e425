"""Error answers: OpenAI shape, right status, named parameter, validation before any stream byte, and
no 5xx on odd input. The server must keep answering afterwards."""
from __future__ import annotations

import json

import openai
import pytest

from tests.helpers import MASK_ID

MODEL = "tiny"
CHAT = "/v1/chat/completions"
COMP = "/v1/completions"


def _err(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def _chat(**kw) -> dict:
    return {"messages": [{"role": "user", "content": "HI"}], "max_tokens": 4, **kw}


@pytest.mark.parametrize("field,value", [
    ("functions", [{"name": "f"}]), ("function_call", "auto"), ("audio", {"voice": "x"}),
    ("use_beam_search", True), ("length_penalty", 0.5), ("continue_final_message", True),
])
@pytest.mark.parametrize("stream", [False, True])
def test_unsupported_fields_are_named(http, field, value, stream):
    err = _err(http.post(CHAT, json=_chat(**{field: value}, stream=stream)), 400)
    assert field in err["message"] and err["param"] == field and err["code"] == "unsupported_parameter"


def test_completion_only_unsupported(http):
    for field, value in [("best_of", 3), ("prompt_logprobs", 1)]:
        err = _err(http.post(COMP, json={"prompt": "A", field: value}), 400)
        assert field in err["message"] or "prompt" in err["message"]
    err = _err(http.post(COMP, json={"prompt": "A", "echo": True, "logprobs": 1}), 400)
    assert err["param"] == "logprobs" and "never predicts the prompt" in err["message"]


def test_neutral_defaults_are_accepted(http):
    """What benchmarks send (vllm bench, sglang bench, genai-perf) must not be rejected."""
    body = {"prompt": "A", "max_tokens": 3, "temperature": 0.0, "repetition_penalty": 1.0, "logprobs": None,
            "best_of": 1, "top_p": 1.0, "top_k": -1, "min_p": 0.0, "frequency_penalty": 0, "presence_penalty": 0,
            "ignore_eos": True, "user": "u", "some_unknown_field": {"x": 1}}
    assert http.post(COMP, json=body).status_code == 200
    chat = _chat(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="none",
                 response_format={"type": "text"}, parallel_tool_calls=False, metadata={"a": "b"}, store=False,
                 messages=[{"role": "user", "content": [{"type": "text", "text": "HI"}]}])
    assert http.post(CHAT, json=chat).status_code == 200


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "A"}])
    assert e.value.body["code"] == "model_not_found"


@pytest.mark.parametrize("body,param", [
    ({"prompt": "A", "stream_options": {"include_usage": True}}, "stream_options"),
    ({"prompt": "A", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "A", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "A", "max_tokens": 10 ** 30}, "max_tokens"),
    ({"prompt": "A", "steps": 10 ** 9}, "steps"),
    ({"prompt": "A", "steps": 0}, "steps"),
    ({"prompt": "A", "block_length": 0}, "block_length"),
    ({"prompt": "A", "threshold": 1.5}, "threshold"),
    ({"prompt": "A", "threshold": 0.5, "factor": 1.0}, "threshold"),
    ({"prompt": "A", "preset": "exact", "cache": "prefix"}, None),
    ({"prompt": "A", "cfg_scale": 1.0, "cache": "dual"}, None),
    ({"prompt": "A", "remasking": "sideways"}, "remasking"),
    ({"prompt": "A", "temperature": -1}, "temperature"),
    ({"prompt": "A", "n": 0}, "n"),
    ({"prompt": "A", "n": 1000}, "n"),
    ({"prompt": "A", "seed": 2 ** 70}, "seed"),
    ({"prompt": "A", "stop": [""]}, "stop"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": [True, 1]}, None),
    ({"prompt": [10 ** 6]}, "prompt"),
    ({"prompt": [-1]}, "prompt"),
    ({"prompt": [MASK_ID]}, "prompt"),
    ({"prompt": "A" * 600}, "prompt"),
    ({"prompt": "A", "max_tokens": 500}, "prompt"),
    ({"prompt": {"nested": "dict"}}, None),
    ({}, "prompt"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_completion_requests(http, body, param, stream):
    body = {**body, "stream": stream} if "stream_options" not in body else body
    err = _err(http.post(COMP, json=body), 400)
    if param is not None:
        assert err["param"] is not None and err["param"].split(".")[0] == param, err


@pytest.mark.parametrize("body", [
    {"messages": []}, {"messages": [{"role": "wizard", "content": "A"}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
    {"messages": "HI"}, {"messages": [{"content": "A"}]},
])
def test_bad_chat_requests(http, body):
    _err(http.post(CHAT, json=body), 400)


@pytest.mark.parametrize("raw,ctype", [
    (b"{not json", "application/json"), (b'{"prompt": "A", "max_tokens": NaN}', "application/json"),
    (b'{"prompt": "A", "temperature": Infinity}', "application/json"),
    (b'{"prompt": "A", "temperature": 1e999}', "application/json"),
    (b'{"prompt": "\xff\xfe bad utf8"}', "application/json"), (b"[" * 100000 + b"]" * 100000, "application/json"),
    (b'{"prompt": ' + b"[" * 5000 + b"1" + b"]" * 5000 + b"}", "application/json"),
    (b'{"prompt": "A"}', "text/plain"), (b"", "application/json"), (b"null", "application/json"),
    (b'"just a string"', "application/json"), (b'{"prompt": "\\ud800"}', "application/json"),
])
def test_hostile_bodies_never_5xx(http, raw, ctype):
    r = http.post(COMP, content=raw, headers={"content-type": ctype})
    _err(r, 400)


def test_lone_surrogate_echo_and_model_name(http):
    r = http.post(COMP, content=b'{"model": "\\ud800", "prompt": "A"}', headers={"content-type": "application/json"})
    _err(r, 404)


def test_stream_errors_come_before_the_stream(client):
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="A", stream=True, extra_body={"threshold": 7})


def test_unknown_route_and_method(http):
    _err(http.get("/v1/nothing"), 404)
    _err(http.get(COMP), 405)


def test_server_still_answers(client):
    assert client.completions.create(model=MODEL, prompt="A", max_tokens=2).choices


def test_error_body_is_json_with_param(http):
    r = http.post(COMP, content=json.dumps({"prompt": "A", "top_p": 1.3}), headers={"content-type": "application/json"})
    assert r.headers["content-type"].startswith("application/json")
    assert _err(r, 400)["type"] == "invalid_request_error"
