"""Benchmark prompts: the synthetic task suite, random token-length prompts, or a JSONL file.

Every dataset yields :class:`SampleRequest` s. ``prompt_len`` is the client-side token count when a
tokenizer is at hand (None otherwise: the server's ``usage.prompt_tokens`` is used instead). ``answer``
is set for the task suite so the report can also give exact-match accuracy.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import random
import string
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclasses.dataclass
class SampleRequest:
    prompt: str
    """The text sent: the user message (chat) or the raw prompt (completions)."""
    prompt_len: int | None
    """Prompt tokens counted client-side (None without a tokenizer)."""
    output_len: int
    """``max_tokens`` / ``max_completion_tokens`` sent."""
    answer: str | None = None
    """Expected reply (task suite only), checked by exact match after whitespace normalisation."""
    task: str | None = None


class TextTokenizer:
    """A ``tokenizer.json`` (HF ``tokenizers``) used to build random prompts and count tokens."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        path = Path(path)
        self.path = path / "tokenizer.json" if path.is_dir() else path
        self._tok = Tokenizer.from_file(str(self.path))
        special = set(self._tok.get_added_tokens_decoder())
        self.normal_ids = [i for i in range(self._tok.get_vocab_size(with_added_tokens=True)) if i not in special]

    def count(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)


def find_tokenizer(spec: str | None, model: str | None) -> TextTokenizer | None:
    """``spec`` (a tokenizer.json, a checkpoint folder or a built-in model name), else the served model's
    name if it is a local folder or built-in; None when nothing is found (counts then come from the server)."""
    for cand in (spec, model):
        if not cand:
            continue
        for path in (Path(cand).expanduser(), ROOT / "server" / "assets" / cand):
            if path.is_file() or (path / "tokenizer.json").is_file():
                return TextTokenizer(path)
        if cand == spec:
            raise FileNotFoundError(f"--tokenizer {spec!r}: no tokenizer.json there")
    return None


def task_requests(num: int, seed: int, output_len: int, tok: TextTokenizer | None) -> list[SampleRequest]:
    """Held-out prompts of the task suite (``recipes/tasks.py``), all tasks interleaved, ``num`` of them."""
    from recipes.tasks import TASKS, heldout_set

    per_task = max(1, -(-num // len(TASKS)))
    pool = heldout_set(per_task, seed)
    random.Random(seed).shuffle(pool)
    out = [SampleRequest(ex.prompt, tok.count(ex.prompt) if tok else None, output_len, ex.answer, ex.task)
           for ex in pool]
    return list(itertools.islice(itertools.cycle(out), num))


def random_requests(num: int, input_len: int, output_len: int, range_ratio: float, seed: int,
                    tok: TextTokenizer | None) -> list[SampleRequest]:
    """vLLM's random dataset: lengths uniform in [L(1-r), L(1+r)], prompts decoded from random token ids
    (random letter words when there is no tokenizer: then the server counts the tokens)."""
    if not 0 <= range_ratio < 1:
        raise ValueError("--random-range-ratio must be in [0, 1)")
    rng = random.Random(seed)

    def length(n: int) -> int:
        return max(1, rng.randint(int(n * (1 - range_ratio)), int(n * (1 + range_ratio))))

    out = []
    for _ in range(num):
        n_in, n_out = length(input_len), length(output_len)
        if tok is not None:
            prompt = tok.decode([rng.choice(tok.normal_ids) for _ in range(n_in)])
            out.append(SampleRequest(prompt, tok.count(prompt), n_out))
        else:
            words = ("".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 7))) for _ in range(n_in))
            out.append(SampleRequest(" ".join(words), None, n_out))
    return out


def jsonl_requests(path: str | Path, num: int, output_len: int, seed: int,
                   tok: TextTokenizer | None) -> list[SampleRequest]:
    """One JSON object per line: ``prompt`` (or ``text``, or ``messages`` whose last user turn is used),
    optional ``output_len``/``max_tokens`` and ``answer``. Shuffled with ``seed``, cycled up to ``num``."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        prompt = row.get("prompt", row.get("text"))
        if prompt is None and row.get("messages"):
            prompt = [m["content"] for m in row["messages"] if m.get("role") == "user"][-1]
        if not isinstance(prompt, str):
            raise ValueError(f"{path}:{n}: needs a string 'prompt', 'text' or user 'messages'")
        olen = int(row.get("output_len", row.get("max_tokens", output_len)))
        rows.append(SampleRequest(prompt, tok.count(prompt) if tok else None, olen, row.get("answer")))
    if not rows:
        raise ValueError(f"{path}: no requests")
    random.Random(seed).shuffle(rows)
    return list(itertools.islice(itertools.cycle(rows), num))
