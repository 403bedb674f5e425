"""Seeded synthetic instruction suite with exact-match answers, split into train / held-out.

Tasks (``TASKS``): ``add``, ``sub`` (multi-digit arithmetic), ``reverse`` (a letter string backwards),
``sort`` (numbers ascending), ``upper`` (copy a letter string in capitals), ``lookup_fwd`` /
``lookup_rev`` (country -> capital / capital -> country over ``lexicon.FACTS``), ``couplet_next`` /
``couplet_prev`` (the line after / before over ``lexicon.COUPLETS``). Answers range from 1 token
(``3 + 4``) to more than 40 tokens (``upper`` on 40+ letters).

Splits never share a prompt string:
- generated tasks: an *instance* (the operands, letters or list, whatever the phrasing) is held out iff
  a stable hash of it falls in the held-out bucket, so held-out prompts test the skill, not recall;
- lookups and couplets: each (item, direction) has ``len(templates)`` phrasings; a fixed, item-dependent
  pair of them is held out, the rest are training prompts. Held-out lookups therefore test recall of
  a memorised table under a phrasing never seen with that item (every phrasing is seen with others).
"""
from __future__ import annotations

import dataclasses
import hashlib
import random
import string
from typing import Callable, Iterator

from recipes.lexicon import COUPLETS, FACTS

TASKS = ("add", "sub", "reverse", "sort", "upper", "lookup_fwd", "lookup_rev", "couplet_next", "couplet_prev")
"""Every task name, in report order."""
SPLITS = ("train", "heldout")
HELDOUT_BUCKETS = 5
"""Generated tasks: 1 in HELDOUT_BUCKETS prompts (by hash) is held out."""
HELDOUT_PER_ITEM = 2
"""Table tasks: phrasings per (item, direction) kept out of training."""

DIGITS = 2
"""Operands of add/sub have exactly this many digits (sums have DIGITS or DIGITS+1, differences 1..DIGITS)."""
REVERSE_LEN = (2, 8)
UPPER_LEN = (1, 12)
UPPER_LONG_LEN = (13, 44)
UPPER_LONG_P = 0.25
"""upper: 1-12 letters, or with probability UPPER_LONG_P 13-44 (the long answers, over 40 tokens)."""
SORT_LEN = (2, 7)
SORT_MAX = 9


@dataclasses.dataclass(frozen=True)
class Example:
    task: str
    """One of TASKS."""
    prompt: str
    """The user message."""
    answer: str
    """The exact expected assistant reply (infilling: the middle between the prompt and ``suffix``)."""
    suffix: str = ""
    """Infilling: text after the reply (followed by the end of turn); empty for ordinary answers."""
    system: str | None = None
    """A system message the task needs (the tool list of ``tasks_api``), or None."""


_TEMPLATES = {
    "add": ("What is {a} + {b}?", "Compute {a} + {b}.", "Add {a} and {b}.", "{a} + {b} ="),
    "sub": ("What is {a} - {b}?", "Compute {a} - {b}.", "Subtract {b} from {a}.", "{a} - {b} ="),
    "reverse": ("Reverse the letters: {s}", "Write these letters backwards: {s}", "Reverse: {s}"),
    "upper": ("Write in capitals: {s}", "Repeat in upper case: {s}", "Uppercase: {s}"),
    "sort": ("Sort ascending: {s}", "Sort these numbers from smallest to largest: {s}", "Put in order: {s}"),
    "lookup_fwd": ("What is the capital of {k}?", "Name the capital of {k}.", "Tell me the capital of {k}.",
                   "Which city is the capital of {k}?", "The capital of {k} is what?", "{k} has which capital?",
                   "Capital of {k}?", "In {k}, which city is the capital?"),
    "lookup_rev": ("Which country has the capital {v}?", "{v} is the capital of which country?",
                   "Name the country whose capital is {v}.", "Of which country is {v} the capital?",
                   "Tell me the country with capital {v}.", "Where is {v} the capital?",
                   "Country whose capital is {v}?", "{v} is a capital. Of what country?"),
    "couplet_next": ('What line comes after "{x}"?', 'Continue the poem: "{x}"', 'Give the next line after "{x}".',
                     'Which line follows "{x}"?', 'Complete the couplet that begins "{x}".',
                     'Say the line that comes next: "{x}"', 'Next line after "{x}"?',
                     'In the poem, what follows "{x}"?'),
    "couplet_prev": ('What line comes before "{x}"?', 'Which line precedes "{x}"?',
                     'Give the previous line before "{x}".', 'What is the line just before "{x}"?',
                     'Name the line that comes right before "{x}".', 'Which line is followed by "{x}"?',
                     'Previous line before "{x}"?', 'In the poem, what comes before "{x}"?'),
}


def bucket(text: str) -> int:
    """Stable (process-independent) hash bucket of a task instance."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % HELDOUT_BUCKETS


def _number(rng: random.Random) -> int:
    return rng.randint(10 ** (DIGITS - 1), 10 ** DIGITS - 1)


def _letters(rng: random.Random, lo_hi: tuple[int, int]) -> list[str]:
    return [rng.choice(string.ascii_lowercase) for _ in range(rng.randint(*lo_hi))]


def _gen_add(rng):
    a, b = _number(rng), _number(rng)
    return f"add {a} {b}", rng.choice(_TEMPLATES["add"]).format(a=a, b=b), str(a + b)


def _gen_sub(rng):
    a, b = sorted((_number(rng), _number(rng)), reverse=True)
    return f"sub {a} {b}", rng.choice(_TEMPLATES["sub"]).format(a=a, b=b), str(a - b)


def _gen_reverse(rng):
    s = " ".join(_letters(rng, REVERSE_LEN))
    return f"reverse {s}", rng.choice(_TEMPLATES["reverse"]).format(s=s), s[::-1]


def _gen_upper(rng):
    s = " ".join(_letters(rng, UPPER_LONG_LEN if rng.random() < UPPER_LONG_P else UPPER_LEN))
    return f"upper {s}", rng.choice(_TEMPLATES["upper"]).format(s=s), s.upper()


def _gen_sort(rng):
    xs = " ".join(str(rng.randint(0, SORT_MAX)) for _ in range(rng.randint(*SORT_LEN)))
    ordered = " ".join(map(str, sorted(int(x) for x in xs.split())))
    return f"sort {xs}", rng.choice(_TEMPLATES["sort"]).format(s=xs), ordered


_GENERATED: dict[str, Callable[[random.Random], tuple[str, str, str]]] = {
    "add": _gen_add, "sub": _gen_sub, "reverse": _gen_reverse, "upper": _gen_upper, "sort": _gen_sort}


def _table_items(task: str) -> list[tuple[str, str, str]]:
    """(template key, template value, answer) per item of a table task, in table order."""
    if task == "lookup_fwd":
        return [("k", k, v) for k, v in FACTS]
    if task == "lookup_rev":
        return [("v", v, k) for k, v in FACTS]
    if task == "couplet_next":
        return [("x", a, b) for a, b in COUPLETS]
    if task == "couplet_prev":
        return [("x", b, a) for a, b in COUPLETS]
    raise KeyError(task)


def _heldout_templates(task: str, item: int) -> set[int]:
    """Template indices held out for one (item, direction): a rotating, task-dependent pair."""
    n = len(_TEMPLATES[task])
    start = (item * 3 + TASKS.index(task)) % n
    return {(start + j) % n for j in range(HELDOUT_PER_ITEM)}


def table_pool(task: str, split: str) -> list[Example]:
    """Every prompt of a table task in one split, in a fixed order."""
    out = []
    for i, (slot, key, answer) in enumerate(_table_items(task)):
        held = _heldout_templates(task, i)
        for t, template in enumerate(_TEMPLATES[task]):
            if (t in held) == (split == "heldout"):
                out.append(Example(task, template.format(**{slot: key}), answer))
    return out


def sample(task: str, rng: random.Random, split: str) -> Example:
    """One example of ``task`` from ``split``, drawn with ``rng`` (rejection on the hash bucket)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if task not in _GENERATED:
        return rng.choice(table_pool(task, split))
    while True:
        instance, prompt, answer = _GENERATED[task](rng)
        if (bucket(instance) == 0) == (split == "heldout"):
            return Example(task, prompt, answer)


def heldout_set(n_per_task: int, seed: int = 0, tasks: tuple[str, ...] = TASKS) -> list[Example]:
    """Distinct held-out examples, at most ``n_per_task`` per task (table tasks may have fewer).

    Deterministic in (n_per_task, seed); ordered by task then draw order.
    """
    out = []
    for task in tasks:
        rng = random.Random(f"heldout/{seed}/{task}")
        if task in _GENERATED:
            seen: dict[str, Example] = {}
            for _ in range(50 * n_per_task):
                if len(seen) >= n_per_task:
                    break
                ex = sample(task, rng, "heldout")
                seen.setdefault(ex.prompt, ex)
            out.extend(seen.values())
        else:
            pool = table_pool(task, "heldout")
            out.extend(rng.sample(pool, min(n_per_task, len(pool))))
    return out


def train_stream(seed: int, weights: dict[str, float] | None = None) -> Iterator[Example]:
    """Endless training examples; ``weights`` (task -> relative frequency) default to uniform."""
    rng = random.Random(f"train/{seed}")
    names = list(weights) if weights else list(TASKS)
    w = [weights[t] for t in names] if weights else None
    while True:
        yield sample(rng.choices(names, w)[0], rng, "train")


def normalise(text: str) -> str:
    """Whitespace-normalised reply: stripped, inner runs of whitespace collapsed to one space."""
    return " ".join(text.split())


def check(example: Example, reply: str) -> bool:
    """Exact match of a model reply against the expected answer (after ``normalise``)."""
    return normalise(reply) == example.answer
