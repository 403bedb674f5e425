"""The API-skill tasks (recipes/tasks_api.py) and their training layout: held-out splits inherited from the core
suite, infilling sequences laid out as the engine's infilling canvas, tool lists rendered exactly as the server
renders ``tools``, and zero-weight tasks that leave the core mix's draws unchanged."""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pytest

from recipes import tasks, tasks_api, tokenizer_build
from recipes.sft_data import ChatEncoder, make_batch
from recipes.step_data import TASK_WEIGHTS, step_batch
from unmask.server.api.tools import ToolPlan, with_tools

ASSET = Path(__file__).resolve().parents[2] / "server" / "assets" / "tiny-llada-instruct"


@pytest.fixture(scope="module")
def encoder():
    return ChatEncoder(ASSET, "llada")


@pytest.mark.parametrize("task", tasks_api.API_TASKS)
def test_heldout_prompts_are_never_trained(task):
    rng = random.Random(1)
    train = {(e.prompt, e.suffix, e.answer) for e in (tasks_api.sample(task, rng, "train") for _ in range(3000))}
    held = tasks_api.heldout_set(40, seed=0, tasks_wanted=(task,))
    assert len(held) == 40 and all(e.task == task for e in held)
    assert not train & {(e.prompt, e.suffix, e.answer) for e in held}
    assert tasks_api.heldout_set(40, seed=0, tasks_wanted=(task,)) == held  # deterministic


def test_infill_splits_an_answer_into_middle_and_suffix(encoder):
    rng = random.Random(0)
    exs = [tasks_api.sample("infill", rng, "train") for _ in range(400)]
    split = [e for e in exs if e.suffix]
    assert 0.7 < len(split) / len(exs) < 0.95  # the rest: the suffix is the end of turn alone
    for e in split:
        core = e.answer + e.suffix
        # cut where the tokenizer splits anyway: before a space or between two digits
        assert e.answer and e.suffix and (e.suffix[0] == " " or e.answer[-1].isdigit() and e.suffix[0].isdigit())
        ids = encoder.tok.encode
        assert ids(core).ids == ids(e.answer).ids + ids(e.suffix).ids


def test_json_and_tool_answers_parse_and_satisfy_their_schema():
    import jsonschema

    rng = random.Random(0)
    for _ in range(200):
        e = tasks_api.sample("json", rng, "train")
        jsonschema.validate(json.loads(e.answer), tasks_api.json_schema(e))
        call = tasks_api.sample("tool_call", rng, "train")
        value = json.loads(call.answer)
        assert value["name"] in tasks_api.shown_tools(call) and list(value["arguments"].values())[0] in call.prompt
        jsonschema.validate(value["arguments"], tasks_api.tool_function(value["name"])["parameters"])


def test_tool_list_is_the_servers_rendering():
    plan = ToolPlan((tasks_api.tool_function("get_time"), tasks_api.tool_function("get_weather")), "auto", None, True)
    rendered = with_tools([{"role": "user", "content": "hi"}], plan, template=None)
    assert rendered[0] == {"role": "system", "content": tasks_api.tools_system_text(["get_time", "get_weather"])}


def test_checker_compares_json_as_values():
    e = tasks_api.Example("json", "p", '{"answer":12}')
    assert tasks_api.check(e, '{ "answer": 12 }') and not tasks_api.check(e, '{"answer":"12"}')
    assert not tasks_api.check(e, "12")


def test_infill_sequence_is_prompt_middle_padding_suffix(encoder):
    ex = tasks.Example("infill", "Write in capitals: a b c", "A", suffix=" B C")
    batch = make_batch(encoder, [ex], [6], random.Random(0), 0.0, tokenizer_build.SYSTEM_PROMPTS)
    prompt = encoder.prompt_ids(ex.prompt)
    middle = encoder.tok.encode("A").ids
    suffix = encoder.tok.encode(" B C").ids + [encoder.eot_id]
    assert batch.input_ids.tolist() == prompt + middle + [encoder.eos_id] * (6 - len(middle)) + suffix
    # only the middle (answer + EOS padding, no end of turn) is masked and scored; the suffix is clean context
    assert batch.response.tolist() == [False] * len(prompt) + [True] * 6 + [False] * len(suffix)


def test_tool_examples_keep_their_tool_list_behind_a_random_system_prompt(encoder):
    ex = tasks_api.sample("tool_call", random.Random(3), "train")
    batch = make_batch(encoder, [ex], [encoder.need(ex)], random.Random(0), 1.0, ("Be brief.",))
    text = encoder.tok.decode(batch.input_ids.tolist(), skip_special_tokens=False)
    assert "Be brief.\n\n" + ex.system in text


def test_zero_weight_tasks_leave_the_core_mix_unchanged():
    names = list(TASK_WEIGHTS)
    assert names[:len(tasks.TASKS)] == list(tasks.TASKS) and not any(TASK_WEIGHTS[t] for t in tasks_api.API_TASKS)
    core = [TASK_WEIGHTS[t] for t in tasks.TASKS]
    assert (random.Random(7).choices(names, [TASK_WEIGHTS[t] for t in names], k=2000)
            == random.Random(7).choices(list(tasks.TASKS), core, k=2000))


def test_turned_on_api_tasks_reach_the_batches(encoder):
    args = argparse.Namespace(seed=0, task_weights="infill=1,tool_call=1", batch_size=64, family="llada", resp_len=64,
                              max_resp_len=96, system_prob=0.1, equal_lengths=False, attn_blocks="32")
    batch = step_batch(encoder, args, 7)
    text = encoder.tok.decode(batch.input_ids.tolist(), skip_special_tokens=False)
    assert "You can call these functions" in text and len(batch.seq_lens) == 64
