"""Tool calls without a model: validation of tools / tool_choice, the call grammar's schema, parsing a whole
answer, streaming argument deltas from any split of the answer, and the chat shapes under auto and forced."""
from __future__ import annotations

import json
import types

import jsonschema
import pytest

from unmask.server.api import tools
from unmask.server.api.errors import APIError
from unmask.server.api.serving_chat import ToolChatShape

ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
NOTE = {"type": "function", "function": {"name": "note", "description": "keep a note"}}


def plan(tool_choice=None, parallel=None, tool_list=(ADD, NOTE)):
    return tools.tool_plan(types.SimpleNamespace(tools=list(tool_list), tool_choice=tool_choice,
                                                 parallel_tool_calls=parallel))


@pytest.mark.parametrize("tool_list, choice, param", [
    ([{"type": "retrieval"}], None, "tools.0"),
    ([{"type": "function", "function": {"name": ""}}], None, "tools.0.function.name"),
    ([ADD, ADD], None, "tools"),
    ([ADD], "sometimes", "tool_choice"),
    ([ADD], {"type": "function", "function": {"name": "sub"}}, "tool_choice"),
    ([], "required", "tool_choice"),
])
def test_bad_tools_are_400s_naming_the_field(tool_list, choice, param):
    with pytest.raises(APIError) as e:
        plan(choice, tool_list=tool_list)
    assert e.value.status == 400 and e.value.param == param


def test_forced_plans_constrain_to_the_call_schema():
    assert plan().choice == "auto" and not plan().forced and plan("none").choice == "none"
    required = plan("required")
    schema = tools.call_schema(list(required.functions), required.parallel)
    jsonschema.validate([{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "note", "arguments": {}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([], schema)  # at least one call
    named = plan({"type": "function", "function": {"name": "add"}})
    assert named.forced and not named.parallel and json.loads(named.constraint().json) == {
        "type": "object", "properties": {"name": {"const": "add"}, "arguments": ADD["function"]["parameters"]},
        "required": ["name", "arguments"], "additionalProperties": False}
    assert not plan("required", parallel=False).parallel


ANSWER = '[{"name":"add","arguments":{"a":12,"b":30}}, {"name": "note", "arguments": {}}]'


def test_parse_calls_keeps_the_arguments_text_and_refuses_what_is_not_a_call():
    calls = tools.parse_calls(ANSWER, plan())
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [("add", '{"a":12,"b":30}'),
                                                                                   ("note", "{}")]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    for text in ('{"name":"sub","arguments":{}}', '{"name":"add","arguments":3}', '{"name":"add"}', "hello",
                 '{"name":"add","arguments":{},"x":1}', '[]'):
        assert tools.parse_calls(text, plan()) is None, text
    assert tools.parse_calls(ANSWER, plan(parallel=False)) is None  # a list needs parallel_tool_calls


@pytest.mark.parametrize("answer", [ANSWER, '{"name":"note","arguments":{"text":"a } \\" ] , {"}}'])
def test_streamed_deltas_reassemble_the_calls_from_any_split(answer):
    whole = tools.parse_calls(answer, plan())
    for step in (1, 2, 5, 7, len(answer)):
        stream, calls = tools.CallStream(), {}
        for i in range(0, len(answer), step):
            for d in stream.feed(answer[i:i + step]):
                if "id" in d:
                    assert d["index"] == len(calls) and d["function"]["arguments"] == ""
                    calls[d["index"]] = [d["function"]["name"], ""]
                calls[d["index"]][1] += d["function"]["arguments"]
        assert [tuple(c) for c in calls.values()] == [(c["function"]["name"], c["function"]["arguments"])
                                                       for c in whole]


def _shape(p):
    shape = ToolChatShape("chatcmpl-1", 0, "m")
    shape.plan = p
    return shape


def test_auto_holds_a_json_answer_back_and_sends_it_as_calls():
    shape = _shape(plan())
    assert shape.chunk(0, ANSWER[:10]) is None and shape.chunk(0, ANSWER[10:30]) is None
    last = shape.chunk(0, ANSWER[30:], "stop")
    delta = last["choices"][0]["delta"]
    assert last["choices"][0]["finish_reason"] == "tool_calls" and "content" not in delta
    assert [t["function"]["name"] for t in delta["tool_calls"]] == ["add", "note"]


def test_auto_streams_text_answers_as_content():
    shape = _shape(plan())
    assert shape.chunk(0, "") is None
    assert shape.chunk(0, "The sum")["choices"][0]["delta"] == {"content": "The sum"}
    assert shape.chunk(0, " is {42}", "stop")["choices"][0]["finish_reason"] == "stop"
    held = _shape(plan())
    held.chunk(0, '{"not": "a call"')
    out = held.chunk(0, "}", "stop")
    assert out["choices"][0]["delta"] == {"content": '{"not": "a call"}'} and out["choices"][0]["finish_reason"] == "stop"


def test_final_answer_shapes():
    choice = types.SimpleNamespace(text=ANSWER, finish_reason="stop", stop_reason=None, logprobs=None, token_ids=[])
    out = _shape(plan())
    msg = out.final([choice], {}, [""])["choices"][0]
    assert msg["finish_reason"] == "tool_calls" and msg["message"]["content"] is None
    assert len(msg["message"]["tool_calls"]) == 2
    cut = types.SimpleNamespace(**{**vars(choice), "text": ANSWER[:20], "finish_reason": "length"})
    msg = _shape(plan("required")).final([cut], {}, [""])["choices"][0]
    assert msg["finish_reason"] == "length" and msg["message"]["content"] == ANSWER[:20]


def test_history_calls_render_as_the_call_json():
    text, calls = tools.history_calls([{"id": "c1", "type": "function",
                                        "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}], 1)
    assert text == '{"name":"add","arguments":{"a":1,"b":2}}' and calls[0]["function"]["arguments"] == {"a": 1, "b": 2}
    with pytest.raises(APIError) as e:
        tools.history_calls([{"id": "c", "function": {"name": "add", "arguments": "{"}}], 3)
    assert e.value.param == "messages.3.tool_calls.0"


def _responses_shape(tool_choice=None):
    from unmask.server.api.protocol_responses import ResponsesRequest
    from unmask.server.api.responses_tool_shape import ToolResponseShape

    body = ResponsesRequest(input="x", tools=[{"type": "function", **ADD["function"]}], tool_choice=tool_choice)
    return ToolResponseShape(body, "tiny", None, None, body.tool_plan())


def _events(shape, pieces: list[str], finish: str = "stop") -> list[dict]:
    """Stream ``pieces`` through a Responses tool shape -> every event after the head, decoded."""
    raw = b""
    for i, piece in enumerate(pieces):
        out = shape.chunk(0, piece, finish if i == len(pieces) - 1 else None)
        raw += shape.encode(out) if out else b""
    done = types.SimpleNamespace(text="".join(pieces), finish_reason=finish, token_ids=[], logprobs=None)
    raw += b"".join(shape.tail([done], {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}, False))
    return [json.loads(block.split(b"data: ", 1)[1]) for block in raw.split(b"\n\n") if block]


@pytest.mark.parametrize("tool_choice", [None, "required"])
def test_responses_calls_stream_as_function_call_items(tool_choice):
    answer = ['[{"name":"add","argu', 'ments":{"a":1,', '"b":2}}]']
    events = _events(_responses_shape(tool_choice), answer)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.output_item.added" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" not in kinds and "response.content_part.added" not in kinds
    added, final = events[0]["item"], events[-1]["response"]["output"]
    args = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    assert args == '{"a":1,"b":2}' and added["type"] == "function_call" and added["name"] == "add"
    assert final == [{**added, "arguments": args, "status": "completed"}]
    assert [e["sequence_number"] for e in events] == sorted(e["sequence_number"] for e in events)


def test_responses_auto_text_opens_the_message_with_its_first_text():
    events = _events(_responses_shape(), ["The answer", " is 3."])
    kinds = [e["type"] for e in events]
    assert kinds[:3] == ["response.output_item.added", "response.content_part.added", "response.output_text.delta"]
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "The answer is 3."
    held = _events(_responses_shape(), ["{not a call", "}"])  # JSON-looking text that is no call: text at the end
    assert [e["delta"] for e in held if e["type"] == "response.output_text.delta"] == ["{not a call}"]
