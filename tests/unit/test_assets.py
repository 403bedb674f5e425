"""The embedded checkpoints (server/assets/): HF format, tokens and chat templates as specified, and
they really answer held-out prompts (a floor well below the accuracy in their model cards)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recipes.tasks import TASKS, check, heldout_set
from unmask.server.config import ModelConfig
from unmask.server.models.loader import load_model
from unmask.server.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "server" / "assets"
DENSE, MOE = ASSETS / "tiny-llada-instruct", ASSETS / "tiny-llada-moe-instruct"
LLADA2 = ASSETS / "tiny-llada2-instruct"
FLOOR = 0.75
"""Fraction of the sampled held-out prompts (every task) that must be answered exactly: well below the cards'
figures, 50 prompts per task: dense 94-100%, MoE 85-100% per task."""
FLOORS = {"tiny-llada2-instruct": 0.4}
"""Models whose card reports less: LLaDA2-style 54.0% overall (one training stage; copying and arithmetic unlearned)."""
PER_TASK = 4


def test_assets_fit_the_size_budget():
    total = sum(f.stat().st_size for d in (DENSE, MOE, LLADA2) for f in d.iterdir())
    assert total <= 25 * 2**20


@pytest.mark.parametrize("path", [DENSE, MOE, LLADA2], ids=lambda p: p.name)
def test_checkpoint_files_and_loader(path):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (path / name).is_file(), name
    cfg = ModelConfig.from_pretrained(path)
    model = load_model(path, "cpu", torch.float32)
    model = model[0] if isinstance(model, tuple) else model
    assert sum(p.numel() for p in model.parameters()) > 100_000
    raw = json.loads((path / "config.json").read_text())
    tok = Tokenizer.from_pretrained(path)
    assert cfg.eos_token_id == tok.token_to_id("<|endoftext|>") == raw["eos_token_id"] == raw["pad_token_id"]
    if path == DENSE:
        assert raw["architectures"] == ["LLaDAModelLM"] and not cfg.is_moe
        assert raw["mask_token_id"] == cfg.mask_token_id == tok.token_to_id("<|mdm_mask|>")
        assert cfg.eot_token_id == tok.token_to_id("<|eot_id|>")
    elif path == LLADA2:
        assert raw["architectures"] == ["LLaDA2MoeModelLM"] and cfg.is_moe and cfg.attention_pattern == "block_causal"
        assert "mask_token_id" not in raw and cfg.mask_token_id == tok.token_to_id("<|mask|>")
        assert cfg.routing == "sigmoid_grouped" and cfg.n_group > 1 and cfg.num_shared_experts == 1
        assert cfg.first_k_dense == 1 and cfg.rotary_dim < cfg.head_dim and cfg.num_kv_heads < cfg.num_heads
        assert cfg.eot_token_id == tok.token_to_id("<|role_end|>")
    else:
        assert raw["architectures"] == ["LLaDAMoEModelLM"] and cfg.is_moe
        assert "mask_token_id" not in raw and cfg.mask_token_id == tok.token_to_id("<|mask|>")
        assert cfg.num_experts >= 8 and cfg.num_experts_per_tok >= 2
        assert cfg.eot_token_id == tok.token_to_id("<|role_end|>")
    assert cfg.vocab_size >= tok.vocab_size


def test_dense_chat_template_renders_like_llada_8b_instruct():
    tok = Tokenizer.from_pretrained(DENSE)
    assert tok.render_chat([{"role": "user", "content": " Hi \n"}]) == (
        "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A"},
            {"role": "assistant", "content": "B"}, {"role": "user", "content": "C"}]
    text = tok.render_chat(msgs, add_generation_prompt=False)  # the real template ignores the flag
    assert text.count("<|startoftext|>") == 1 and text.startswith("<|startoftext|><|start_header_id|>system")
    assert text.endswith("C<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert tok.encode("<|mdm_mask|>") == [tok.token_to_id("<|mdm_mask|>")]
    assert tok.encode("12") == [tok.token_to_id("1"), tok.token_to_id("2")]  # digits are single tokens


def test_moe_chat_template_uses_llada_moe_roles():
    tok = Tokenizer.from_pretrained(MOE)
    assert tok.render_chat([{"role": "user", "content": "Hi"}]) == \
        "<role>HUMAN</role>Hi<|role_end|><role>ASSISTANT</role>"
    msgs = [{"role": "system", "content": "You are a helpful AI assistant."}, {"role": "user", "content": "A"},
            {"role": "assistant", "content": "B"}, {"role": "user", "content": "C"}]
    assert tok.render_chat(msgs) == (
        "<role>SYSTEM</role>You are a helpful AI assistant.<|role_end|><role>HUMAN</role>A<|role_end|>"
        "<role>ASSISTANT</role>B<|role_end|><role>HUMAN</role>C<|role_end|><role>ASSISTANT</role>")


@pytest.mark.parametrize("path", [MOE, LLADA2], ids=lambda p: p.name)
def test_ling_special_tokens_are_single_tokens(path):
    tok = Tokenizer.from_pretrained(path)
    for name in ("<|mask|>", "<|role_end|>", "<role>", "</role>", "<|endoftext|>"):
        assert tok.encode(name) == [tok.token_to_id(name)]


def test_llada2_chat_template_is_ling_2():
    tok = Tokenizer.from_pretrained(LLADA2)
    assert tok.render_chat([{"role": "user", "content": "Hi"}]) == (
        "<role>SYSTEM</role>detailed thinking off<|role_end|><role>HUMAN</role>Hi<|role_end|><role>ASSISTANT</role>")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "A"},
            {"role": "assistant", "content": "B"}, {"role": "user", "content": "C"}]
    assert tok.render_chat(msgs) == (
        "<role>SYSTEM</role>Be brief.\ndetailed thinking off<|role_end|><role>HUMAN</role>A<|role_end|>"
        "<role>ASSISTANT</role>B<|role_end|><role>HUMAN</role>C<|role_end|><role>ASSISTANT</role>")


@pytest.mark.parametrize("name", ["tiny-llada-instruct", "tiny-llada-moe-instruct", "tiny-llada2-instruct"])
def test_checkpoint_answers_heldout_prompts(name):
    from unmask import LLM, DiffusionParams

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    llm = LLM(model=name, device="cpu", dtype="float32")
    examples = heldout_set(PER_TASK, seed=11, tasks=TASKS)
    outs = llm.generate([[{"role": "user", "content": ex.prompt}] for ex in examples],
                        DiffusionParams(max_tokens=64, block_length=32, steps=64, temperature=0.0))
    right = [check(ex, out.text) for ex, out in zip(examples, outs)]
    assert sum(right) >= FLOORS.get(name, FLOOR) * len(examples), [
        (ex.prompt, out.text) for ex, out, ok in zip(examples, outs, right) if not ok]
