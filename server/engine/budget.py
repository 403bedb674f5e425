"""The one budget rule: a client's ``max_tokens`` / ``block_length`` / ``steps`` -> the generation canvas.

The budget rule (:func:`plan_canvas`, used by the offline ``LLM`` and the HTTP API alike):

- ``max_tokens`` is how many tokens the caller can get back;
- ``block_length`` defaults to ``min(32, max_tokens)``;
- the generation region (the *canvas* after the prompt) is ``max_tokens`` rounded up to a multiple of
  ``block_length``; the output is cut back to ``max_tokens`` (finish reason ``length``);
- ``steps`` (total denoising steps over the canvas) defaults to the canvas length and is rounded up to
  a multiple of the number of blocks, as LLaDA requires an equal step count per block.

Families whose blocks are aligned to absolute positions (LLaDA2) place the same blocks differently
(``family_rules.FamilyRules.layout``).
"""
from __future__ import annotations

import dataclasses

DEFAULT_BLOCK_LENGTH = 32


@dataclasses.dataclass(frozen=True)
class CanvasPlan:
    """What the budget rule decided for one request."""
    canvas_length: int
    """Generation positions appended to the prompt: max_tokens rounded up to a block multiple."""
    block_length: int
    """Semi-autoregressive block size."""
    steps: int
    """Total denoising steps over the canvas (a multiple of num_blocks)."""

    @property
    def num_blocks(self) -> int:
        return self.canvas_length // self.block_length


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is ≥ n."""
    return -(-n // multiple) * multiple


def plan_canvas(max_tokens: int, block_length: int | None = None, steps: int | None = None) -> CanvasPlan:
    """The budget rule (module docstring): budget, optional block length and step count -> canvas plan.
    Raises ValueError naming the field when one is not a positive integer."""
    check_int("max_tokens", max_tokens, 1)
    block = min(DEFAULT_BLOCK_LENGTH, max_tokens) if block_length is None else block_length
    check_int("block_length", block, 1)
    canvas = round_up(max_tokens, block)
    num_blocks = canvas // block
    total = canvas if steps is None else steps
    check_int("steps", total, 1)
    return CanvasPlan(canvas_length=canvas, block_length=block, steps=round_up(total, num_blocks))


def check_int(name: str, value, lo: int) -> None:
    """ValueError naming ``name`` unless ``value`` is an int (not a bool) ≥ lo."""
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ValueError(f"{name}={value!r} is not valid; use an integer ≥ {lo}")
