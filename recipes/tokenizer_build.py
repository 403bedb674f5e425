"""Build the tiny checkpoints' tokenizers: one byte-level BPE vocabulary, two special-token families.

- ``llada`` mirrors LLaDA-8B-Instruct (LLADA-SPEC.md §2): ``<|startoftext|>`` bos, ``<|endoftext|>``
  eos and pad, ``<|mdm_mask|>`` mask, ``<|start_header_id|>`` / ``<|end_header_id|>`` / ``<|eot_id|>``,
  and a chat template that renders exactly like the real one (bos on the first message only, trimmed
  content, the assistant header always appended, ``add_generation_prompt`` ignored).
- ``llada_moe`` mirrors LLaDA-MoE (§4): ``<|endoftext|>`` eos, ``<|mask|>`` mask, ``<|role_end|>`` end
  of turn, ``<role>``/``</role>`` tags, chat format ``<role>HUMAN</role>{content}<|role_end|>...
  <role>ASSISTANT</role>`` with SYSTEM / HUMAN / ASSISTANT roles.
- ``llada2`` mirrors LLaDA2.0 (``inclusionAI/LLaDA2.0-mini``, the Ling 2.0 tokenizer): the same special tokens
  as ``llada_moe`` (``<|mask|>`` mask, ``<|role_end|>`` end of turn, ``<role>`` tags) and the Ling 2.0 chat
  format, whose SYSTEM turn is always present and ends with the reasoning switch ``detailed thinking off``
  (a caller's system message goes first in that turn, followed by a newline).

As in the real tokenizers, special tokens sit after the ordinary vocabulary and no BOS/EOS is added
by ``encode``. Digits are always single tokens (helps arithmetic).
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from recipes import tasks
from recipes.lexicon import COUPLETS, FACTS

BPE_VOCAB = 952
"""Ordinary (byte-level BPE) vocabulary size, the 256 byte symbols included."""
SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a helpful AI assistant.", "detailed thinking off",
                  "Answer with the result only.", "You are a precise assistant. Reply briefly.")
"""System messages the recipe mixes into training so a system turn does not derail the model."""

SPECIALS = {
    "llada": ["<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|start_header_id|>", "<|end_header_id|>",
              "<|eot_id|>", "<role>", "</role>"],
    "llada_moe": ["<|startoftext|>", "<|endoftext|>", "<|mask|>", "<role>", "</role>", "<|role_end|>"],
    "llada2": ["<|startoftext|>", "<|endoftext|>", "<|mask|>", "<role>", "</role>", "<|role_end|>"],
}
"""Special tokens per family, in id order after the BPE vocabulary."""

LLADA_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first -%}{{ bos_token }}{%- endif -%}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
)
"""LLaDA-8B-Instruct's template semantics (own wording): always ends with the assistant header."""

LLADA_MOE_CHAT_TEMPLATE = (
    "{%- set names = {'system': 'SYSTEM', 'user': 'HUMAN', 'assistant': 'ASSISTANT'} -%}"
    "{%- for message in messages -%}"
    "{{ '<role>' + names.get(message['role'], message['role'] | upper) + '</role>' + message['content']"
    " + '<|role_end|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt is not defined or add_generation_prompt -%}{{ '<role>ASSISTANT</role>' }}"
    "{%- endif -%}"
)
"""LLaDA-MoE (Ling-style) role tags; the assistant tag is appended unless add_generation_prompt=False."""

LLADA2_CHAT_TEMPLATE = (
    "{%- set names = {'user': 'HUMAN', 'assistant': 'ASSISTANT'} -%}"
    "{{ '<role>SYSTEM</role>' }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}{{ messages[0]['content'] + '\\n' }}{%- endif -%}"
    "{{ 'detailed thinking off<|role_end|>' }}"
    "{%- for message in messages -%}"
    "{%- if message['role'] != 'system' -%}"
    "{{ '<role>' + names.get(message['role'], message['role'] | upper) + '</role>' + message['content']"
    " + '<|role_end|>' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt is not defined or add_generation_prompt -%}{{ '<role>ASSISTANT</role>' }}"
    "{%- endif -%}"
)
"""LLaDA2.0 (Ling 2.0) semantics: one SYSTEM turn always first, ending with ``detailed thinking off``."""


def _corpus(seed: int = 0, n_examples: int = 30000):
    """Text the BPE merges are learned from: training prompts/answers, the tables, chat scaffolding."""
    for ex in itertools.islice(tasks.train_stream(seed), n_examples):
        yield ex.prompt
        yield ex.answer
    for _ in range(100):
        for country, capital in FACTS:
            yield f"The capital of {country} is {capital}."
        for a, b in COUPLETS:
            yield f"{a}\n{b}"
        for s in SYSTEM_PROMPTS:
            yield s
        yield "user\n\nassistant\n\nsystem\n\nSYSTEM HUMAN ASSISTANT"


def build_base() -> Tokenizer:
    """The shared byte-level BPE tokenizer (no special tokens yet). Deterministic."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


def build(family: str) -> Tokenizer:
    """The full tokenizer of one family: base BPE + that family's special tokens appended."""
    tok = build_base()
    tok.add_special_tokens(SPECIALS[family])
    return tok


def _added_tokens_decoder(tok: Tokenizer, family: str) -> dict:
    return {str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                      "single_word": False, "special": True} for t in SPECIALS[family]}


def tokenizer_config(tok: Tokenizer, family: str, max_len: int) -> dict:
    """tokenizer_config.json contents (PreTrainedTokenizerFast, no automatic bos/eos)."""
    common = {"add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
              "added_tokens_decoder": _added_tokens_decoder(tok, family), "model_max_length": max_len,
              "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
              "pad_token": "<|endoftext|>", "bos_token": "<|startoftext|>"}
    if family == "llada":
        return {**common, "additional_special_tokens": ["<role>", "</role>", "<|start_header_id|>",
                                                        "<|end_header_id|>", "<|eot_id|>"],
                "chat_template": LLADA_CHAT_TEMPLATE}
    template = LLADA2_CHAT_TEMPLATE if family == "llada2" else LLADA_MOE_CHAT_TEMPLATE
    return {**common, "mask_token": "<|mask|>", "additional_special_tokens": ["<role>", "</role>", "<|role_end|>"],
            "chat_template": template}


def special_tokens_map(family: str) -> dict:
    """special_tokens_map.json contents."""
    out = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    if family != "llada":
        out["mask_token"] = "<|mask|>"
    return out


def write(out_dir: str | Path, family: str, max_len: int) -> Tokenizer:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build(family)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(tok, family, max_len), indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special_tokens_map(family), indent=2) + "\n")
    return tok
