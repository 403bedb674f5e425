"""Family rules: how a model family's own reference ``generate`` lays out the canvas and commits, as the engine
applies it per sequence (one definition, read by the sequence, the commit policy, the packer and the engine).

LLaDA 1.x and LLaDA-MoE (``llada``, ``llada_moe``): blocks start at the end of the prompt; the exact preset is
LLaDA's ``generate`` (fixed commit schedule over the block's masks, no cache).

LLaDA2.0 / 2.1 (``llada2``, the published ``modeling_llada2_moe.py`` ``generate``):

- blocks are aligned to absolute positions: the canvas ends at ``ceil((P + max_tokens) / B) · B``, the first
  decoded block is block ``P // B`` (it may hold the prompt's tail, which is never masked);
- attention is block-causal (a position sees its own block and every earlier one), so a committed block's K/V
  never change: the prefix cache is **exact** and every preset uses it when the engine has a cache (a block's
  first step feeds the previous block, now final, and the current one; the other steps feed the block alone);
  the dual cache (a suffix the block cannot see) does not apply, nor does infilling (a suffix no position sees)
  or classifier-free guidance (no unconditional pass in the reference);
- each step commits the block's masked positions whose confidence is **strictly above** the threshold when
  there are at least the step's scheduled count of them, else the ``min(count, masked)`` most confident (the
  schedule splits ``block_length`` over the block's steps); the threshold is 0.95 (the reference default) unless
  the request sets one (the fast preset: 0.9); the mask token is never banned (a block whose proposals stay the
  mask token ends after its steps, as in the reference); ``remasking='random'`` and ``factor`` are not rules of
  this family;
- LLaDA2.1's editing (``editing_threshold``): at least one mask commits per step (the minimum count is 1), already
  generated positions of the block are rewritten where the prediction differs with confidence above the editing
  threshold, a step that changes nothing ends the block, and up to ``max_post_steps`` edit-only steps follow a
  full block. A block's tokens are final, streamed and checked for EOS, only once the block ends.

Dream (``dream``): the model itself applies Dream's one-position logits shift. A request with ``alg``
(``DiffusionParams.alg``: ``maskgit_plus``, ``topk_margin``, ``entropy``) is decoded by Dream's own
``diffusion_generate`` rule (one block over the whole canvas, the timestep schedule's commit counts, that
confidence; ``commit_counts.dream_k`` / ``commit_confidence.dream_confidence``), equal to it token for token at T = 0; ``origin``
(random reveals) and ``alg_temp`` (sampled positions) are not served. Without ``alg`` Dream is decoded with the
LLaDA block rules (low-confidence or random remasking, threshold/factor, prefix/dual caches), as Fast-dLLM
decodes it: the fast path for this family.
"""
from __future__ import annotations

import dataclasses

from unmask.server.config import ModelConfig
from unmask.server.engine.budget import round_up

LLADA2_THRESHOLD = 0.95
"""The LLaDA2 reference ``generate``'s default confidence threshold (its exact preset)."""


@dataclasses.dataclass(frozen=True)
class FamilyRules:
    family: str
    aligned_blocks: bool = False
    """Blocks are aligned to absolute canvas positions (LLaDA2), not to the end of the prompt."""
    block_causal: bool = False
    """The model attends block-causally: the prefix cache is exact and used by every preset."""
    min_count_threshold: float | None = None
    """Default threshold of the strict-threshold-with-minimum-count rule (LLaDA2), None for the LLaDA rules."""

    def unsupported(self, params, has_suffix: bool) -> tuple[str, str] | None:
        """(message, field) naming a request setting this family cannot run, or None. ``params``: DiffusionParams."""
        if params.alg is not None and self.family != "dream":
            return f"alg is Dream's diffusion_generate rule; this is a {self.family} model", "alg"
        if params.editing_threshold is not None:
            if self.min_count_threshold is None:
                return f"editing_threshold is LLaDA2.1's rule; this is a {self.family} model", "editing_threshold"
            if params.structured_outputs is not None:
                return "editing_threshold cannot be combined with a structured-output constraint", "editing_threshold"
        if not self.block_causal:
            return None
        if params.cache == "dual":
            return ("cache='dual' does not apply to block-causal models (no block sees the positions after it); "
                    "every preset already uses the exact prefix cache", "cache")
        if has_suffix:
            return "infilling (suffix) does not apply to block-causal models: no position sees the suffix", "suffix"
        if params.cfg_scale > 0:
            return "cfg_scale is not supported for block-causal models", "cfg_scale"
        if params.remasking != "low_confidence":
            return f"remasking={params.remasking!r} is not a rule of the {self.family} family", "remasking"
        if params.factor is not None:
            return f"factor is not a rule of the {self.family} family; set threshold instead", "factor"
        return None

    def layout(self, prompt_len: int, params) -> tuple[int, int]:
        """(first block's canvas position, end of the generation region) for a prompt of ``prompt_len`` tokens."""
        b = params.block_length
        if self.aligned_blocks:
            return (prompt_len // b) * b, round_up(prompt_len + params.max_tokens, b)
        return prompt_len, prompt_len + params.canvas_length

    def threshold(self, params) -> float | None:
        """The strict threshold a sequence of this family commits with, or None (the LLaDA rules)."""
        if self.min_count_threshold is None:
            return None
        return params.threshold if params.threshold is not None else self.min_count_threshold


def rules_for(cfg: ModelConfig) -> FamilyRules:
    """The decoding rules of ``cfg``'s family."""
    if cfg.family == "llada2":
        return FamilyRules("llada2", aligned_blocks=True, block_causal=cfg.block_causal,
                           min_count_threshold=LLADA2_THRESHOLD)
    return FamilyRules(cfg.family)


LLADA_RULES = FamilyRules("llada")
"""The default (LLaDA 1.x) rules, for sequences built without a model config (unit tests)."""
