"""The synthetic instruction suite (recipes/tasks.py): disjoint splits, determinism, answers, checker."""
from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from recipes import tasks
from recipes.lexicon import COUPLETS, FACTS


def _instance(ex: tasks.Example) -> str:
    """The task instance behind a prompt: what follows the instruction words (numbers or letters)."""
    words = ex.prompt.replace("?", " ").replace(".", " ").replace("=", " ").replace(":", " ").split()
    return " ".join(w for w in words if w.isdigit() or len(w) == 1)


def test_generated_splits_never_share_a_prompt_or_an_instance():
    rng = random.Random(0)
    for task in ("add", "sub", "reverse", "sort", "upper"):
        train = [tasks.sample(task, rng, "train") for _ in range(3000)]
        held = tasks.heldout_set(200, seed=0, tasks=(task,))
        assert held and not ({e.prompt for e in train} & {e.prompt for e in held}), task
        # held-out instances are unseen in any phrasing (for add/sub the operand order is kept)
        assert not ({_instance(e) for e in train} & {_instance(e) for e in held}), task


@pytest.mark.parametrize("task", ["lookup_fwd", "lookup_rev", "couplet_next", "couplet_prev"])
def test_table_splits_are_disjoint_and_cover_every_item(task):
    train, held = tasks.table_pool(task, "train"), tasks.table_pool(task, "heldout")
    assert not ({e.prompt for e in train} & {e.prompt for e in held})
    items = len(FACTS) if task.startswith("lookup") else len(COUPLETS)
    # every item is asked in training (other phrasings) and in the held-out split
    assert len({e.answer for e in train}) == items == len({e.answer for e in held})


def test_heldout_set_is_deterministic_and_seeded():
    a, b = tasks.heldout_set(20, seed=3), tasks.heldout_set(20, seed=3)
    assert a == b
    assert a != tasks.heldout_set(20, seed=4)
    assert len({(e.task, e.prompt) for e in a}) == len(a)  # no duplicates


def test_train_stream_is_deterministic():
    first = list(itertools.islice(tasks.train_stream(7), 50))
    assert first == list(itertools.islice(tasks.train_stream(7), 50))
    assert {e.task for e in itertools.islice(tasks.train_stream(7), 500)} == set(tasks.TASKS)


def test_answers_are_correct():
    for ex in tasks.heldout_set(30, seed=1):
        p = ex.prompt
        if ex.task in ("add", "sub"):
            nums = [int(x) for x in p.replace("?", " ").replace(".", " ").replace("=", " ").split() if x.isdigit()]
            a, b = nums if ex.task == "add" or not p.startswith("Subtract") else nums[::-1]
            assert int(ex.answer) == (a + b if ex.task == "add" else a - b)
        elif ex.task == "reverse":
            assert ex.answer.split() == p.split(": ", 1)[1].split()[::-1]
        elif ex.task == "upper":
            assert ex.answer == p.split(": ", 1)[1].upper()
        elif ex.task == "sort":
            xs = [int(x) for x in p.split(": ", 1)[1].split()]
            assert [int(x) for x in ex.answer.split()] == sorted(xs)
        elif ex.task == "lookup_fwd":
            assert any(k in p and v == ex.answer for k, v in FACTS)
        elif ex.task == "lookup_rev":
            assert any(v in p and k == ex.answer for k, v in FACTS)
        elif ex.task == "couplet_next":
            assert any(a in p and b == ex.answer for a, b in COUPLETS)
        else:
            assert any(b in p and a == ex.answer for a, b in COUPLETS)


def test_answer_lengths_span_one_to_forty_tokens():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(
        str(Path(__file__).resolve().parents[2] / "server/assets/tiny-llada-instruct/tokenizer.json"))
    lengths = [len(tok.encode(e.answer).ids) for e in tasks.heldout_set(200, seed=0)]
    assert min(lengths) == 1 and max(lengths) >= 40


def test_checker_is_exact_up_to_whitespace():
    ex = tasks.Example("add", "What is 2 + 3?", "5")
    assert tasks.check(ex, "5") and tasks.check(ex, " 5\n")
    assert not tasks.check(ex, "5.") and not tasks.check(ex, "55") and not tasks.check(ex, "")
    ex = tasks.Example("reverse", "Reverse: a b", "b a")
    assert tasks.check(ex, "b  a") and not tasks.check(ex, "ba") and not tasks.check(ex, "B A")


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError):
        tasks.sample("add", random.Random(0), "test")
