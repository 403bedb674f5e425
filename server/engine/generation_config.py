"""The checkpoint's own generation defaults (Hugging Face ``generation_config.json``), the vLLM way.

For a diffusion LM the generation length, block length and steps are part of how the checkpoint must be
run, so they are read from the checkpoint like vLLM reads ``generation_config.json``:

- ``mode="auto"`` (the default) reads ``<checkpoint>/generation_config.json``; ``"vllm"`` or ``"none"``
  ignore it; any other value is a folder holding one.
- An override (``--override-generation-config '{json}'``) is applied on top, with the same field names.
- Precedence for each field: the request's own value > override > checkpoint > the server's default.

Field names: the standard ones (``max_new_tokens``, ``temperature``, ``eos_token_id`` as an id or a list)
and the diffusion fields the published checkpoints use (``gen_length``, ``block_length``, ``steps``,
``threshold``, ``remasking``, ``cfg_scale``, ``eos_early_stop``/``early_stop``, ``preset``), and vLLM's
sampling defaults (``top_p``, ``top_k``, ``min_p``, ``repetition_penalty``). Fields that have no meaning here
(e.g. ``num_beams``) are reported by :attr:`GenerationDefaults.ignored` and in the startup log, never silently
applied differently.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

FILE = "generation_config.json"
_MODES_OFF = ("vllm", "none")
_TO_PARAMS = {
    "max_new_tokens": "max_tokens", "max_tokens": "max_tokens", "gen_length": "max_tokens",
    "block_length": "block_length", "steps": "steps", "temperature": "temperature", "threshold": "threshold",
    "factor": "factor", "remasking": "remasking", "cfg_scale": "cfg_scale", "early_stop": "early_stop",
    "eos_early_stop": "early_stop", "preset": "preset", "cache": "cache", "top_p": "top_p", "top_k": "top_k",
    "min_p": "min_p", "repetition_penalty": "repetition_penalty",
}
"""generation_config.json name -> DiffusionParams field."""
_HF_BOOKKEEPING = ("_from_model_config", "transformers_version", "bos_token_id", "pad_token_id", "do_sample",
                   "mask_token_id", "use_cache")
"""Standard keys that say nothing about how to generate here (not reported as ignored)."""


@dataclasses.dataclass(frozen=True)
class GenerationDefaults:
    """Default DiffusionParams fields with where each came from ('override', 'checkpoint' or 'server')."""
    values: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """DiffusionParams field -> default value."""
    sources: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """DiffusionParams field -> 'override' | 'checkpoint' | 'server'."""
    stop_token_ids: tuple[int, ...] = ()
    """``eos_token_id`` of the generation config: extra ids that end a generation."""
    ignored: tuple[str, ...] = ()
    """Keys read but not applied (no meaning for this server yet)."""

    def describe(self) -> str:
        """One line for the startup log: each default and its source."""
        parts = [f"{k}={self.values[k]!r} ({self.sources[k]})" for k in sorted(self.values)]
        if self.stop_token_ids:
            parts.append(f"stop_token_ids={list(self.stop_token_ids)} (checkpoint)")
        line = ", ".join(parts) or "none"
        return line + (f"; ignored: {', '.join(self.ignored)}" if self.ignored else "")


def read_generation_config(mode: str, model_path: str | Path) -> dict:
    """The raw generation config for ``mode`` ('auto' -> the checkpoint's, 'vllm'/'none' -> {}, else a
    folder). Raises ValueError naming the file when it is not a JSON object."""
    if mode in _MODES_OFF:
        return {}
    folder = Path(model_path) if mode == "auto" else Path(mode).expanduser()
    if mode != "auto" and not folder.is_dir():
        raise ValueError(f"--generation-config {mode!r}: expected 'auto', 'vllm', 'none' or a folder")
    path = folder / FILE
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return raw


def resolve_defaults(checkpoint: Mapping[str, Any], override: Mapping[str, Any] | None = None,
                     server: Mapping[str, Any] | None = None) -> GenerationDefaults:
    """Merge the three default layers (override > checkpoint > server) into DiffusionParams fields."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    ignored: list[str] = []
    stops: tuple[int, ...] = ()
    for field, value in (server or {}).items():
        if value is not None:
            values[field], sources[field] = value, "server"
    for source, raw in (("checkpoint", checkpoint), ("override", override or {})):
        for key, value in raw.items():
            if key == "eos_token_id":
                stops = _ids(value, source)
            elif key in _TO_PARAMS:
                if value is not None:
                    values[_TO_PARAMS[key]], sources[_TO_PARAMS[key]] = value, source
            elif key not in _HF_BOOKKEEPING:
                ignored.append(f"{key} ({source})")
    return GenerationDefaults(values, sources, stops, tuple(ignored))


def with_server_defaults(defaults: GenerationDefaults, server: Mapping[str, Any]) -> GenerationDefaults:
    """``defaults`` (override and checkpoint layers) over the server's own defaults (``None`` = unset)."""
    values = {k: v for k, v in server.items() if v is not None}
    sources = {k: "server" for k in values}
    values.update(defaults.values)
    sources.update(defaults.sources)
    return dataclasses.replace(defaults, values=values, sources=sources)


def _ids(value, source: str) -> tuple[int, ...]:
    ids = value if isinstance(value, list) else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError(f"eos_token_id ({source}) must be a token id or a list of them, got {value!r}")
    return tuple(ids)
