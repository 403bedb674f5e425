"""Structured-output test cases shared by the engine and HTTP tests: 50 JSON schemas (nested objects, arrays,
enums, bounded numbers, optional fields, anyOf), each with an upper bound on the characters of any compact JSON
value that validates (so a budget above it can never cut an answer short), regex and choice cases, and a tiny
random-weight checkpoint that uses the embedded models' byte-level tokenizer (the random test checkpoints'
character tokenizer has no braces)."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

from benchmarks.reference.checkpoints import dense_config, dense_tensors, save_weights
from unmask.server.assets import __file__ as _assets

ASSETS = Path(_assets).parent
EMBEDDED = ("tiny-llada-instruct", "tiny-llada-moe-instruct")


def write_random_ckpt(path: Path, seed: int = 11) -> Path:
    """A 2-layer random LLaDA checkpoint (float64, context 1024) with tiny-llada-instruct's tokenizer and chat
    template."""
    src = ASSETS / "tiny-llada-instruct"
    src_cfg = json.loads((src / "config.json").read_text())
    path.mkdir(parents=True, exist_ok=True)
    cfg = dense_config(vocab=src_cfg["vocab_size"])
    cfg.update(mask_token_id=src_cfg["mask_token_id"], eos_token_id=src_cfg["eos_token_id"],
               pad_token_id=src_cfg["eos_token_id"], max_sequence_length=1024)  # room for tool definitions
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(src / name, path / name)
    return save_weights(path, dense_tensors(cfg, torch.Generator().manual_seed(seed)))


# ---- schemas: (schema, max characters of a compact JSON value that validates) --------------------------------

def _integer(rng):
    lo = rng.choice([-50, -9, 0, 1, 10])
    hi = lo + rng.choice([5, 40, 99, 500])
    return {"type": "integer", "minimum": lo, "maximum": hi}, max(len(str(lo)), len(str(hi)))


def _number(rng):
    lo, hi = rng.choice([(0, 10), (-5, 5), (1, 100)])
    return {"type": "number", "minimum": lo, "maximum": hi, "multipleOf": 0.5}, max(len(str(lo)), len(str(hi))) + 2


def _enum(rng):
    values = rng.sample(["red", "green", "blue", "cat", "dog", "north", "south", "yes", "no", "maybe"], 3)
    return {"enum": values}, max(len(v) for v in values) + 2


def _pattern(rng):
    n = rng.choice([2, 3, 5])
    return {"type": "string", "pattern": f"^[a-z]{{1,{n}}}$"}, n + 2


def _boolean(rng):
    return {"type": "boolean"}, 5


PRIMITIVES = (_integer, _number, _enum, _pattern, _boolean)


def _primitive(rng):
    return rng.choice(PRIMITIVES)(rng)


def _array(rng, item=None):
    schema, bound = item or _primitive(rng)
    k = rng.choice([1, 2, 3])
    return {"type": "array", "items": schema, "minItems": 1, "maxItems": k}, 2 + k * bound + (k - 1)


def _object(rng, depth=0, props=None):
    names = rng.sample(["a", "b", "id", "name", "size", "tags", "ok", "kind"], props or rng.choice([1, 2, 3]))
    properties, bound = {}, 2
    for name in names:
        if depth < 1 and rng.random() < 0.35:
            schema, b = _object(rng, depth + 1)
        elif rng.random() < 0.25:
            schema, b = _array(rng)
        else:
            schema, b = _primitive(rng)
        properties[name] = schema
        bound += len(name) + 3 + b + 1
    required = [n for n in names if rng.random() < 0.6] or names[:1]  # the rest are optional
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}, bound


def _any_of(rng):
    (s1, b1), (s2, b2) = _object(rng, 1, 1), _primitive(rng)
    return {"anyOf": [s1, s2]}, max(b1, b2)


def _nested(rng):
    inner, b = _object(rng, 1, 2)
    outer, ob = _object(rng, 1, 1)
    outer["properties"]["inner"] = inner
    outer["required"] = list(outer["required"]) + ["inner"]
    return outer, ob + len("inner") + 3 + b + 1


def _array_of_objects(rng):
    return _array(rng, _object(rng, 1, 2))


KINDS = (_object, _nested, _array_of_objects, _any_of, _object, _array)


def json_schemas(count: int = 50, seed: int = 2026, max_chars: int = 48) -> list[tuple[dict, int]]:
    """``count`` schemas with their length bounds (each at most ``max_chars``), the same every run (kinds cycle
    so each appears often)."""
    rng, out = random.Random(seed), []
    while len(out) < count:
        schema, bound = KINDS[len(out) % len(KINDS)](rng)
        if bound <= max_chars:
            out.append((schema, bound))
    return out


REGEXES = (r"[0-9]{3}-[0-9]{4}", r"(yes|no)", r"[A-Z][a-z]{1,5}", r"#[0-9a-f]{6}", r"[a-c]{2,4}@x\.com")
CHOICES = (("yes", "no"), ("red", "green", "blue"), ("north", "south", "east", "west"), ("maybe so",))
PROMPT = [{"role": "user", "content": "What is 12 + 30?"}]
