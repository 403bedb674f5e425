"""Write the README.md model card of a tiny checkpoint from its config, its training log and the JSON
results of ``benchmarks/quality.py`` (so the card's numbers are the measured ones, never hand-typed).

    python -m recipes.model_card --checkpoint server/assets/tiny-llada-instruct \\
        --run-dir runs/stage1 --hardware "..." [--run-dir runs/stage2 --hardware "..."] \\
        --exact runs/quality_exact.json [--fast runs/quality_fast.json] --command "..." [--command "..."]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from recipes import tasks
from recipes.step_data import TASK_WEIGHTS

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


def render(checkpoint: Path, stages: list[tuple[Path, str]], exact: dict, fast: dict | None, commands: list[str],
           note: str = "") -> str:
    """The card's Markdown. ``stages``: (run directory, hardware in words) per training stage, in order."""
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
        *(f"- Stage {i + 1}: {_stage_summary(run, hw)}." for i, (run, hw) in enumerate(stages)),
        "- Task mix (relative frequency; the recipe default, stages note their overrides): " + ", ".join(f"{t} {w}" for t, w in TASK_WEIGHTS.items()) + ".",
        "- Tasks: " + "; ".join(f"`{t}`: {d}" for t, d in TASK_TEXT.items()) + ".",
        "- Splits: generated tasks hold out 1 instance in 5 by a stable hash of the instance (operands, letters or "
        "list), so held-out prompts are unseen in any phrasing; table tasks hold out 2 of 8 phrasings per "
        "(item, direction), every phrasing being trained with other items.", "",
        "Retrain (each stage seeded; stages with a wall-clock budget stop where the budget ends, so their "
        "step count follows the hardware; resumable with `--resume`):", "", "```", *commands, "```", "",
        "## Measured accuracy (held-out, exact match)", "",
        *([note, ""] if note else []),
        f"Settings: {_settings(exact)}; `python -m benchmarks.quality --model {checkpoint.name} "
        f"--preset exact --n {exact['settings']['n_per_task']} --seed {exact['settings']['seed']}`.", "",
        *_accuracy_table(exact), "",
    ]
    if fast:
        lines += [f"{family['fast']}: {_settings(fast)}.", "", *_accuracy_table(fast), ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--run-dir", action="append", required=True, help="one per training stage, in order")
    p.add_argument("--hardware", action="append", required=True, help="per stage: where it ran, in words")
    p.add_argument("--exact", required=True, help="quality.py --json output, preset exact")
    p.add_argument("--fast", default=None, help="quality.py --json output, preset fast")
    p.add_argument("--command", action="append", required=True, help="the exact retrain command(s), in order")
    p.add_argument("--note", default="", help="a status paragraph placed above the accuracy table")
    args = p.parse_args(argv)
    fast = json.loads(Path(args.fast).read_text()) if args.fast else None
    if len(args.run_dir) != len(args.hardware):
        p.error("give one --hardware per --run-dir")
    stages = [(Path(r), h) for r, h in zip(args.run_dir, args.hardware)]
    text = render(Path(args.checkpoint), stages, json.loads(Path(args.exact).read_text()), fast,
                  args.command, args.note)
    (Path(args.checkpoint) / "README.md").write_text(text)


if __name__ == "__main__":
    main()
