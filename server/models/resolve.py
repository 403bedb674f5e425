"""Resolve a model argument (None, a built-in name, a checkpoint directory or a Hugging Face id), device and dtype."""
from __future__ import annotations

from pathlib import Path

import torch

from unmask.server.config import CheckpointError
from unmask.server.models import hub

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_MODEL = "tiny-llada-instruct"
_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "float64": torch.float64, "fp64": torch.float64, "double": torch.float64}


def builtin_models() -> list[str]:
    """Names of the checkpoints shipped in ``server/assets``."""
    if not ASSETS.is_dir():
        return []
    return sorted(p.name for p in ASSETS.iterdir() if (p / "config.json").is_file())


def resolve_model_path(model: str | Path | None, revision: str | None = None,
                       download_dir: str | Path | None = None) -> Path:
    """None -> the embedded default; a built-in name -> its asset folder; an existing directory -> itself; a hub
    id ``org/name`` -> its snapshot in the Hugging Face cache, downloaded if missing (``models/hub.py``)."""
    name = DEFAULT_MODEL if model is None else str(model)
    if (ASSETS / name / "config.json").is_file():
        return ASSETS / name
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    if hub.is_repo_id(name):
        return hub.snapshot(name, revision, download_dir)
    raise CheckpointError(f"model {name!r}: not a built-in model ({', '.join(builtin_models()) or 'none shipped'}), "
                          f"not a checkpoint directory and not a Hugging Face id (org/name)")


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto': bfloat16 on CUDA (the checkpoints' dtype), float32 on CPU (fast CPU matmuls)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype={dtype!r} is not valid; use auto, {', '.join(sorted(set(_DTYPES)))}") from None
