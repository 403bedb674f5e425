"""DiffusionParams: the per-request settings of block diffusion (LLADA-SPEC.md §1, §5).

``preset="exact"`` is LLaDA's reference ``generate()`` (no cache, fixed commit schedule);
``preset="fast"`` fills unset fields with Fast-dLLM's settings: prefix cache + confidence threshold 0.9
(Fast-dLLM v1, arXiv 2505.22618). Every invalid combination raises ``ValueError`` naming the field first
(``threshold=2 is not valid; ...``), so the HTTP layer can report the offending parameter. The budget rule
that turns ``max_tokens`` / ``block_length`` / ``steps`` into a canvas is ``budget.plan_canvas``.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from unmask.server.engine.budget import check_int, plan_canvas, round_up
from unmask.server.engine.constraint import StructuredOutputs

REMASKING = ("low_confidence", "random")
CACHE_MODES = ("none", "prefix", "dual")
PRESETS = ("exact", "fast")
FAST_THRESHOLD = 0.9
DREAM_ALGORITHMS = ("maskgit_plus", "topk_margin", "entropy")
"""Dream's ``diffusion_generate`` confidence algorithms the engine serves (``alg``; Dream models only)."""
COMMIT_RULE_FIELDS = ("preset", "cache", "threshold", "factor", "alg")
"""The fields that choose how a step commits; a request that sets one takes no default for the others."""
SEED_SPACE = 1 << 63
"""Seeds are reduced modulo 2^63 (request seeds may be any 64-bit integer, negative included)."""


@dataclasses.dataclass(frozen=True)
class DiffusionParams:
    max_tokens: int = 64
    """Most tokens returned (the budget). The canvas is this rounded up to a block multiple (budget rule)."""
    block_length: int | None = None
    """Semi-autoregressive block size. Default: min(32, max_tokens)."""
    steps: int | None = None
    """Total denoising steps over the canvas, rounded up to a multiple of the number of blocks.
    Default: the canvas length (one commit per step)."""
    temperature: float = 0.0
    """0 = greedy argmax; > 0 = Gumbel-max sampling from softmax(logits / T) in float64."""
    remasking: str = "low_confidence"
    """Commit order inside a block: 'low_confidence' (most confident first) or 'random'."""
    cfg_scale: float = 0.0
    """Unsupervised classifier-free guidance weight w: logits = un + (w + 1)(cond − un). Needs cache='none'."""
    seed: int | None = None
    """Seeds the request's noise (Gumbel and random remasking); None = drawn at admission. Reduced mod 2^63."""
    stop: tuple[str, ...] = ()
    """Stop strings: the text is cut before the first one and the request finishes with 'stop'."""
    include_stop_str_in_output: bool = False
    """Keep the matched stop string at the end of the text (vLLM)."""
    skip_special_tokens: bool = True
    """Leave special tokens out of the decoded text."""
    logits_eos_inf: bool = False
    """Reference flag: the EOS logit is −inf before sampling (EOS is never produced)."""
    confidence_eos_eot_inf: bool = False
    """Reference flag with the reference's actual behaviour (LLADA-SPEC.md §1.5)."""
    threshold: float | None = None
    """Fast-dLLM parallel decoding: commit every masked block position with confidence ≥ τ (plus the best)."""
    factor: float | None = None
    """Fast-dLLM factor rule: accept the n most confident while c_n ≥ 1 − f/(n+1)."""
    cache: str | None = None
    """'none' (exact), 'prefix' or 'dual' (Fast-dLLM caches, refreshed at each block start)."""
    early_stop: bool = True
    """Finish as soon as the final prefix holds EOS/EoT (exact: finished tokens never change)."""
    preset: str | None = None
    """'exact' or 'fast' (see the module docstring); None behaves as 'exact' unless fast fields are set."""
    top_p: float = 1.0
    """At T > 0: sample each masked position from its smallest token set of probability ≥ top_p (1 = off).
    Sampling controls reshape the distribution the token is drawn from *and* the one its remasking
    confidence is read from (the processed logits); at T = 0 top_p/top_k/min_p do nothing (greedy, vLLM)."""
    top_k: int = 0
    """At T > 0: sample from the k most likely tokens of each masked position (0 or −1 = off)."""
    min_p: float = 0.0
    """At T > 0: drop tokens whose probability is below min_p × the position's most likely one (0 = off)."""
    logit_bias: tuple[tuple[int, float], ...] = ()
    """(token id, bias) pairs added to every masked position's logits (a dict is accepted)."""
    presence_penalty: float = 0.0
    """Subtracted from the logits of every token present in the prompt, suffix or committed tokens."""
    frequency_penalty: float = 0.0
    """× its count over the prompt, suffix and committed tokens, subtracted from a token's logits."""
    repetition_penalty: float = 1.0
    """Tokens present in the prompt, suffix or committed tokens: positive logits ÷ p, negative × p (1 = off).
    Penalties are counted on the canvas before the step and applied to every masked position of the step."""
    min_tokens: int = 0
    """EOS, EoT and the stop ids are banned at the first min_tokens generation positions."""
    stop_token_ids: tuple[int, ...] = ()
    """More token ids that end the generation like EOS (cut before them, finish reason 'stop')."""
    ignore_eos: bool = False
    """vLLM's meaning: exactly max_tokens come back; EOS, EoT and every stop id are banned, nothing stops early."""
    logprobs: int | None = None
    """Per output token: its log-probability at the step that committed it plus this many top alternatives
    (0–20); None = not computed (no cost)."""
    editing_threshold: float | None = None
    """LLaDA2.1 models: token editing. At every step, already generated positions of the current block whose
    prediction differs from their token with confidence > this are rewritten; at least one mask commits per step;
    once the block has no mask, up to ``max_post_steps`` edit-only steps run (stopping at a step that changes
    nothing). Tokens are final, and streamed, once their block ends. None = no editing."""
    max_post_steps: int = 16
    """Edit-only steps after a block is full (``editing_threshold``), the reference's default 16."""
    alg: str | None = None
    """Dream models: decode with Dream's ``diffusion_generate`` rule instead of LLaDA's: one block over the whole
    canvas, ``int(masked · (1 − s/t))`` commits at each step of the timestep schedule ``linspace(1, 1e-3,
    steps + 1)`` (the rest at the last step), ranked by ``maskgit_plus`` (top probability), ``topk_margin`` (top-1
    minus top-2 probability) or ``entropy`` (negative entropy). None = the LLaDA block rules."""
    structured_outputs: StructuredOutputs | None = None
    """The output must match this JSON schema / regex / choice / grammar (constraint.py; a dict of its fields is
    accepted). Constrained sequences commit contiguous runs from the leftmost masked position (commit_policy)."""

    def __post_init__(self) -> None:
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r} is not valid; use one of {PRESETS}")
        self._check_alg()
        plan = plan_canvas(self.max_tokens, self.block_length, self.steps)
        object.__setattr__(self, "block_length", plan.block_length)
        object.__setattr__(self, "steps", plan.steps)
        self._check_sampling()
        _check_controls(self)
        _check_structured(self)
        self._resolve_preset()

    def _check_alg(self) -> None:
        if self.alg is None:
            return
        if self.alg not in DREAM_ALGORITHMS:
            hint = (" ('origin' reveals positions at random and is not served; its tokens come from the same model)"
                    if self.alg == "origin" else "")
            raise ValueError(f"alg={self.alg!r} is not valid; use one of {DREAM_ALGORITHMS}{hint}")
        if self.block_length is not None and self.block_length != self.max_tokens:
            raise ValueError(f"block_length={self.block_length!r} is not valid with alg: Dream's schedule decodes one "
                             f"block over the whole canvas (leave it unset or equal to max_tokens)")
        object.__setattr__(self, "block_length", self.max_tokens)
        if self.preset == "fast" or self.cache not in (None, "none") or self.threshold is not None or \
                self.factor is not None or self.remasking != "low_confidence" or self.cfg_scale > 0:
            raise ValueError("alg is Dream's own commit rule: it takes no preset 'fast', cache, threshold, factor, "
                             "random remasking or cfg_scale")

    def _check_sampling(self) -> None:
        if not _finite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature={self.temperature!r} is not valid; use a finite value ≥ 0")
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking={self.remasking!r} is not valid; use one of {REMASKING}")
        if not _finite(self.cfg_scale) or self.cfg_scale < 0:
            raise ValueError(f"cfg_scale={self.cfg_scale!r} is not valid; use a finite value ≥ 0")
        if self.seed is not None:
            if not isinstance(self.seed, int) or isinstance(self.seed, bool):
                raise ValueError(f"seed={self.seed!r} is not valid; use an integer")
            object.__setattr__(self, "seed", self.seed % SEED_SPACE)
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop must be a list of non-empty strings")
        if self.threshold is not None and (not _finite(self.threshold) or not 0 < self.threshold <= 1):
            raise ValueError(f"threshold={self.threshold!r} is not valid; use a value in (0, 1]")
        if self.factor is not None and (not _finite(self.factor) or self.factor <= 0):
            raise ValueError(f"factor={self.factor!r} is not valid; use a finite value > 0")
        if self.editing_threshold is not None and (not _finite(self.editing_threshold)
                                                   or not 0 < self.editing_threshold <= 1):
            raise ValueError(f"editing_threshold={self.editing_threshold!r} is not valid; use a value in (0, 1]")
        if not isinstance(self.max_post_steps, int) or isinstance(self.max_post_steps, bool) or self.max_post_steps < 0:
            raise ValueError(f"max_post_steps={self.max_post_steps!r} is not valid; use an integer ≥ 0")
        if self.threshold is not None and self.factor is not None:
            raise ValueError("threshold and factor are alternative commit rules; set at most one")
        if self.cache is not None and self.cache not in CACHE_MODES:
            raise ValueError(f"cache={self.cache!r} is not valid; use one of {CACHE_MODES}")

    def _resolve_preset(self) -> None:
        if self.preset == "fast":
            if self.cache is None:
                object.__setattr__(self, "cache", "prefix")
            if self.threshold is None and self.factor is None:
                object.__setattr__(self, "threshold", FAST_THRESHOLD)
        elif self.preset == "exact" and (self.cache not in (None, "none") or self.threshold or self.factor):
            raise ValueError("preset='exact' is the reference algorithm: it cannot take cache, threshold or factor")
        if self.cache is None:
            object.__setattr__(self, "cache", "none")
        if self.cfg_scale > 0 and self.cache != "none":
            raise ValueError("cfg_scale > 0 needs cache='none' (the unconditional pass is not cached)")

    @property
    def canvas_length(self) -> int:
        """Generation positions appended to the prompt (max_tokens rounded up to a block multiple)."""
        return round_up(self.max_tokens, self.block_length)

    @property
    def num_blocks(self) -> int:
        return self.canvas_length // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    @property
    def parallel(self) -> bool:
        """True when commits follow a confidence rule (threshold/factor) instead of the fixed schedule."""
        return self.threshold is not None or self.factor is not None

    @property
    def uses_filters(self) -> bool:
        """top_p / top_k / min_p reshape this request's sampling distribution (only at T > 0)."""
        return self.temperature > 0 and (self.top_p < 1 or self.top_k > 0 or self.min_p > 0)

    @property
    def uses_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1)

    @property
    def bans_stops(self) -> bool:
        """EOS, EoT and the stop ids are banned at some generation positions (min_tokens or ignore_eos)."""
        return self.ignore_eos or self.min_tokens > 0

    @property
    def is_exact(self) -> bool:
        """True for the reference algorithm (outputs equal LLaDA generate())."""
        return self.cache == "none" and not self.parallel

    @classmethod
    def from_fields(cls, request: Mapping[str, Any], defaults: Mapping[str, Any] = ()) -> "DiffusionParams":
        """Params from a request's fields (None = not given) over ``defaults`` (generation_config.py): each
        field takes the request's value, else the default. A request that picks its own commit rule (preset,
        cache, threshold, factor, or CFG) takes none of the default rule's fields, so the two never mix."""
        merged = dict(defaults)
        if any(request.get(f) is not None for f in COMMIT_RULE_FIELDS) or (request.get("cfg_scale") or 0) > 0:
            for f in COMMIT_RULE_FIELDS:
                merged.pop(f, None)
        merged.update({k: v for k, v in request.items() if v is not None})
        return cls(**merged)

    def for_choice(self, index: int) -> "DiffusionParams":
        """Choice ``index`` of n: its own seed (seed + index) so n > 1 can differ when sampling."""
        if index == 0 or self.seed is None:
            return self
        return dataclasses.replace(self, seed=(self.seed + index) % SEED_SPACE)


MAX_LOGPROBS = 20


def _check_controls(p: DiffusionParams) -> None:
    """Sampling controls, bans and logprobs: ValueError naming the field first; normalises containers."""
    def bad(name, hint):
        raise ValueError(f"{name}={getattr(p, name)!r} is not valid; {hint}")

    if not _finite(p.top_p) or not 0 < p.top_p <= 1:
        bad("top_p", "use a value in (0, 1]")
    if not isinstance(p.top_k, int) or isinstance(p.top_k, bool) or p.top_k < -1:
        bad("top_k", "use -1 or 0 (off) or an integer ≥ 1")
    object.__setattr__(p, "top_k", max(p.top_k, 0))
    if not _finite(p.min_p) or not 0 <= p.min_p <= 1:
        bad("min_p", "use a value in [0, 1]")
    for name in ("presence_penalty", "frequency_penalty"):
        if not _finite(getattr(p, name)) or abs(getattr(p, name)) > 2:
            bad(name, "use a value in [-2, 2]")
    if not _finite(p.repetition_penalty) or p.repetition_penalty <= 0:
        bad("repetition_penalty", "use a finite value > 0")
    bias = p.logit_bias.items() if isinstance(p.logit_bias, Mapping) else p.logit_bias
    bias = tuple((t, v) for t, v in bias)
    if any(not _token(t) or not _finite(v) or abs(v) > 100 for t, v in bias):
        bad("logit_bias", "use token ids ≥ 0 mapped to biases in [-100, 100]")
    object.__setattr__(p, "logit_bias", bias)
    object.__setattr__(p, "stop_token_ids", tuple(p.stop_token_ids))
    if any(not _token(t) for t in p.stop_token_ids):
        bad("stop_token_ids", "use token ids ≥ 0")
    check_int("min_tokens", p.min_tokens, 0)
    if p.min_tokens > p.max_tokens:
        bad("min_tokens", f"it must not exceed max_tokens={p.max_tokens}")
    if not isinstance(p.ignore_eos, bool):
        bad("ignore_eos", "use true or false")
    if p.logprobs is not None and (not _token(p.logprobs) or p.logprobs > MAX_LOGPROBS):
        bad("logprobs", f"use an integer in [0, {MAX_LOGPROBS}] (top alternatives per token) or None")


def _token(t) -> bool:
    return isinstance(t, int) and not isinstance(t, bool) and t >= 0


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_structured(p: DiffusionParams) -> None:
    """structured_outputs: a StructuredOutputs (or a dict of its fields); not with ignore_eos (the grammar ends
    the answer, ignore_eos forbids ending it)."""
    so = p.structured_outputs
    if so is None:
        return
    if isinstance(so, Mapping):
        try:
            so = StructuredOutputs(**so)
        except TypeError as exc:
            raise ValueError(f"structured_outputs is not valid: {exc}") from None
        object.__setattr__(p, "structured_outputs", so)
    if not isinstance(so, StructuredOutputs):
        raise ValueError(f"structured_outputs={so!r} is not valid; use a StructuredOutputs or a dict of its fields")
    if p.ignore_eos:
        raise ValueError("structured_outputs cannot be combined with ignore_eos: a completed grammar ends the answer")
