"""Train a tiny LLaDA-Instruct (dense), LLaDA-MoE-Instruct or LLaDA2-style (block-causal MoE) model on the
synthetic suite with the LLaDA SFT objective (LLaDA2: its block-diffusion form, ``sft_data.make_block_batch``),
using the project's own model code, and export it as an HF-format checkpoint.

    python -m recipes.train_tiny --family llada --out server/assets/tiny-llada-instruct --run-dir runs/dense
    python -m recipes.train_tiny --family llada_moe --out server/assets/tiny-llada-moe-instruct --run-dir runs/moe
    python -m recipes.train_tiny --family llada2 --out server/assets/tiny-llada2-instruct --run-dir runs/llada2

Seeded and resumable: every ``--ckpt-every`` steps the fp32 model + optimizer go to ``RUN/last.pt``;
``--resume`` continues from it bit-for-bit (each step's data and masks derive from (seed, step) only).
``RUN/loss.log`` holds one tab-separated line per logged step and a JSON line per evaluation. Training
runs in fp32; the export is bf16 (``unmask.server.models.export``).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from recipes import configs, objective, tasks, tokenizer_build
from recipes.evaluate import evaluate
from recipes.progress import progress
from recipes.sft_data import ChatEncoder
from recipes.step_data import batches
from unmask.server.config import from_dict
from unmask.server.models.export import save_hf_checkpoint
from unmask.server.models.registry import build_model

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", choices=("llada", "llada_moe", "llada2"), required=True)
    p.add_argument("--out", required=True, help="checkpoint directory to write (HF format)")
    p.add_argument("--run-dir", required=True, help="where last.pt, loss.log and the tokenizer go")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--resp-len", type=int, default=64, help="main response (generation) length")
    p.add_argument("--max-resp-len", type=int, default=96, help="longest response length of mixed batches")
    p.add_argument("--system-prob", type=float, default=0.1)
    p.add_argument("--aux-coef", type=float, default=0.01, help="MoE router balance loss weight")
    p.add_argument("--bias-rate", type=float, default=1e-3,
                   help="expert-bias balancing step per optimizer step (llada2's sigmoid routing)")
    p.add_argument("--attn-blocks", default="32",
                   help="llada2: block sizes of block-causal training, comma-separated, one drawn per sequence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--eval-every", type=int, default=0, help="0: evaluate only at the end")
    p.add_argument("--eval-n", type=int, default=16,
                   help="held-out prompts per task for evaluations (0: no evaluation at all)")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop (checkpoint, no export) after this step; the LR schedule still follows --steps")
    p.add_argument("--equal-lengths", action="store_true",
                   help="pad every sequence of a batch to the batch's longest (LLaDA's dense SFT batches)")
    p.add_argument("--workers", type=int, default=0, help="processes building batches ahead (0: inline)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall-clock guard: checkpoint and export when exceeded (the LR schedule stays cut)")
    p.add_argument("--task-weights", default=None, help="overrides of TASK_WEIGHTS, e.g. reverse=4,upper=4")
    p.add_argument("--init-from", default=None,
                   help="start from this run's last.pt weights, or from an HF checkpoint directory (fresh "
                        "optimizer, schedule and step count)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--export-only", action="store_true", help="export RUN/last.pt and exit")
    for name in ("d-model", "n-layers", "n-heads", "mlp-hidden-size", "hidden-size", "num-hidden-layers",
                 "num-attention-heads", "num-experts", "num-experts-per-tok", "expert-intermediate-size",
                 "num-key-value-heads", "head-dim", "n-group", "topk-group", "moe-intermediate-size",
                 "intermediate-size", "num-shared-experts", "first-k-dense-replace"):
        p.add_argument(f"--{name}", type=int, default=None)
    return p.parse_args(argv)


def lr_at(step: int, args, elapsed_s: float = 0.0) -> float:
    """Linear warmup, then cosine decay to 10% of the peak. With ``--max-minutes`` the decay follows
    whichever runs out first, the steps or the wall-clock budget (so a time-cut run still anneals)."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = (step - args.warmup) / max(1, args.steps - args.warmup)
    if args.max_minutes:
        frac = max(frac, elapsed_s / (60 * args.max_minutes))
    return args.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, frac))))


def setup(args):
    """Tokenizer files (in RUN/tokenizer), config.json dict, ModelConfig and a fresh fp32 model."""
    run = Path(args.run_dir)
    tok_dir = run / "tokenizer"
    tok = tokenizer_build.write(tok_dir, args.family, configs.MAX_POSITIONS)
    dims = {k: getattr(args, k) for k in vars(args) if k in configs.SIZES[args.family]}
    cfg_json = configs.make_config(args.family, tok, **dims)
    (tok_dir / "config.json").write_text(json.dumps(cfg_json, indent=2) + "\n")
    cfg = from_dict(cfg_json, {t: tok.token_to_id(t) for t in tokenizer_build.SPECIALS[args.family]})
    model = build_model(cfg, args.device, torch.float32, init_std=0.02, seed=args.seed)
    return ChatEncoder(tok_dir, args.family), cfg_json, cfg, model


def generation_config(cfg) -> dict:
    """The settings the model cards evaluate with, as the checkpoint's generation defaults: a client that
    sends only messages gets the card's accuracy (server/engine/generation_config.py reads these). No
    ``steps``: the default, one step per canvas token, follows whatever budget a request chooses."""
    return {"max_new_tokens": 64, "block_length": 32, "temperature": 0.0,
            "eos_token_id": list(cfg.stop_token_ids)}


def export(model, cfg, cfg_json: dict, args) -> None:
    """bf16 HF checkpoint + tokenizer files into ``args.out``."""
    out = Path(args.out)
    save_hf_checkpoint(model, cfg, cfg_json, out)
    tok_dir = Path(args.run_dir) / "tokenizer"
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (out / name).write_bytes((tok_dir / name).read_bytes())
    (out / "generation_config.json").write_text(json.dumps(generation_config(cfg), indent=2) + "\n")
    print(f"exported {sum(p.numel() for p in model.parameters()):,} parameters to {out}")


def log_eval(model, encoder, cfg, args, log, step: int) -> dict:
    t0 = time.time()
    acc = evaluate(model, encoder, cfg.mask_token_id, tasks.heldout_set(args.eval_n, seed=1),
                   gen_length=args.resp_len, block_length=32, steps=args.resp_len,
                   block_causal=cfg.attention_pattern == "block_causal")
    model.train()
    rec = {"step": step, "eval_s": round(time.time() - t0, 1), **{k: round(v, 3) for k, v in acc.items()}}
    log.write(json.dumps(rec) + "\n")
    log.flush()
    print(json.dumps(rec), flush=True)
    return acc


def initial_weights(path: Path, device: str) -> dict:
    """``--init-from``: a run directory's last.pt model state, or an HF checkpoint's weights (bf16 -> fp32)."""
    if (path / "last.pt").exists():
        return torch.load(path / "last.pt", map_location=device)["model"]
    from unmask.server.models.loader import load_model

    return load_model(path, device, torch.float32)[0].state_dict()


def train(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    encoder, cfg_json, cfg, model = setup(args)
    run = Path(args.run_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=args.weight_decay)
    start = 0
    if args.resume or args.export_only:
        state = torch.load(run / "last.pt", map_location=args.device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = state["step"]
        print(f"resumed from step {start}")
    if args.export_only:
        return export(model, cfg, cfg_json, args)
    if args.init_from:
        model.load_state_dict(initial_weights(Path(args.init_from), args.device))
        print(f"initialised from {args.init_from}")
    balance = objective.RouterBalance(model)
    bias_balance = objective.ExpertBiasBalance(model, args.bias_rate, fresh=start == 0 and not args.init_from)
    log = open(run / "loss.log", "a")
    model.train()
    t0 = time.time()
    bar = progress(range(start, args.steps), initial=start, total=args.steps)
    stream = batches(encoder, args, start)
    done = start
    for step in bar:
        batch = next(stream)
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        loss, stats = objective.sft_loss(model, batch, cfg.mask_token_id, cfg.eos_token_id, gen, args.device)
        aux = balance.pop_loss()
        lr = lr_at(step, args, time.time() - t0)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad(set_to_none=True)
        (loss + args.aux_coef * aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        load = bias_balance.update()
        aux = aux if cfg.routing != "sigmoid_grouped" else torch.tensor(load)
        if step % 10 == 0:
            log.write(f"{step}\t{time.process_time():.0f}\t{loss.item():.4f}\t{stats['ce']:.4f}\t{stats['masked_acc']:.3f}\t{stats['answer_acc']:.3f}\t"
                      f"{float(aux):.4f}\t{lr:.2e}\t{time.time() - t0:.0f}\n")
            log.flush()
            bar.set_postfix(loss=f"{loss.item():.3f}", ans_acc=f"{stats['answer_acc']:.3f}")
        done = step + 1
        if done % args.ckpt_every == 0 or done == args.steps:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": done}, run / "last.pt")
        if args.eval_every and args.eval_n > 0 and done % args.eval_every == 0 and done != args.steps:
            log_eval(model, encoder, cfg, args, log, done)
        if args.max_minutes is not None and time.time() - t0 > 60 * args.max_minutes:
            print(f"--max-minutes reached after step {done}; exporting this state")
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": done}, run / "last.pt")
            break
        if args.stop_after is not None and done >= args.stop_after:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": done}, run / "last.pt")
            print(f"stopped after step {done} (--stop-after)")
            return
    wall, cpu = time.time() - t0, time.process_time()
    print(f"trained {done - start} steps in {wall:.0f}s wall, {cpu:.0f}s CPU")
    device_name = torch.cuda.get_device_name(args.device) if str(args.device).startswith("cuda") else "cpu"
    summary = {**vars(args), "resumed_from": start, "last_step": done, "wall_s": round(wall), "cpu_s": round(cpu),
               "device_name": device_name}
    (run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    export(model, cfg, cfg_json, args)
    if args.eval_n > 0:
        log_eval(model, encoder, cfg, args, log, done)


if __name__ == "__main__":
    train(parse_args())
