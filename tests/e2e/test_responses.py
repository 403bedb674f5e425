"""The Responses API through the openai SDK: ``responses.create`` and ``responses.stream`` work and give
chat's text at temperature 0; nothing is stored; unsupported fields are 400s that say why."""
from __future__ import annotations

import openai
import pytest

MSGS = [{"role": "user", "content": "B"}]
FIELDS = {"block_length": 8, "steps": 16}


def _chat(client, messages, max_tokens=16):
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=max_tokens, extra_body=FIELDS)
    return r.choices[0].message.content, r.choices[0].finish_reason


def test_create_equals_chat(client):
    text, reason = _chat(client, MSGS)
    r = client.responses.create(model="tiny", input="B", max_output_tokens=16, extra_body=FIELDS)
    assert r.output_text == text and r.object == "response" and r.id.startswith("resp_")
    assert r.status == ("incomplete" if reason == "length" else "completed")
    assert r.usage.output_tokens > 0 and r.usage.input_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    with_system = [{"role": "system", "content": "S"}, *MSGS]
    r2 = client.responses.create(model="tiny", instructions="S", max_output_tokens=16, extra_body=FIELDS,
                                 input=[{"role": "user", "content": [{"type": "input_text", "text": "B"}]}])
    assert r2.output_text == _chat(client, with_system)[0]


def test_stream_events_and_final_text(client):
    text, _ = _chat(client, MSGS, 24)
    with client.responses.stream(model="tiny", input="B", max_output_tokens=24, extra_body=FIELDS) as stream:
        kinds, deltas = [], []
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        # a budget-limited answer ends with response.incomplete (as OpenAI's API), which carries the response
        final = stream.get_final_response() if kinds[-1] == "response.completed" else event.response
    assert "".join(deltas) == final.output_text == text
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:-1] == ["response.output_text.done", "response.content_part.done", "response.output_item.done"]
    assert kinds[-1] in ("response.completed", "response.incomplete")


def test_nothing_is_stored(client, http):
    with pytest.raises(openai.BadRequestError, match="stores no responses"):
        client.responses.create(model="tiny", input="B", previous_response_id="resp_x")
    r = client.responses.create(model="tiny", input="B", max_output_tokens=4, store=True)
    assert http.get(f"/v1/responses/{r.id}").status_code == 404
    bad = http.post("/v1/responses", json={"input": [{"type": "reasoning", "summary": []}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input.0.type"
    effort = http.post("/v1/responses", json={"input": "B", "reasoning": {"effort": "high"}})
    assert effort.status_code == 400 and effort.json()["error"]["param"] == "reasoning"
