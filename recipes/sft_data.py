"""Turn task examples into LLaDA SFT sequences: chat-templated prompt + EOS-padded response.

A sequence is ``prompt_ids + response_ids (+ suffix_ids)`` where ``response_ids = answer + [end of turn] + [eos] * pad``
(LLaDA's SFT layout: the answer is closed by the end-of-turn token, ``<|eot_id|>`` or ``<|role_end|>``,
then padded with ``<|endoftext|>`` up to the training length; the padding is trained on, so the model
learns to fill a longer canvas with EOS). An infilling example's response is its middle + EOS padding, followed
by the clean suffix + end of turn (the canvas the engine builds for ``suffix=``). The prompt is rendered with the checkpoint's own chat
template (jinja2, the way Hugging Face renders it), so training sees exactly what serving sends.

Legend: N packed tokens of a batch, B sequences.
"""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

from recipes.tasks import Example

EOT_TOKEN = {"llada": "<|eot_id|>", "llada_moe": "<|role_end|>", "llada2": "<|role_end|>"}


class ChatEncoder:
    """Chat-template rendering + tokenisation for one tokenizer directory."""

    def __init__(self, tok_dir: str | Path, family: str):
        tok_dir = Path(tok_dir)
        self.tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
        cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self.template = env.from_string(cfg["chat_template"])
        self.bos_token = cfg.get("bos_token")
        self.eos_id = self.tok.token_to_id("<|endoftext|>")
        self.eot_id = self.tok.token_to_id(EOT_TOKEN[family])

    def render(self, messages: list[dict]) -> str:
        """The chat template applied to ``messages`` with the generation prompt."""
        return self.template.render(messages=messages, bos_token=self.bos_token, add_generation_prompt=True)

    def prompt_ids(self, user: str, system: str | None = None) -> list[int]:
        """Token ids of the rendered prompt (system turn first when given)."""
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return self.tok.encode(self.render(msgs)).ids

    def response_ids(self, answer: str, length: int, closed: bool = True) -> list[int]:
        """answer + end of turn (unless not ``closed``: an infilling middle) + EOS padding, exactly ``length`` ids
        (ValueError if it does not fit)."""
        ids = self.tok.encode(answer).ids + ([self.eot_id] if closed else [])
        if len(ids) > length:
            raise ValueError(f"answer of {len(ids)} tokens does not fit a response of {length}")
        return ids + [self.eos_id] * (length - len(ids))

    def suffix_ids(self, ex: Example) -> list[int]:
        """An infilling example's suffix: its text + end of turn; [] for an ordinary example."""
        return self.tok.encode(ex.suffix).ids + [self.eot_id] if ex.suffix else []

    def need(self, ex: Example) -> int:
        """Tokens the response region must hold at least: the answer, + end of turn unless infilling."""
        return len(self.tok.encode(ex.answer).ids) + (0 if ex.suffix else 1)

    def decode_reply(self, ids: list[int]) -> str:
        """Generated ids -> text: cut at the first EOS / end of turn, special tokens skipped."""
        for i, t in enumerate(ids):
            if t in (self.eos_id, self.eot_id):
                ids = ids[:i]
                break
        return self.tok.decode(ids, skip_special_tokens=True)


@dataclasses.dataclass
class Batch:
    input_ids: torch.Tensor
    """[N] int64 clean tokens (prompt + response) of all sequences, packed."""
    positions: torch.Tensor
    """[N] int64 position of each token inside its own sequence."""
    seq_lens: list[int]
    """Length of each of the B sequences."""
    response: torch.Tensor
    """[N] bool: token belongs to a response (eligible for masking and the loss)."""
    seq_index: torch.Tensor
    """[N] int64: which sequence each token belongs to."""
    attn_blocks: list[int] | None = None
    """Block-causal attention: each sequence's block size (absolute positions), or None (bidirectional)."""


def system_message(ex: Example, rng: random.Random, system_prob: float, systems: tuple[str, ...]) -> str | None:
    """The system turn of one training example: a random one of ``systems`` (probability ``system_prob``), the
    example's own (a tool list) appended after a blank line as the server appends it, or None."""
    system = rng.choice(systems) if rng.random() < system_prob else None
    if ex.system:
        return f"{system}\n\n{ex.system}" if system else ex.system
    return system


def make_batch(encoder: ChatEncoder, examples: list[Example], resp_lens: list[int], rng: random.Random,
               system_prob: float, systems: tuple[str, ...], equal_lengths: bool = False) -> Batch:
    """Pack ``examples`` into one SFT batch; sequence b gets a response region of ``resp_lens[b]`` tokens.

    Packing lets every sequence keep its own training length. With ``equal_lengths`` every response is
    padded further with EOS so that all sequences have the batch's longest total length, as LLaDA's SFT
    pads its dense batches (attention then runs as one batched call instead of one per sequence)."""
    prompts = [encoder.prompt_ids(ex.prompt, system_message(ex, rng, system_prob, systems)) for ex in examples]
    suffixes = [encoder.suffix_ids(ex) for ex in examples]
    if equal_lengths:
        total = max(len(p) + r + len(s) for p, r, s in zip(prompts, resp_lens, suffixes))
        resp_lens = [total - len(p) - len(s) for p, s in zip(prompts, suffixes)]
    ids, pos, resp, seq, lens = [], [], [], [], []
    for b, (ex, p, s) in enumerate(zip(examples, prompts, suffixes)):
        r = encoder.response_ids(ex.answer, resp_lens[b], closed=not ex.suffix)
        n = len(p) + len(r) + len(s)
        ids += p + r + s
        pos += range(n)
        resp += [False] * len(p) + [True] * len(r) + [False] * len(s)
        seq += [b] * n
        lens.append(n)
    return Batch(torch.tensor(ids), torch.tensor(pos), lens, torch.tensor(resp), torch.tensor(seq))


def make_block_batch(encoder: ChatEncoder, examples: list[Example], rng: random.Random, system_prob: float,
                     systems: tuple[str, ...], block_sizes: tuple[int, ...], eos_block_prob: float = 0.15) -> Batch:
    """Pack ``examples`` into one block-diffusion SFT batch (LLaDA2's block-causal inference, one block per sequence).

    Each sequence draws a block size s from ``block_sizes`` and one *active* block k among the blocks of absolute
    positions [k·s, (k+1)·s) that hold part of its response (answer + end of turn), or, with probability
    ``eos_block_prob``, the all-EOS block right after them. The sequence is cut at the active block's end: under
    block-causal attention later positions cannot change it. Everything before the active block (prompt and any
    earlier part of the answer) stays clean, as committed blocks are at inference; ``response`` marks the
    response positions of the active block only, the ones the loss masks and scores."""
    ids, pos, resp, seq, lens, blocks = [], [], [], [], [], []
    for b, ex in enumerate(examples):
        if ex.suffix:
            raise ValueError("block-causal training has no infilling examples: no position sees a suffix")
        p = encoder.prompt_ids(ex.prompt, system_message(ex, rng, system_prob, systems))
        content = encoder.tok.encode(ex.answer).ids + [encoder.eot_id]
        s = rng.choice(block_sizes)
        first, last = len(p) // s, (len(p) + len(content) - 1) // s
        k = last + 1 if rng.random() < eos_block_prob else rng.randint(first, last)
        n = (k + 1) * s
        r = (content + [encoder.eos_id] * n)[:n - len(p)]
        ids += p + r
        pos += range(n)
        resp += [i >= max(len(p), k * s) for i in range(n)]
        seq += [b] * n
        lens.append(n)
        blocks.append(s)
    return Batch(torch.tensor(ids), torch.tensor(pos), lens, torch.tensor(resp), torch.tensor(seq), blocks)
