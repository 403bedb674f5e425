"""OpenAI request fields -> DiffusionParams, with the server's limits.

``max_tokens`` is the number of tokens the client can get back. The generation canvas must be a
multiple of the block length, so it is rounded up internally (``canvas_length``) and the output is cut
back to ``max_tokens`` (finish_reason ``length``). ``steps`` (total denoising steps) is rounded up to a
multiple of the resulting number of blocks, as LLaDA requires an equal step count per block.
"""
from __future__ import annotations

import dataclasses
import re

from unmask.server.api.errors import bad_request
from unmask.server.api.protocol import GenerateRequest
from unmask.server.api.settings import ServerSettings
from unmask.server.engine.params import DiffusionParams

DEFAULT_BLOCK_LENGTH = 32
SEED_SPACE = 1 << 63


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one request asks the engine for, before it is split into choices."""
    max_tokens: int
    """Tokens a choice may return (the client's budget)."""
    params: DiffusionParams
    """Engine params for choice 0 (``canvas_length`` = params.max_tokens ≥ max_tokens)."""

    def for_choice(self, i: int) -> DiffusionParams:
        """Choice i of n gets its own seed (seed + i) so n > 1 can differ when sampling."""
        if i == 0 or self.params.seed is None:
            return self.params
        return dataclasses.replace(self.params, seed=(self.params.seed + i) % SEED_SPACE)


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def check_max_tokens(max_tokens: int, settings: ServerSettings, param: str) -> None:
    if max_tokens > settings.max_tokens_limit:
        raise bad_request(f"{param}={max_tokens} exceeds this server's limit of {settings.max_tokens_limit} "
                          f"(--max-tokens-limit)", param)


def build_plan(req: GenerateRequest, max_tokens: int, settings: ServerSettings, param: str = "max_tokens") -> Plan:
    """Validate the diffusion fields against the limits and build the engine params (400 on errors)."""
    check_max_tokens(max_tokens, settings, param)
    block = req.block_length or min(DEFAULT_BLOCK_LENGTH, max_tokens)
    if block > settings.max_tokens_limit:
        raise bad_request(f"block_length={block} exceeds the generation limit {settings.max_tokens_limit}",
                          "block_length")
    canvas = round_up(max_tokens, block)
    steps = req.steps
    if steps is not None:
        if steps > settings.max_steps:
            raise bad_request(f"steps={steps} exceeds this server's limit of {settings.max_steps} (--max-steps)",
                              "steps")
        steps = round_up(steps, canvas // block)
    seed = None if req.seed is None else req.seed % SEED_SPACE
    try:
        params = DiffusionParams(
            max_tokens=canvas, block_length=block, steps=steps, temperature=req.temperature or 0.0,
            remasking=req.remasking or "low_confidence", cfg_scale=req.cfg_scale or 0.0, seed=seed,
            logits_eos_inf=bool(req.logits_eos_inf or req.ignore_eos),
            confidence_eos_eot_inf=bool(req.confidence_eos_eot_inf), threshold=req.threshold, factor=req.factor,
            cache=req.cache, early_stop=True if req.early_stop is None else req.early_stop,
            preset=_preset(req, settings))
    except ValueError as exc:
        raise bad_request(str(exc), _param_of(str(exc))) from None
    return Plan(max_tokens=max_tokens, params=params)


def _preset(req: GenerateRequest, settings: ServerSettings) -> str | None:
    """The request's preset; else the server default, unless the request already picks fast-mode fields
    or CFG (which the fast preset's cache cannot serve)."""
    if req.preset is not None:
        return req.preset
    if settings.default_preset != "fast":
        return None
    if req.cache is not None or req.threshold is not None or req.factor is not None or (req.cfg_scale or 0) > 0:
        return None
    return "fast"


_FIELDS = {f.name for f in dataclasses.fields(DiffusionParams)}


def _param_of(message: str) -> str | None:
    """DiffusionParams messages start with the field at fault (``threshold=2 is not valid``)."""
    m = re.match(r"([a-z_]+)", message)
    return m.group(1) if m and m.group(1) in _FIELDS else None
