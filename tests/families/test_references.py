"""The LLaDA2 and Dream reference loops run on our float64 models; LLaDA2's windowed reference forward (the
published ``x[:, :window_end]``) and a full-canvas block-causal forward give the same tokens, which is why the
prefix cache is exact for this family."""
import random

import pytest
import torch

from benchmarks.reference import dream_generate, llada2_generate
from benchmarks.reference.checkpoints import EOS_ID, MASK_ID
from unmask.server.models.attention_meta import AttentionMetadata, packed_positions


def forward(model, blocks: bool):
    def run(x, block_length=None):
        n = x.shape[1]
        meta = AttentionMetadata.packed([n])
        if blocks:
            meta.attn_blocks = torch.tensor([block_length], dtype=torch.int32)
        return model.compute_logits(model(x[0], packed_positions([n]), meta))[None]
    return run


def cut_at_stop(tokens: list[int], stop_ids) -> list[int]:
    """A reference canvas's answer as the engine returns it: the tokens before the first stop id."""
    out = []
    for t in tokens:
        if t in stop_ids:
            break
        out.append(t)
    return out


def full_canvas(model, total):
    """Forward of the whole aligned canvas (the suffix beyond the window masked), cut back to the window."""
    def run(x, block_length):
        pad = torch.full((1, total), MASK_ID, dtype=torch.long)
        pad[:, :x.shape[1]] = x
        return forward(model, True)(pad, block_length)[:, :x.shape[1]]
    return run


@pytest.mark.parametrize("editing", [None, 0.6])
def test_llada2_windowed_equals_full_canvas(family_llm64, editing):
    model = family_llm64["llada2"].engine.model
    rng = random.Random(3)
    for _ in range(4):
        prompt = torch.tensor([[rng.randint(0, 63) for _ in range(rng.randint(1, 9))]])
        bl, gen = rng.choice([2, 4, 8]), rng.choice([4, 8, 12])
        kw = dict(gen_length=gen, block_length=bl, steps=rng.choice([1, 2, 4]), threshold=rng.choice([0.3, 0.9]),
                  editing_threshold=editing, max_post_steps=2, mask_id=MASK_ID, eos_id=EOS_ID,
                  eos_early_stop=rng.random() < 0.5)
        total = -(-(prompt.shape[1] + gen) // bl) * bl
        a = llada2_generate.generate(forward(model, True), prompt, **kw)
        b = llada2_generate.generate(full_canvas(model, total), prompt, **kw)
        assert torch.equal(a, b)
        assert a.shape[1] == total and torch.equal(a[:, :prompt.shape[1]], prompt)


@pytest.mark.parametrize("alg", dream_generate.ALGORITHMS)
def test_dream_reference_fills_the_canvas(family_llm64, alg):
    model = family_llm64["dream"].engine.model
    prompt = torch.tensor([[5, 6, 7, 8]])
    x = dream_generate.diffusion_generate(forward(model, False), prompt, max_new_tokens=8, steps=8, alg=alg,
                                          mask_id=MASK_ID, generator=torch.Generator().manual_seed(0))
    assert x.shape == (1, 12) and torch.equal(x[:, :4], prompt)
    assert (x[0, 4:] != MASK_ID).any()
