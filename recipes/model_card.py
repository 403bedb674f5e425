"""Write the README.md model card of a tiny checkpoint from its config, its training log and the JSON
results of ``benchmarks/quality.py`` (so the card's numbers are the measured ones, never hand-typed).

    python -m recipes.model_card --checkpoint server/assets/tiny-llada-instruct \\
        --run-dir runs/stage1 --hardware "..." [--run-dir runs/stage2 --hardware "..."] \\
        --exact runs/quality_exact.json [--fast runs/quality_fast.json] --command "..." [--command "..."] \\
        [--api runs/api.json --api-constrained runs/api_c.json] [--quantized int8=runs/q_int8.json ...]

``--keep-stages`` carries the stage lines and retrain commands of the checkpoint's current card over (their run
directories are gone once a stage is shipped) and numbers the new ``--run-dir`` stages after them.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from recipes import tasks
from recipes.step_data import TASK_WEIGHTS
from recipes.tasks_api import INFILL_WHOLE_P, JSON_SOURCES, TOOLS

TASK_TEXT = {
    "add": f"a + b, both operands with exactly {tasks.DIGITS} digits",
    "sub": f"a - b with a >= b, {tasks.DIGITS}-digit operands",
    "reverse": f"reverse {tasks.REVERSE_LEN[0]}-{tasks.REVERSE_LEN[1]} space-separated letters",
    "sort": f"sort {tasks.SORT_LEN[0]}-{tasks.SORT_LEN[1]} numbers in 0-{tasks.SORT_MAX} ascending",
    "upper": f"copy {tasks.UPPER_LEN[0]}-{tasks.UPPER_LEN[1]} letters in capitals (or, with p="
             f"{tasks.UPPER_LONG_P}, {tasks.UPPER_LONG_LEN[0]}-{tasks.UPPER_LONG_LEN[1]} letters: the >40-token answers)",
    "lookup_fwd": "capital of an invented country (40-row fact table)",
    "lookup_rev": "country of an invented capital (same table, reversal direction)",
    "couplet_next": "line after a given line (24 invented couplets)",
    "couplet_prev": "line before a given line (reversal direction)",
    "infill": "a core task's prompt with the answer's tail given as the suffix (then the end of turn), the middle "
              f"to fill (cut between two words or two digits; with p={INFILL_WHOLE_P} the suffix is the end of turn "
              "alone); trained as prompt + middle + EOS padding + suffix, the canvas the engine builds for `suffix=`",
    "json": f"a {'/'.join(JSON_SOURCES)} prompt plus a request for JSON, answered `{{\"answer\":<value>}}`",
    "tool_call": f"a question only a tool answers ({', '.join(TOOLS)} of an invented place) with a tool list in the "
                 "system message as the server renders `tools`, answered with the call JSON",
    "tool_plain": "a core question with a tool list shown, answered in plain text (no call)",
}


_MOE_CHAT = ("`<role>HUMAN</role>{prompt}<|role_end|><role>ASSISTANT</role>` (SYSTEM turns as "
             "`<role>SYSTEM</role>{text}<|role_end|>`); mask `<|mask|>` (no `mask_token_id` in config.json), "
             "EOS `<|endoftext|>`, end of turn `<|role_end|>`")
_LLADA_SFT = ("LLaDA SFT objective with the project's own model code: the chat-templated prompt is kept, each "
              "response token (answer, end-of-turn token, then `<|endoftext|>` padding up to the sequence's "
              "training length) is masked independently with probability t ~ U(0, 1] (stratified over the batch), "
              "and the cross-entropy of masked tokens is weighted 1/t and averaged per response length. "
              "Trained in fp32, exported in bf16.")
_FAST_TEXT = "Fast preset (Fast-dLLM prefix cache + confidence threshold; an approximation)"
FAMILY_TEXT = {
    "LLaDAModelLM": dict(
        fmt="LLaDA-8B-Instruct", objective=_LLADA_SFT, fast=_FAST_TEXT,
        chat="LLaDA-8B-Instruct's template: `<|startoftext|>` on the first message, "
             "`<|start_header_id|>role<|end_header_id|>\\n\\n...<|eot_id|>`, assistant header always appended; "
             "mask `<|mdm_mask|>` (`mask_token_id`), EOS = pad `<|endoftext|>`, end of turn `<|eot_id|>`"),
    "LLaDAMoEModelLM": dict(fmt="LLaDA-MoE-7B-A1B-Instruct", objective=_LLADA_SFT, fast=_FAST_TEXT, chat=_MOE_CHAT),
    "LLaDA2MoeModelLM": dict(
        fmt="LLaDA2.0-mini, a block-causal MoE with grouped sigmoid routing and expert bias, a shared expert, the "
            "first layer dense, partial rotary and QK-norm",
        chat="LLaDA2.0's (Ling 2.0) template: `<role>SYSTEM</role>detailed thinking off<|role_end|>"
             "<role>HUMAN</role>{prompt}<|role_end|><role>ASSISTANT</role>` (a caller's system message goes first "
             "in the SYSTEM turn, then a newline); mask `<|mask|>` (no `mask_token_id` in config.json), EOS "
             "`<|endoftext|>`, end of turn `<|role_end|>`",
        objective="Block-diffusion SFT matching LLaDA2's block-causal inference, with the project's own model code "
                  "(`recipes/sft_data.make_block_batch`): attention is block-causal with 32-token blocks of absolute "
                  "positions (the engine's default block length); each sequence trains one *active* block, drawn "
                  "among the blocks holding its answer and end-of-turn token (15%: the all-`<|endoftext|>` block "
                  "after them), and is cut at that block's end (later positions cannot influence it under "
                  "block-causal attention). Everything before the block stays clean, as committed blocks are at "
                  "inference; the block's response tokens are masked with probability t ~ U(0, 1] (stratified "
                  "over the batch) and their cross-entropy is weighted 1/t and averaged per block. The expert "
                  "bias gets no gradient (it only steers selection): it is balanced without an auxiliary loss, "
                  "b_e += 0.001 · sign(mean load - load_e) after each step. Trained in fp32, exported in bf16.",
        fast="Fast preset (LLaDA2's strict threshold with a minimum count at 0.9 instead of 0.95, same exact prefix "
             "cache)"),
}
"""Per architecture: the published checkpoint format, chat format, training objective and fast-preset wording."""


def _params(cfg: dict) -> str:
    keys = ("d_model", "n_layers", "n_heads", "mlp_hidden_size", "hidden_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size", "num_experts",
            "num_experts_per_tok", "n_group", "topk_group", "expert_intermediate_size", "moe_intermediate_size",
            "num_shared_experts", "first_k_dense_replace", "partial_rotary_factor", "vocab_size")
    return ", ".join(f"`{k}`={cfg[k]}" for k in keys if k in cfg)


def _accuracy_table(result: dict) -> list[str]:
    lines = ["| task | n | exact match |", "| --- | ---: | ---: |"]
    for task, row in result["tasks"].items():
        lines.append(f"| {task} | {row['n']} | {row['accuracy']:.1%} |")
    o = result["overall"]
    lines.append(f"| **overall** | {o['n']} | **{o['accuracy']:.1%}** |")
    for name, d in result["directions"].items():
        lines.append(f"\n{name}: forward {d['forward']:.1%}, reversal {d['reversal']:.1%}")
    return lines


def _settings(result: dict) -> str:
    s = result["settings"]
    block = s["block_length"] or "engine default (32)"
    steps = s["steps"] or "= max_tokens"
    return (f"preset `{s['preset']}`, temperature 0, max_tokens {s['max_tokens']}, block_length {block}, "
            f"steps {steps}, {s['n_per_task']} held-out prompts per task (fewer where the table has fewer), "
            f"held-out seed {s['seed']}")


def _log_times(run_dir: Path) -> tuple[float, float]:
    """(wall s, CPU s) summed over every invocation recorded in RUN/loss.log (timers restart on resume)."""
    wall = cpu = last_wall = last_cpu = 0.0
    for line in (run_dir / "loss.log").read_text().splitlines():
        if line.startswith("{"):
            continue
        cols = line.split("\t")
        c, w = float(cols[1]), float(cols[-1])
        if w < last_wall:  # a new invocation (resume)
            wall, cpu = wall + last_wall, cpu + last_cpu
        last_wall, last_cpu = w, c
    return wall + last_wall, cpu + last_cpu


def _stage_summary(run_dir: Path, hardware: str) -> str:
    """One training stage (one run directory) in words, from its summary.json and loss.log."""
    s = json.loads((run_dir / "summary.json").read_text())
    wall, cpu = _log_times(run_dir)
    done = s.get("last_step", s["steps"]) - (0 if s.get("init_from") else s.get("resumed_from", 0))
    horizon = (f"the first of {s['steps']} steps or a {s['max_minutes']:g}-minute wall-clock budget, whichever "
               "ends first" if s.get("max_minutes") else f"{s['steps']} steps")
    extras = []
    if s.get("init_from"):
        extras.append(f"initialised from the weights of the previous stage (`{s['init_from']}`), fresh optimizer")
    if s.get("equal_lengths"):
        extras.append("every sequence of a batch padded with EOS to the batch's longest, as LLaDA's SFT pads")
    if s.get("task_weights"):
        extras.append(f"task weights overridden: {s['task_weights']}")
    if s.get("resumed_from") and not s.get("init_from"):
        extras.append("resumed once (times include the repeated steps)")
    more = "; " + "; ".join(extras) if extras else ""
    return (f"{done} steps of {s['batch_size']} sequences, AdamW lr {s['lr']} (warmup {s['warmup']}, cosine to "
            f"10% over {horizon}), weight decay {s['weight_decay']}, seed {s['seed']}{more}; on {hardware}: "
            f"wall time {wall / 60:.1f} min, process CPU time {cpu / 60:.1f} min")


def kept_stages(card: Path) -> tuple[list[str], list[str]]:
    """(stage sentences, retrain commands) of an existing card, in order."""
    lines = card.read_text().splitlines()
    stages = [line.split(": ", 1)[1].rstrip(".") for line in lines if line.startswith("- Stage ")]
    start = lines.index("```", next(i for i, line in enumerate(lines) if line.startswith("Retrain"))) + 1
    return stages, lines[start:lines.index("```", start)]


def api_section(free: dict, constrained: dict | None) -> list[str]:
    """The API-skill table: each task answered freely and, where a constraint applies, under it."""
    lines = ["## API skills (held-out, exact match)", "",
             f"The `recipes/tasks_api.py` tasks through what a client sends ({_settings(free)}): `infill` through "
             "`suffix=` (its text + the end of turn), `json` freely and under `response_format: json_schema` with the "
             "answer's schema, `tool_call` / `tool_plain` with the tool list the server renders for `tools` "
             "(`tool_choice: auto` answers freely; `required` forces a call through the grammar). JSON answers "
             "compare as parsed values. `python -m benchmarks.quality --model <name> --tasks "
             "infill,json,tool_call,tool_plain --n 50 [--constrained]`.", "",
             "| task | n | free answer | constrained |", "| --- | ---: | ---: | ---: |"]
    for task, row in free["tasks"].items():
        con = (constrained or {"tasks": {}})["tasks"].get(task) if task in ("json", "tool_call") else None
        shown = f"{con['accuracy']:.1%}" if con else "—"
        lines.append(f"| {task} | {row['n']} | {row['accuracy']:.1%} | {shown} |")
    return lines + [""]


def quantized_section(checkpoint: Path, bf16: dict, results: dict[str, dict]) -> list[str]:
    """Quality with weights quantized at load time, against the bf16 exact table, with resident weight bytes."""
    from unmask.server.models.loader import load_model
    from unmask.server.models.quantize import weight_bytes

    def size(fmt: str | None) -> int:
        """Resident weight bytes of a bf16 load (dense parts in bf16, as stored)."""
        return weight_bytes(load_model(checkpoint, "cpu", torch.bfloat16, fmt)[0])["total"]
    o = bf16["overall"]
    lines = ["## Quantized weights (measured)", "",
             "Loaded with `--quantization` (`LLM(..., quantization=...)`): every block linear quantized at load time, "
             "embeddings, norms and the LM head in the model dtype. Same settings as the exact table "
             f"(`python -m benchmarks.quality --model {checkpoint.name} --preset exact --n "
             f"{bf16['settings']['n_per_task']} --seed {bf16['settings']['seed']} --quantization FMT`).", "",
             "| weights | resident weight bytes | overall exact match | vs bf16 |", "| --- | ---: | ---: | ---: |",
             f"| bf16 | {size(None) / 1e6:.2f} MB | {o['accuracy']:.1%} ({o['correct']}/{o['n']}) | — |"]
    for fmt, r in results.items():
        q = r["overall"]
        lines.append(f"| {fmt} | {size(fmt) / 1e6:.2f} MB | {q['accuracy']:.1%} ({q['correct']}/{q['n']}) | "
                     f"{100 * (q['accuracy'] - o['accuracy']):+.1f} points |")
    return lines + [""]


def render(checkpoint: Path, stages: list[tuple[Path, str]], exact: dict, fast: dict | None, commands: list[str],
           note: str = "", kept: tuple[list[str], list[str]] = ([], []), api: tuple[dict, dict | None] | None = None,
           quantized: dict[str, dict] | None = None) -> str:
    """The card's Markdown. ``stages``: (run directory, hardware in words) per training stage, in order, after the
    ``kept`` (stage sentences, commands) of earlier stages."""
    cfg = json.loads((checkpoint / "config.json").read_text())
    family = FAMILY_TEXT[cfg["architectures"][0]]
    size_mb = sum(f.stat().st_size for f in checkpoint.iterdir() if f.suffix == ".safetensors") / 2**20
    fmt, chat = family["fmt"], family["chat"]
    lines = [
        f"# {checkpoint.name}", "",
        f"A tiny masked-diffusion model in exactly the Hugging Face format of {fmt} (`architectures: "
        f"{cfg['architectures']}`), shipped inside `unmask` so that `unmask serve` works offline and every "
        "layer of the stack can be checked end to end against a quality number. It only knows the synthetic "
        "instruction suite of `recipes/tasks.py`; it is not a general chat model.", "",
        "## Model", "",
        f"- {_params(cfg)}; bf16 safetensors, {size_mb:.1f} MB.",
        f"- Tokenizer: byte-level BPE ({cfg['vocab_size']} embedding rows, digits always single tokens), {chat}.",
        "", "## Training recipe", "",
        family["objective"], "",
        *(f"- Stage {i + 1}: {text}." for i, text in enumerate(
            kept[0] + [_stage_summary(run, hw) for run, hw in stages])),
        "- Task mix (relative frequency; the recipe default, stages note their overrides): " + ", ".join(f"{t} {w}" for t, w in TASK_WEIGHTS.items()) + ".",
        "- Tasks: " + "; ".join(f"`{t}`: {d}" for t, d in TASK_TEXT.items()) + ".",
        "- Splits: generated tasks hold out 1 instance in 5 by a stable hash of the instance (operands, letters or "
        "list), so held-out prompts are unseen in any phrasing; table tasks hold out 2 of 8 phrasings per "
        "(item, direction), every phrasing being trained with other items.", "",
        "Retrain (each stage seeded; stages with a wall-clock budget stop where the budget ends, so their "
        "step count follows the hardware; resumable with `--resume`):", "", "```", *kept[1], *commands, "```", "",
        "## Measured accuracy (held-out, exact match)", "",
        *([note, ""] if note else []),
        f"Settings: {_settings(exact)}; `python -m benchmarks.quality --model {checkpoint.name} "
        f"--preset exact --n {exact['settings']['n_per_task']} --seed {exact['settings']['seed']}`.", "",
        *_accuracy_table(exact), "",
    ]
    if fast:
        lines += [f"{family['fast']}: {_settings(fast)}.", "", *_accuracy_table(fast), ""]
    if api:
        lines += api_section(*api)
    if quantized:
        lines += quantized_section(checkpoint, exact, quantized)
    return "\n".join(lines)


def _load(path: str | None) -> dict | None:
    return json.loads(Path(path).read_text()) if path else None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--run-dir", action="append", required=True, help="one per training stage, in order")
    p.add_argument("--hardware", action="append", required=True, help="per stage: where it ran, in words")
    p.add_argument("--exact", required=True, help="quality.py --json output, preset exact")
    p.add_argument("--fast", default=None, help="quality.py --json output, preset fast")
    p.add_argument("--command", action="append", required=True, help="the exact retrain command(s), in order")
    p.add_argument("--note", default="", help="a status paragraph placed above the accuracy table")
    p.add_argument("--keep-stages", action="store_true", help="carry the current card's stages and commands over")
    p.add_argument("--api", default=None, help="quality.py --json of the API tasks, answered freely")
    p.add_argument("--api-constrained", default=None, help="the same with --constrained")
    p.add_argument("--quantized", action="append", default=[], help="FMT=quality.py --json of a quantized load")
    args = p.parse_args(argv)
    fast = _load(args.fast)
    if len(args.run_dir) != len(args.hardware):
        p.error("give one --hardware per --run-dir")
    stages = [(Path(r), h) for r, h in zip(args.run_dir, args.hardware)]
    card = Path(args.checkpoint) / "README.md"
    text = render(Path(args.checkpoint), stages, _load(args.exact), fast, args.command, args.note,
                  kept_stages(card) if args.keep_stages else ([], []),
                  (_load(args.api), _load(args.api_constrained)) if args.api else None,
                  {fmt: _load(path) for fmt, _, path in (q.partition("=") for q in args.quantized)} or None)
    (Path(args.checkpoint) / "README.md").write_text(text)


if __name__ == "__main__":
    main()
