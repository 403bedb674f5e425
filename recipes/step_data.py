"""What each training step sees: the task mix, the response lengths and the batch of a step, built inline or by
worker processes. Every batch is a pure function of (seed, step), which makes resuming exact.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch

from recipes import tasks_api, tokenizer_build
from recipes.sft_data import Batch, ChatEncoder, make_batch, make_block_batch

TASK_WEIGHTS = {"add": 2.5, "sub": 2.5, "reverse": 2.0, "sort": 2.0, "upper": 1.5, "lookup_fwd": 0.6,
                "lookup_rev": 0.6, "couplet_next": 0.3, "couplet_prev": 0.3,
                "infill": 0.0, "json": 0.0, "tool_call": 0.0, "tool_plain": 0.0}
"""Relative frequency of each task in training batches (the generated tasks are the hard ones). The API tasks
(``tasks_api``) are off unless ``--task-weights`` turns them on; zero weights leave every draw of the core mix
unchanged."""


def task_weights(args) -> dict[str, float]:
    """TASK_WEIGHTS with the ``--task-weights name=w,...`` overrides applied."""
    weights = dict(TASK_WEIGHTS)
    for item in filter(None, (args.task_weights or "").split(",")):
        name, _, w = item.partition("=")
        if name not in weights:
            raise ValueError(f"--task-weights: unknown task {name!r} (tasks: {', '.join(weights)})")
        weights[name] = float(w)
    return weights


def response_length(need: int, rng: random.Random, args) -> int:
    """Training length of one response (answer + end of turn = ``need`` tokens, then EOS padding):
    the generation length ``--resp-len`` (20%), a random length up to ``--max-resp-len`` (10%), or the
    answer plus 0-8 padding tokens (70%, cheap; it still teaches the EOS run after the end of turn)."""
    u = rng.random()
    if u < 0.20:
        return max(need, args.resp_len)
    if u < 0.30:
        return rng.randint(need, max(need, args.max_resp_len))
    return need + rng.randint(0, 8)


def attn_blocks(args) -> tuple[int, ...]:
    """``--attn-blocks`` as a tuple of positive block sizes."""
    sizes = tuple(int(x) for x in str(args.attn_blocks).split(",") if x.strip())
    if not sizes or min(sizes) <= 0:
        raise ValueError(f"--attn-blocks {args.attn_blocks!r}: expected positive block sizes, e.g. 32 or 16,32")
    return sizes


def step_batch(encoder: ChatEncoder, args, step: int):
    """The batch of ``step``: a pure function of (seed, step), which makes resuming exact."""
    rng = random.Random(f"{args.seed}/batch/{step}")
    weights = task_weights(args)
    names = list(weights)
    exs = [tasks_api.sample(t, rng, "train") for t in rng.choices(names, [weights[t] for t in names],
                                                                k=args.batch_size)]
    if args.family == "llada2":
        return make_block_batch(encoder, exs, rng, args.system_prob, tokenizer_build.SYSTEM_PROMPTS,
                                attn_blocks(args))
    resp = [response_length(encoder.need(ex), rng, args) for ex in exs]
    return make_batch(encoder, exs, resp, rng, args.system_prob, tokenizer_build.SYSTEM_PROMPTS,
                      equal_lengths=args.equal_lengths)


_WORKER: tuple | None = None


def _worker_init(tok_dir: str, family: str, args) -> None:
    global _WORKER
    torch.set_num_threads(1)
    _WORKER = (ChatEncoder(tok_dir, family), args)


def _worker_batch(step: int):
    """A batch as plain numpy arrays (they pickle by value; tensors would travel as shared-memory fds)."""
    encoder, args = _WORKER
    b = step_batch(encoder, args, step)
    return (b.input_ids.numpy(), b.positions.numpy(), b.seq_lens, b.response.numpy(), b.seq_index.numpy(),
            b.attn_blocks)


def _from_worker(arrays) -> Batch:
    ids, pos, lens, resp, seq, blocks = arrays
    return Batch(torch.from_numpy(ids), torch.from_numpy(pos), lens, torch.from_numpy(resp), torch.from_numpy(seq),
                 blocks)


def batches(encoder: ChatEncoder, args, start: int):
    """Batches of steps ``start..args.steps-1`` in order, built inline or by ``args.workers`` processes
    (each batch is a pure function of (seed, step), so both give the same stream)."""
    if args.workers <= 0:
        for step in range(start, args.steps):
            yield step_batch(encoder, args, step)
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    tok_dir = str(Path(args.run_dir) / "tokenizer")
    with ctx.Pool(args.workers, initializer=_worker_init, initargs=(tok_dir, args.family, args)) as pool:
        for arrays in pool.imap(_worker_batch, range(start, args.steps), chunksize=4):
            yield _from_worker(arrays)
