"""Random (prompt, settings) cases and the oracle run used by the exact-mode tests."""
from __future__ import annotations

import random

import torch

from tests.helpers import EOS_ID, EOT_ID, MASK_ID
from benchmarks.reference.llada_generate import generate
from unmask import DiffusionParams
from unmask.server.models.attention_meta import AttentionMetadata, packed_positions


def random_case(rng: random.Random, temperature: float = 0.0, short: bool = False, **over):
    """-> (prompt ids, DiffusionParams) with random lengths, schedule, remasking, CFG and EOS flags.
    ``short`` keeps at most 2 blocks and 8 steps per block (for tests that run many cases)."""
    prompt = [rng.randint(0, 63) for _ in range(rng.randint(1, 12))]
    bl = rng.choice([1, 2, 4, 8])
    nb = rng.randint(1, 2 if short else 3)
    spb = rng.choice([1, 2, bl, bl + 1] if short else [1, 2, bl, bl + 1, 2 * bl])
    kw = dict(max_tokens=bl * nb, block_length=bl, steps=spb * nb, remasking=rng.choice(["low_confidence", "random"]),
              cfg_scale=rng.choice([0.0, 0.0, 0.5, 2.0]), seed=rng.randint(0, 10**6), temperature=temperature,
              logits_eos_inf=rng.random() < 0.15, confidence_eos_eot_inf=rng.random() < 0.15,
              early_stop=rng.random() < 0.7)
    kw.update(over)
    return prompt, DiffusionParams(**kw)


def oracle(model, prompt: list[int], p: DiffusionParams, suffix: list[int] | None = None) -> list[int]:
    """Reference generate() at batch 1 (with ``suffix``: the infilling extension) -> generated ids (the middle)
    cut at the first EOS/EoT."""
    def forward(x):
        b, length = x.shape
        h = model(x.reshape(-1), packed_positions([length] * b), AttentionMetadata.packed([length] * b))
        return model.compute_logits(h).view(b, length, -1)

    x = generate(forward, torch.tensor([prompt]), steps=p.steps, gen_length=p.max_tokens, block_length=p.block_length,
                 temperature=p.temperature, cfg_scale=p.cfg_scale, remasking=p.remasking, mask_id=MASK_ID,
                 eos_id=EOS_ID, eot_id=EOT_ID, logits_eos_inf=p.logits_eos_inf,
                 confidence_eos_eot_inf=p.confidence_eos_eot_inf, generator=torch.Generator().manual_seed(p.seed),
                 suffix=torch.tensor([suffix]) if suffix else None)
    if suffix:
        assert x[0, len(prompt) + p.max_tokens:].tolist() == suffix, "the suffix must never change"
    gen = x[0, len(prompt):len(prompt) + p.max_tokens].tolist()
    cut = next((i for i, t in enumerate(gen) if t in (EOS_ID, EOT_ID)), len(gen))
    return gen[:cut]
