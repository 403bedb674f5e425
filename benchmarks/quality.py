"""Exact-match accuracy of a model on the held-out synthetic suite (``recipes/tasks.py``), per task and
overall, through the offline engine (``unmask.LLM``) or a running server's OpenAI chat API.

    python -m benchmarks.quality --model tiny-llada-instruct --preset exact --n 50 --seed 0 --json q.json
    python -m benchmarks.quality --model tiny-llada-instruct --url http://127.0.0.1:8000 --preset fast
    python -m benchmarks.quality --model tiny-llada-instruct --tasks infill,json,tool_call,tool_plain [--constrained]

The API tasks (``recipes/tasks_api.py``) go through what a client would use: ``infill`` through ``suffix=`` (its
text + the end-of-turn token; offline only), ``json`` through ``response_format: json_schema`` and the tool tasks
through ``tools`` with ``tool_choice: auto`` over HTTP, or the same constraint / the server's tool system message
offline. ``--constrained`` turns the constraint on (json: the answer's schema; tool_call: ``tool_choice: required`` with
``parallel_tool_calls: false``, one call as the examples write it: under the list grammar of parallel calls a model
that never saw a list keeps appending calls); without it the model answers freely and must get the format right by
itself.

Forward and reversal directions of the lookup and couplet tasks are separate rows (and a ``directions``
block in the JSON), as in the LLaDA paper's poem table. Prints a table; ``--json`` writes the numbers
with the settings used.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import time
from pathlib import Path

from recipes.tasks import TASKS, Example
from recipes.tasks_api import ALL_TASKS, check, heldout_set, json_schema, shown_tools, tool_function

DEFAULT_MAX_TOKENS = 64
"""Generation length the model cards report (the engine's default)."""
DIRECTIONS = {"lookup": ("lookup_fwd", "lookup_rev"), "couplet": ("couplet_next", "couplet_prev")}
"""Paired tasks: (forward, reversal)."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="built-in name or checkpoint path (offline), or the served name")
    p.add_argument("--url", default=None, help="server base URL, e.g. http://127.0.0.1:8000 (default: offline)")
    p.add_argument("--preset", choices=("exact", "fast"), default="exact")
    p.add_argument("--n", type=int, default=50, help="held-out prompts per task (table tasks may have fewer)")
    p.add_argument("--seed", type=int, default=0, help="which held-out sample")
    p.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    p.add_argument("--block-length", type=int, default=None, help="default: the engine's (32 if it divides)")
    p.add_argument("--steps", type=int, default=None, help="default: max_tokens (one token per step)")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated tasks of {','.join(ALL_TASKS)}")
    p.add_argument("--constrained", action="store_true",
                   help="json / tool_call answers under their grammar constraint (response_format / tool_choice)")
    p.add_argument("--concurrency", type=int, default=32, help="HTTP requests in flight")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--quantization", default=None, choices=("fp8", "int8", "int4"), help="offline: quantize at load")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--show-errors", type=int, default=0, help="print up to this many wrong replies per task")
    return p.parse_args(argv)


def _messages(ex: Example) -> list[dict]:
    """The chat messages of an example (its system message: the tool list, as the server renders ``tools``)."""
    return ([{"role": "system", "content": ex.system}] if ex.system else []) + [{"role": "user", "content": ex.prompt}]


def _constraint(ex: Example, args) -> dict | None:
    """The structured-output constraint of an example under ``--constrained`` (None: free answer)."""
    if not args.constrained:
        return None
    if ex.task == "json":
        return {"json": json_schema(ex)}
    if ex.task == "tool_call":
        from unmask.server.api.tools import call_schema

        return {"json": call_schema([tool_function(n) for n in shown_tools(ex)], parallel=False)}
    return None


def run_offline(examples: list[Example], args) -> list[str]:
    """Replies (text) through ``unmask.LLM``, all prompts submitted at once (the engine batches them)."""
    from unmask import LLM, DiffusionParams

    llm = LLM(model=args.model, device=args.device, dtype=args.dtype, quantization=args.quantization)
    eot = llm.engine.model_config.eot_token_id
    params = [DiffusionParams(max_tokens=args.max_tokens, block_length=args.block_length, steps=args.steps,
                              temperature=0.0, preset=args.preset, structured_outputs=_constraint(ex, args))
              for ex in examples]
    suffixes = [llm.tokenizer.encode(ex.suffix) + [eot] if ex.task == "infill" else [] for ex in examples]
    outs = llm.generate([_messages(ex) for ex in examples], params, suffix=suffixes)
    return [out.text for out in outs]


def run_http(examples: list[Example], args) -> list[str]:
    """Replies through ``POST {url}/v1/chat/completions`` with the diffusion fields as extra body keys."""
    import httpx

    base = args.url.rstrip("/")
    extra = {k: v for k, v in (("steps", args.steps), ("block_length", args.block_length)) if v is not None}

    with httpx.Client(timeout=600.0) as client:
        model = args.model or client.get(f"{base}/v1/models").json()["data"][0]["id"]
        args.model = model  # recorded in the results

        def one(ex: Example) -> str:
            if ex.task == "infill":
                raise SystemExit("infill runs offline only (chat has no suffix)")
            body = {"model": model, "messages": [{"role": "user", "content": ex.prompt}],
                    "max_tokens": args.max_tokens, "temperature": 0.0, "preset": args.preset, **extra}
            if ex.system:  # the tools go in as `tools`: the server renders the same system message
                body["tools"] = [{"type": "function", "function": tool_function(n)} for n in shown_tools(ex)]
                body["tool_choice"] = "required" if args.constrained and ex.task == "tool_call" else "auto"
                body["parallel_tool_calls"] = False  # one call, as the examples write it
            elif args.constrained and ex.task == "json":
                body["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True,
                                                                                  "schema": json_schema(ex)}}
            resp = client.post(f"{base}/v1/chat/completions", json=body)
            resp.raise_for_status()
            message = resp.json()["choices"][0]["message"]
            calls = message.get("tool_calls") or []
            if calls:
                return json.dumps([{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
                                   for c in calls][0] if len(calls) == 1 else calls)
            return message["content"] or ""

        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            return list(pool.map(one, examples))


def score(examples: list[Example], replies: list[str]) -> dict:
    """-> {"tasks": {task: {n, correct, accuracy}}, "overall": {...}, "directions": {...}}."""
    hits, totals = collections.Counter(), collections.Counter()
    for ex, reply in zip(examples, replies):
        totals[ex.task] += 1
        hits[ex.task] += check(ex, reply)
    rows = {t: {"n": totals[t], "correct": hits[t], "accuracy": hits[t] / totals[t]} for t in ALL_TASKS if totals[t]}
    n, c = sum(totals.values()), sum(hits.values())
    directions = {name: {"forward": rows[f]["accuracy"], "reversal": rows[r]["accuracy"]}
                  for name, (f, r) in DIRECTIONS.items() if f in rows and r in rows}
    return {"tasks": rows, "overall": {"n": n, "correct": c, "accuracy": c / n if n else 0.0},
            "directions": directions}


def print_table(result: dict, header: str) -> None:
    print(header)
    print(f"{'task':<14}{'n':>6}{'correct':>9}{'accuracy':>10}")
    for task, row in result["tasks"].items():
        print(f"{task:<14}{row['n']:>6}{row['correct']:>9}{row['accuracy']:>10.1%}")
    o = result["overall"]
    print(f"{'overall':<14}{o['n']:>6}{o['correct']:>9}{o['accuracy']:>10.1%}")
    for name, d in result["directions"].items():
        print(f"{name}: forward {d['forward']:.1%}  reversal {d['reversal']:.1%}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    wanted = tuple(t for t in args.tasks.split(",") if t)
    unknown = set(wanted) - set(ALL_TASKS)
    if unknown:
        raise SystemExit(f"unknown tasks {sorted(unknown)}; choose from {ALL_TASKS}")
    examples = heldout_set(args.n, seed=args.seed, tasks_wanted=wanted)
    t0 = time.time()
    replies = run_http(examples, args) if args.url else run_offline(examples, args)
    elapsed = time.time() - t0
    result = score(examples, replies)
    result["settings"] = {"model": args.model, "url": args.url, "preset": args.preset, "n_per_task": args.n,
                          "seed": args.seed, "max_tokens": args.max_tokens, "block_length": args.block_length,
                          "steps": args.steps, "constrained": args.constrained, "temperature": 0.0,
                          "elapsed_s": round(elapsed, 1)}
    print_table(result, f"model={args.model or 'default'} via={'http ' + args.url if args.url else 'offline'} "
                        f"preset={args.preset} max_tokens={args.max_tokens} block={args.block_length} "
                        f"steps={args.steps} n/task={args.n} seed={args.seed} ({elapsed:.0f}s)")
    if args.show_errors:
        shown = collections.Counter()
        for ex, reply in zip(examples, replies):
            if not check(ex, reply) and shown[ex.task] < args.show_errors:
                shown[ex.task] += 1
                print(f"  [{ex.task}] {ex.prompt!r} -> {reply!r} (want {ex.answer!r})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
