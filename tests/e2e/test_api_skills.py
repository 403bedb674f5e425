"""The embedded dense model's API skills over HTTP (recipes/tasks_api.py, held-out prompts), as a client uses
them: tool calls under ``tool_choice: auto`` on chat and on the Responses API (a question that needs a tool gets a
call, one that does not gets text), JSON answers under ``response_format``, and infilling through completions'
``suffix``. Floors sit well below the model card's figures."""
from __future__ import annotations

import json

import pytest

from recipes.tasks_api import check, heldout_set, json_schema, shown_tools, tool_function
from tests.e2e.remote import RemoteServer

N = 8
FLOORS = {"tool calls": 0.375, "function_call items": 0.375, "plain answers": 0.625, "free JSON": 0.125,
          "JSON under the schema": 0.125, "infilled middles": 0.375}
"""Fraction of the N held-out prompts per skill answered exactly, about half the model card's figure over 50
prompts (tool calls 72%, plain answers with tools shown 92%, JSON 26% free / 32% under the schema, infill 66%)."""


@pytest.fixture(scope="module")
def srv():
    with RemoteServer("tiny-llada-instruct", ("--max-num-seqs", "32", "--served-model-name", "tiny")) as s:
        yield s


def _tools(ex) -> list[dict]:
    return [{"type": "function", "function": tool_function(n)} for n in shown_tools(ex)]


def _at_least(hits: list[bool], what: str) -> None:
    assert sum(hits) >= FLOORS[what] * len(hits), f"{what}: {sum(hits)}/{len(hits)}"


def test_auto_tool_choice_calls_a_tool_only_when_one_is_needed(srv):
    client = srv.openai()
    calls, plain, items = [], [], []
    for ex in heldout_set(N, seed=11, tasks_wanted=("tool_call",)):
        m = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": ex.prompt}],
                                           tools=_tools(ex), max_tokens=64).choices[0]
        got = m.message.tool_calls or []
        calls.append(m.finish_reason == "tool_calls" and len(got) == 1 and check(ex, json.dumps(
            {"name": got[0].function.name, "arguments": json.loads(got[0].function.arguments)})))
        r = client.responses.create(model="tiny", input=ex.prompt, max_output_tokens=64,
                                    tools=[{"type": "function", **t["function"]} for t in _tools(ex)])
        items.append([o.type for o in r.output] == ["function_call"] and check(ex, json.dumps(
            {"name": r.output[0].name, "arguments": json.loads(r.output[0].arguments)})))
    for ex in heldout_set(N, seed=11, tasks_wanted=("tool_plain",)):
        m = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": ex.prompt}],
                                           tools=_tools(ex), max_tokens=64).choices[0]
        plain.append(not m.message.tool_calls and check(ex, m.message.content or ""))
    _at_least(calls, "tool calls")
    _at_least(items, "function_call items")
    _at_least(plain, "plain answers")


def test_json_answers_free_and_under_the_schema(srv):
    client = srv.openai()
    free, constrained = [], []
    for ex in heldout_set(N, seed=11, tasks_wanted=("json",)):
        ask = [{"role": "user", "content": ex.prompt}]
        free.append(check(ex, client.chat.completions.create(model="tiny", messages=ask, max_tokens=64)
                          .choices[0].message.content or ""))
        fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": json_schema(ex), "strict": True}}
        constrained.append(check(ex, client.chat.completions.create(
            model="tiny", messages=ask, max_tokens=64, response_format=fmt).choices[0].message.content or ""))
    _at_least(free, "free JSON")
    _at_least(constrained, "JSON under the schema")


def test_completions_suffix_fills_the_middle(srv):
    client = srv.openai()
    hits = []
    with srv.http() as h:
        for ex in heldout_set(N, seed=11, tasks_wanted=("infill",)):
            ids = h.post("/tokenize", json={"messages": [{"role": "user", "content": ex.prompt}]}).json()["tokens"]
            r = client.completions.create(model="tiny", prompt=ids, suffix=ex.suffix + "<|eot_id|>", max_tokens=32)
            hits.append(check(ex, r.choices[0].text))
    _at_least(hits, "infilled middles")
