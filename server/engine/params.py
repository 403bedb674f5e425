"""DiffusionParams: the per-request sampling settings of block diffusion (LLADA-SPEC.md §1, §5).

``preset="exact"`` is LLaDA's reference ``generate()`` (no cache, fixed commit schedule);
``preset="fast"`` fills unset fields with Fast-dLLM's settings: prefix cache + confidence threshold 0.9
(Fast-dLLM v1, arXiv 2505.22618). Every invalid combination raises ``ValueError`` saying what is valid.
"""
from __future__ import annotations

import dataclasses
import math

REMASKING = ("low_confidence", "random")
CACHE_MODES = ("none", "prefix", "dual")
PRESETS = ("exact", "fast")
FAST_THRESHOLD = 0.9


@dataclasses.dataclass(frozen=True)
class DiffusionParams:
    max_tokens: int = 64
    """Generation length (LLaDA ``gen_length``): masked positions appended to the prompt."""
    block_length: int | None = None
    """Semi-autoregressive block size; must divide max_tokens. Default: 32 if it divides, else max_tokens."""
    steps: int | None = None
    """Total denoising steps for the fixed schedule; a multiple of the number of blocks. Default: max_tokens."""
    temperature: float = 0.0
    """0 = greedy argmax; > 0 = Gumbel-max sampling from softmax(logits / T) in float64."""
    remasking: str = "low_confidence"
    """Commit order inside a block: 'low_confidence' (most confident first) or 'random'."""
    cfg_scale: float = 0.0
    """Unsupervised classifier-free guidance weight w: logits = un + (w + 1)(cond − un). Needs cache='none'."""
    seed: int | None = None
    """Seeds the request's noise (Gumbel and random remasking); None = drawn at admission."""
    stop: tuple[str, ...] = ()
    """Stop strings: the text is cut before the first one and the request finishes with 'stop'."""
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

    def __post_init__(self) -> None:
        _check_int("max_tokens", self.max_tokens, 1)
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset={self.preset!r} is not valid; use one of {PRESETS}")
        if self.block_length is None:
            object.__setattr__(self, "block_length", 32 if self.max_tokens % 32 == 0 else self.max_tokens)
        _check_int("block_length", self.block_length, 1)
        if self.max_tokens % self.block_length:
            raise ValueError(f"max_tokens={self.max_tokens} is not a multiple of block_length={self.block_length}; "
                             f"use a block_length that divides it (e.g. {self.max_tokens}) or round max_tokens up")
        if self.steps is None:
            object.__setattr__(self, "steps", self.max_tokens)
        _check_int("steps", self.steps, 1)
        if self.steps % self.num_blocks:
            raise ValueError(f"steps={self.steps} is not a multiple of the number of blocks "
                             f"({self.max_tokens} / {self.block_length} = {self.num_blocks}); use e.g. "
                             f"steps={self.num_blocks * max(1, round(self.steps / self.num_blocks))}")
        self._check_sampling()
        self._resolve_preset()

    def _check_sampling(self) -> None:
        if not _finite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature={self.temperature!r} is not valid; use a finite value ≥ 0")
        if self.remasking not in REMASKING:
            raise ValueError(f"remasking={self.remasking!r} is not valid; use one of {REMASKING}")
        if not _finite(self.cfg_scale) or self.cfg_scale < 0:
            raise ValueError(f"cfg_scale={self.cfg_scale!r} is not valid; use a finite value ≥ 0")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ValueError(f"seed={self.seed!r} is not valid; use an integer")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop must be a list of non-empty strings")
        if self.threshold is not None and (not _finite(self.threshold) or not 0 < self.threshold <= 1):
            raise ValueError(f"threshold={self.threshold!r} is not valid; use a value in (0, 1]")
        if self.factor is not None and (not _finite(self.factor) or self.factor <= 0):
            raise ValueError(f"factor={self.factor!r} is not valid; use a finite value > 0")
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
    def num_blocks(self) -> int:
        return self.max_tokens // self.block_length

    @property
    def steps_per_block(self) -> int:
        return self.steps // self.num_blocks

    @property
    def parallel(self) -> bool:
        """True when commits follow a confidence rule (threshold/factor) instead of the fixed schedule."""
        return self.threshold is not None or self.factor is not None

    @property
    def is_exact(self) -> bool:
        """True for the reference algorithm (outputs equal LLaDA generate())."""
        return self.cache == "none" and not self.parallel


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_int(name: str, value, lo: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ValueError(f"{name}={value!r} is not valid; use an integer ≥ {lo}")
