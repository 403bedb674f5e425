"""Tasks for what clients ask of a served model beyond plain answers: infilling, JSON answers, tool calls.

Each builds on the core suite (``recipes/tasks.py``) and inherits its train / held-out split: a held-out
example here wraps a held-out core example (or, for the tool questions, a held-out (tool, argument, phrasing)
instance), so held-out prompts stay unseen in training.

- ``infill``: a core task's prompt with the answer's tail given as the suffix (``Example.suffix``, followed by
  the end-of-turn token); the reply is the middle, the answer's head. The canvas is prompt + middle + EOS
  padding + suffix, exactly what the engine builds for ``suffix=`` (prompt + ``max_tokens`` masks + suffix).
  The answer is cut between two words or two digits (where the tokenizer splits anyway); with probability
  ``INFILL_WHOLE_P`` the suffix is the end of turn alone and the middle is the whole answer.
- ``json``: a core arithmetic or lookup prompt plus a request for JSON; the reply is ``{"answer":<value>}``
  (compact separators, an integer for arithmetic, a string otherwise). ``json_schema`` gives its schema.
- ``tool_call``: a question only a tool can answer (weather, time, population of an invented place), asked with
  a tool list in the system message, rendered exactly as the server renders ``tools`` for a template that does
  not use them (``unmask.server.api.tools.system_text``); the reply is the call ``{"name":..,"arguments":{..}}``.
- ``tool_plain``: a core question asked with tools shown; the reply is the plain answer (``tool_choice: auto``
  must not call a tool when none is needed).
"""
from __future__ import annotations

import dataclasses
import json
import random

from recipes import tasks
from recipes.lexicon import FACTS
from recipes.tasks import Example

API_TASKS = ("infill", "json", "tool_call", "tool_plain")
"""The tasks of this module, in report order."""
ALL_TASKS = tasks.TASKS + API_TASKS
INFILL_WHOLE_P = 0.15
JSON_SOURCES = ("add", "sub", "lookup_fwd", "lookup_rev")
JSON_ASKS = ("Answer in JSON.", "Reply with a JSON object.", "Give the answer as JSON.")
TOOLS = {
    "get_weather": ("city", ("What is the weather in {v}?", "Is it raining in {v}?", "Weather forecast for {v}?",
                             "How warm is it in {v} today?")),
    "get_time": ("city", ("What time is it in {v}?", "Current time in {v}?", "Tell me the local time in {v}.",
                          "What is the time now in {v}?")),
    "get_population": ("country", ("How many people live in {v}?", "What is the population of {v}?",
                                   "Population of {v}?", "How big is the population of {v}?")),
}
"""Tool name -> (its one string parameter, the questions that need it); cities are capitals, countries come from
``lexicon.FACTS``."""


def tool_function(name: str) -> dict:
    """The OpenAI ``function`` object of one of TOOLS (no description: the system message stays short)."""
    param = TOOLS[name][0]
    return {"name": name, "parameters": {"type": "object", "properties": {param: {"type": "string"}},
                                         "required": [param]}}


def tools_system_text(names: list[str]) -> str:
    """The system message the server renders for these tools (parallel tool calls allowed, OpenAI's default)."""
    from unmask.server.api.tools import ToolPlan, system_text

    return system_text(ToolPlan(tuple(tool_function(n) for n in names), "auto", None, True))


def shown_tools(ex: Example) -> list[str]:
    """Names of the tools a ``tool_call`` / ``tool_plain`` example's system message lists, in order ([] otherwise)."""
    return [json.loads(line)["name"] for line in (ex.system or "").splitlines() if line.startswith("{")]


def json_schema(ex: Example) -> dict:
    """The JSON schema a ``json`` example's reply satisfies (``answer``: integer for arithmetic, else string)."""
    kind = "integer" if isinstance(json.loads(ex.answer)["answer"], int) else "string"
    return {"type": "object", "properties": {"answer": {"type": kind}}, "required": ["answer"],
            "additionalProperties": False}


def _split_points(answer: str) -> list[int]:
    """Character offsets where the answer may be cut: before a space, or between two digits."""
    return [i for i in range(1, len(answer)) if answer[i] == " " and answer[i - 1] != " "
            or answer[i].isdigit() and answer[i - 1].isdigit()]


def _infill(rng: random.Random, split: str) -> Example:
    while True:
        core = tasks.sample(rng.choice(tasks.TASKS), rng, split)
        cuts = _split_points(core.answer)
        if rng.random() < INFILL_WHOLE_P:
            return Example("infill", core.prompt, core.answer, suffix="")
        if cuts:
            cut = rng.choice(cuts)
            return Example("infill", core.prompt, core.answer[:cut], suffix=core.answer[cut:])


def _json(rng: random.Random, split: str) -> Example:
    core = tasks.sample(rng.choice(JSON_SOURCES), rng, split)
    value = int(core.answer) if core.task in ("add", "sub") else core.answer
    return Example("json", f"{core.prompt} {rng.choice(JSON_ASKS)}",
                   json.dumps({"answer": value}, separators=(",", ":")))


def _tools_shown(rng: random.Random, needed: str | None) -> list[str]:
    """One or two tools in random order, ``needed`` among them (the system message stays under ~300 tokens)."""
    names = [n for n in TOOLS if n != needed]
    shown = rng.sample(names, rng.randint(0, 1) if needed else rng.randint(1, 2))
    if needed:
        shown.insert(rng.randint(0, len(shown)), needed)
    return shown


def _tool_call(rng: random.Random, split: str) -> Example:
    while True:
        name = rng.choice(list(TOOLS))
        param, questions = TOOLS[name]
        country, capital = rng.choice(FACTS)
        value = capital if param == "city" else country
        t = rng.randrange(len(questions))
        if (tasks.bucket(f"tool {name} {value} {t}") == 0) == (split == "heldout"):
            call = {"name": name, "arguments": {param: value}}
            return Example("tool_call", questions[t].format(v=value), json.dumps(call, separators=(",", ":")),
                           system=tools_system_text(_tools_shown(rng, name)))


def _tool_plain(rng: random.Random, split: str) -> Example:
    core = tasks.sample(rng.choice(tasks.TASKS), rng, split)
    return dataclasses.replace(core, task="tool_plain", system=tools_system_text(_tools_shown(rng, None)))


_SAMPLERS = {"infill": _infill, "json": _json, "tool_call": _tool_call, "tool_plain": _tool_plain}


def sample(task: str, rng: random.Random, split: str) -> Example:
    """One example of any task of ALL_TASKS from ``split``."""
    return _SAMPLERS[task](rng, split) if task in _SAMPLERS else tasks.sample(task, rng, split)


def heldout_set(n_per_task: int, seed: int = 0, tasks_wanted: tuple[str, ...] = ALL_TASKS) -> list[Example]:
    """Distinct held-out examples, ``n_per_task`` per task (core tasks as ``tasks.heldout_set``); deterministic."""
    out = tasks.heldout_set(n_per_task, seed, tuple(t for t in tasks_wanted if t in tasks.TASKS))
    for task in (t for t in tasks_wanted if t in _SAMPLERS):
        rng = random.Random(f"heldout/{seed}/{task}")
        seen: dict[tuple, Example] = {}
        for _ in range(50 * n_per_task):
            if len(seen) >= n_per_task:
                break
            ex = sample(task, rng, "heldout")
            seen.setdefault((ex.prompt, ex.suffix, ex.system), ex)
        out.extend(seen.values())
    return out


def check(example: Example, reply: str) -> bool:
    """Exact match: JSON replies (``json``, ``tool_call``) compare as parsed values, the rest as normalised text."""
    if example.task in ("json", "tool_call"):
        try:
            return json.loads(reply) == json.loads(example.answer)
        except ValueError:
            return False
    return tasks.check(example, reply)
