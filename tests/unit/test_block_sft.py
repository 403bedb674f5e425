"""LLaDA2's training recipe pieces: the one-active-block SFT batches match block-causal inference (earlier blocks
clean, the active block's response positions the only ones scored, sequences cut at the block's end), the loss
runs the model block-causally, and the expert bias is balanced without a gradient."""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from recipes import configs, objective, tasks, tokenizer_build
from recipes.sft_data import ChatEncoder, make_block_batch
from unmask.server.config import from_dict
from unmask.server.models.registry import build_model

ASSET = Path(__file__).resolve().parents[2] / "server" / "assets" / "tiny-llada2-instruct"


@pytest.fixture(scope="module")
def encoder():
    return ChatEncoder(ASSET, "llada2")


def _batch(encoder, n=24, sizes=(8, 16), seed=0):
    rng = random.Random(seed)
    exs = [tasks.sample(t, rng, "train") for t in rng.choices(list(tasks.TASKS), k=n)]
    return exs, make_block_batch(encoder, exs, rng, 0.2, tokenizer_build.SYSTEM_PROMPTS, sizes)


def test_each_sequence_trains_one_block_after_clean_context(encoder):
    exs, b = _batch(encoder)
    assert b.attn_blocks is not None and set(b.attn_blocks) <= {8, 16}
    role_close = encoder.tok.token_to_id("</role>")
    start, eos_blocks = 0, 0
    for ex, n, s in zip(exs, b.seq_lens, b.attn_blocks):
        ids, resp = b.input_ids[start:start + n].tolist(), b.response[start:start + n].tolist()
        assert n % s == 0 and (b.positions[start:start + n] == torch.arange(n)).all()
        plen = max(i for i, t in enumerate(ids) if t == role_close) + 1  # the prompt ends with </role>
        content = encoder.tok.encode(ex.answer).ids + [encoder.eot_id]
        assert ids[plen:] == (content + [encoder.eos_id] * n)[:n - plen]  # answer, end of turn, EOS: all clean
        k, last = n // s - 1, (plen + len(content) - 1) // s  # the active block is the last one kept
        assert plen // s <= k <= last + 1
        assert resp == [i >= max(plen, k * s) for i in range(n)]  # only its response positions are scored
        eos_blocks += k == last + 1
        start += n
    assert 0 < eos_blocks < len(exs)  # some sequences train the all-EOS block after the answer


def test_batches_are_a_function_of_the_rng(encoder):
    _, a = _batch(encoder, seed=3)
    _, b = _batch(encoder, seed=3)
    assert torch.equal(a.input_ids, b.input_ids) and a.attn_blocks == b.attn_blocks


def _tiny_model():
    tok = Tokenizer.from_file(str(ASSET / "tokenizer.json"))
    raw = configs.make_config("llada2", tok, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=1, head_dim=16, moe_intermediate_size=16, intermediate_size=32)
    cfg = from_dict(raw, {t: tok.token_to_id(t) for t in tokenizer_build.SPECIALS["llada2"]})
    return cfg, build_model(cfg, "cpu", torch.float32, init_std=0.02, seed=0)


def test_recipe_config_builds_a_block_causal_llada2():
    cfg, model = _tiny_model()
    assert any(hasattr(m, "expert_bias") for m in model.modules()) and hasattr(model.blocks[0].ffn, "gate_up_proj")
    assert cfg.family == "llada2" and cfg.attention_pattern == "block_causal" and cfg.routing == "sigmoid_grouped"
    assert cfg.rotary_dim == cfg.head_dim // 2 and cfg.first_k_dense == 1 and cfg.num_shared_experts == 1


def test_loss_is_block_causal_and_the_bias_is_balanced_without_gradient(encoder):
    cfg, model = _tiny_model()
    balance = objective.ExpertBiasBalance(model, rate=0.01)
    moe = [m for m in model.modules() if hasattr(m, "expert_bias")]
    assert moe and all(not m.expert_bias.requires_grad and not m.expert_bias.any() for m in moe)
    _, batch = _batch(encoder, n=6, sizes=(8,))
    gen = torch.Generator().manual_seed(0)
    loss, _ = objective.sft_loss(model, batch, cfg.mask_token_id, cfg.eos_token_id, gen)
    loss.backward()
    assert all(m.expert_bias.grad is None for m in moe)
    loads = [load.clone() for _, load in balance.loads]
    worst = balance.update()
    assert worst == max(float(x.max() / x.mean()) for x in loads) > 1.0
    for m, load in zip(moe, loads):
        expected = 0.01 * torch.sign(load.mean() - load)
        assert torch.equal(m.expert_bias.detach(), expected)
    # the same loss with the mask forced bidirectional differs: the batch's block sizes reach the attention
    gen = torch.Generator().manual_seed(0)
    full = objective.sft_loss(model, dataclasses.replace(batch, attn_blocks=None), cfg.mask_token_id,
                              cfg.eos_token_id, gen)[0]
    assert not torch.allclose(loss.detach(), full.detach())
