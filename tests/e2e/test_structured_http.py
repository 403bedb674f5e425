"""Structured outputs and tool calls over HTTP, parsed by the openai SDK: the 50 schemas through every field that
carries a JSON schema (response_format, structured_outputs, guided_json), streamed and not, on both presets,
concurrently with unconstrained requests; regex and choice on completions; the Responses API's text.format;
n > 1 with a seed at T > 0; tools with required / named / auto, on chat and on the Responses API (function_call
items, their stream events, history items); 400s that name the field."""
from __future__ import annotations

import asyncio
import json
import re

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.e2e.remote import RemoteServer
from tests.structured_cases import CHOICES, PROMPT, REGEXES, json_schemas, write_random_ckpt

ADD = {"type": "function", "function": {"name": "add", "description": "a + b", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                     "b": {"type": "integer", "minimum": 0, "maximum": 99}},
    "required": ["a", "b"], "additionalProperties": False}}}
CITY = {"type": "function", "function": {"name": "city", "parameters": {
    "type": "object", "properties": {"name": {"type": "string", "pattern": "^[a-z]{1,6}$"}},
    "required": ["name"], "additionalProperties": False}}}
TOOLS = [ADD, CITY]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    ckpt = write_random_ckpt(tmp_path_factory.mktemp("structured_http") / "random")
    with RemoteServer(ckpt, ("--served-model-name", "tiny"),
                      log_path=tmp_path_factory.mktemp("logs") / "server.log") as s:
        yield s


def _schema_body(i: int, schema: dict) -> dict:
    """The schema through one of the three fields that carry one (cycling)."""
    if i % 3 == 0:
        return {"response_format": {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema,
                                                                          "strict": True}}}
    if i % 3 == 1:
        return {"extra_body": {"structured_outputs": {"json": schema}}}
    return {"extra_body": {"guided_json": schema}}


async def _chat(client, stream: bool, max_tokens: int, **kw) -> tuple[str, str]:
    """(text, finish_reason) of one chat request, streamed or not."""
    extra = {**kw.pop("extra_body", {}), "preset": kw.pop("preset")}
    if not stream:
        r = await client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=max_tokens,
                                                 extra_body=extra, **kw)
        return r.choices[0].message.content, r.choices[0].finish_reason
    s = await client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=max_tokens, stream=True,
                                             extra_body=extra, **kw)
    text, finish = "", None
    async for chunk in s:
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    return text, finish


@pytest.mark.parametrize("preset", ["exact", "fast"])
def test_fifty_schemas_streamed_and_not_among_unconstrained_requests(srv, preset):
    schemas = json_schemas()
    steps = (lambda n: {"steps": max(1, n // 4)}) if preset == "exact" else (lambda n: {})

    async def run():
        client = srv.async_openai()
        jobs = [_chat(client, stream, b + 1, preset=preset, **_merge(_schema_body(i, s), steps(b + 1)))
                for stream in (False, True) for i, (s, b) in enumerate(schemas)]
        free = [_chat(client, stream, 16, preset=preset) for stream in (False, True)]
        return await asyncio.gather(*jobs, *free)

    results = asyncio.run(run())
    assert len(results) == 2 * len(schemas) + 2
    for (schema, _), (text, finish) in zip(schemas * 2, results):
        assert finish == "stop", text
        jsonschema.validate(json.loads(text), schema)
    assert results[-1] == results[-2]  # the unconstrained request streamed equals it whole


def _merge(body: dict, extra: dict) -> dict:
    return {**body, "extra_body": {**body.get("extra_body", {}), **extra}}


@pytest.mark.parametrize("stream", [False, True])
def test_regex_and_choice_on_completions(srv, stream):
    client = srv.openai()
    cases = [({"guided_regex": r}, lambda t, r=r: re.fullmatch(r, t)) for r in REGEXES] + \
            [({"structured_outputs": {"choice": list(c)}}, lambda t, c=c: t in c) for c in CHOICES]
    for extra, ok in cases:
        r = client.completions.create(model="tiny", prompt="Answer:", max_tokens=24, stream=stream,
                                      extra_body={**extra, "preset": "fast"})
        chunks = list(r) if stream else [r]
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert ok(text) and chunks[-1].choices[0].finish_reason == "stop", (extra, text)


def test_sdk_parse_with_a_pydantic_model_and_seeded_sampling_with_n(srv):
    class Answer(BaseModel):
        value: int = Field(ge=0, le=999)
        unit: str | None = Field(None, pattern="^[a-z]{1,4}$")

    client = srv.openai()
    r = client.chat.completions.parse(model="tiny", messages=PROMPT, response_format=Answer, max_tokens=40)
    assert r.choices[0].finish_reason == "stop" and isinstance(r.choices[0].message.parsed, Answer)
    kw = dict(model="tiny", messages=PROMPT, response_format=Answer, max_tokens=40, n=3, temperature=0.9, seed=11,
              extra_body={"preset": "fast"})
    first, again = client.chat.completions.parse(**kw), client.chat.completions.parse(**kw)
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert all(isinstance(c.message.parsed, Answer) for c in first.choices)


def test_responses_text_format(srv):
    schema, bound = json_schemas()[3]
    fmt = {"format": {"type": "json_schema", "name": "s", "schema": schema, "strict": True}}
    client = srv.openai()
    r = client.responses.create(model="tiny", input="What is 12 + 30?", text=fmt, max_output_tokens=bound + 1)
    assert r.status == "completed" and r.text.format.type == "json_schema"
    jsonschema.validate(json.loads(r.output_text), schema)
    with client.responses.stream(model="tiny", input="What is 12 + 30?", text=fmt, max_output_tokens=bound + 1) as s:
        final = s.get_final_response()
    jsonschema.validate(json.loads(final.output_text), schema)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "city"}}])
@pytest.mark.parametrize("parallel", [True, False])
def test_forced_tool_calls_parse_and_validate(srv, choice, parallel):
    client = srv.openai()
    kw = dict(model="tiny", messages=PROMPT, tools=TOOLS, tool_choice=choice, parallel_tool_calls=parallel,
              max_tokens=128, extra_body={"preset": "fast"})
    r = client.chat.completions.create(**kw)
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None and c.message.tool_calls
    _check_calls([(t.id, t.function.name, t.function.arguments) for t in c.message.tool_calls], choice, parallel)
    calls: dict[int, list] = {}
    finish = None
    for chunk in client.chat.completions.create(**kw, stream=True):
        for ch in chunk.choices:
            finish = ch.finish_reason or finish
            assert not ch.delta.content
            for d in ch.delta.tool_calls or ():
                if d.id is not None:
                    calls[d.index] = [d.id, d.function.name, ""]
                calls[d.index][2] += d.function.arguments or ""
    assert finish == "tool_calls"
    _check_calls(list(calls.values()), choice, parallel)


def _check_calls(calls: list, choice, parallel: bool) -> None:
    assert calls and (parallel or len(calls) == 1)
    for call_id, name, arguments in calls:
        assert call_id.startswith("call_") and (choice == "required" or name == "city")
        jsonschema.validate(json.loads(arguments), PARAMS[name])


def test_auto_and_none_answer_with_text_and_history_renders(srv):
    client = srv.openai()
    for choice in ("auto", "none"):
        r = client.chat.completions.create(model="tiny", messages=PROMPT, tools=[ADD], tool_choice=choice,
                                           max_tokens=16)
        c = r.choices[0]  # the random model writes no call: its answer comes back as text
        assert c.finish_reason in ("stop", "length") and not c.message.tool_calls and c.message.content is not None
    history = PROMPT + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 12, "b": 30}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"}]
    with srv.http() as h:
        ids = h.post("/tokenize", json={"messages": history}).json()["tokens"]
        text = h.post("/detokenize", json={"tokens": ids}).json()["prompt"]
    assert '{"name":"add","arguments":{"a":12,"b":30}}' in text and "tool\n\n42" in text  # specials skipped
    r = client.chat.completions.create(model="tiny", messages=history, tools=[ADD], max_tokens=8)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


RESPONSES_TOOLS = [{"type": "function", **t["function"]} for t in TOOLS]


@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "city"}])
def test_responses_forced_calls_are_function_call_items_streamed_and_not(srv, choice):
    client = srv.openai()
    kw = dict(model="tiny", input=PROMPT, tools=RESPONSES_TOOLS, tool_choice=choice, max_output_tokens=128,
              extra_body={"preset": "fast"})
    r = client.responses.create(**kw)
    assert r.status == "completed" and r.output and all(o.type == "function_call" for o in r.output)
    _check_calls([(o.call_id, o.name, o.arguments) for o in r.output], choice if choice == "required" else "named",
                 parallel=choice == "required")
    assert r.tool_choice == choice or r.tool_choice.name == "city"
    with client.responses.stream(**kw) as stream:
        kinds, args = [], {}
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.function_call_arguments.delta":
                args[event.output_index] = args.get(event.output_index, "") + event.delta
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "response.output_text.delta" not in kinds and kinds.count("response.output_item.added") == len(final.output)
    assert [o.arguments for o in final.output] == [args[k] for k in range(len(final.output))]
    _check_calls([(o.call_id, o.name, o.arguments) for o in final.output], choice if choice == "required" else "named",
                 parallel=choice == "required")


def test_responses_auto_answers_text_and_renders_call_history_like_chat(srv):
    client = srv.openai()
    r = client.responses.create(model="tiny", input=PROMPT, tools=RESPONSES_TOOLS, max_output_tokens=16)
    chat = client.chat.completions.create(model="tiny", messages=PROMPT, tools=TOOLS, max_tokens=16)
    assert r.output[0].type == "message" and r.output_text == chat.choices[0].message.content
    with client.responses.stream(model="tiny", input=PROMPT, tools=RESPONSES_TOOLS, max_output_tokens=16) as s:
        events = list(s)  # the random model's answer may end by the budget: response.incomplete
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == r.output_text
    assert events[-1].type in ("response.completed", "response.incomplete")
    assert events[-1].response.output[0].content[0].text == r.output_text
    history = [{"type": "function_call", "call_id": "call_1", "name": "add", "arguments": '{"a": 12, "b": 30}'},
               {"type": "function_call_output", "call_id": "call_1", "output": "42"}]
    chat_history = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 12, "b": 30}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"}]
    r = client.responses.create(model="tiny", input=PROMPT + history, tools=RESPONSES_TOOLS, max_output_tokens=8)
    chat = client.chat.completions.create(model="tiny", messages=PROMPT + chat_history, tools=TOOLS, max_tokens=8)
    assert r.usage.input_tokens == chat.usage.prompt_tokens  # the same rendered prompt


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"tools": [{"type": "function", "name": ""}]}, "tools.0.name"),
    ({"tools": RESPONSES_TOOLS, "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
    ({"tools": RESPONSES_TOOLS, "tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"tools": RESPONSES_TOOLS, "tool_choice": "required",
      "text": {"format": {"type": "json_object"}}}, "text.format"),
    ({"input": [{"type": "function_call_output", "output": "1"}]}, "input.0.call_id"),
])
def test_responses_bad_tools_are_400_naming_the_field(srv, body, param):
    with srv.http() as h:
        r = h.post("/v1/responses", json={"input": "hi", "max_output_tokens": 8, **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


@pytest.mark.parametrize("body, param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "blah"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format.json_schema"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"guided_regex": "(ab"}, "guided_regex"),
    ({"guided_choice": ["a"], "structured_outputs": {"regex": "a"}}, "guided_choice"),
    ({"structured_outputs": {"structural_tag": "x"}}, "structured_outputs.structural_tag"),
    ({"tools": [ADD], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [ADD], "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools.0.function.parameters"),
])
def test_bad_constraints_are_400_naming_the_field(srv, body, param):
    with srv.http() as h:
        r = h.post("/v1/chat/completions", json={"messages": PROMPT, "max_tokens": 8, **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_sdk_raises_a_bad_request_error_for_an_invalid_schema(srv):
    with pytest.raises(openai.BadRequestError) as e:
        srv.openai().chat.completions.create(model="tiny", messages=PROMPT, max_tokens=8, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "format": "weird"},
                                                   "strict": True}})
    assert "Unknown format: weird" in e.value.body["message"]
