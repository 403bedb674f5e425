"""Model family -> model class. The architecture names live in one table, ``config.ARCHITECTURES`` (HF
``architectures`` -> family, resolved into ``ModelConfig.family``); never dispatch on ``model_type`` (both
LLaDA families say "llada")."""
from __future__ import annotations

import torch

from unmask.server.config import ModelConfig, UnsupportedConfigError
from unmask.server.models.llada import LLaDAModelLM
from unmask.server.models.dream import DreamModel
from unmask.server.models.llada2 import LLaDA2MoeModelLM
from unmask.server.models.llada_moe import LLaDAMoEModelLM
from unmask.server.models.parallel import TensorParallel

_FAMILY_CLASSES = {"llada": LLaDAModelLM, "llada_moe": LLaDAMoEModelLM, "llada2": LLaDA2MoeModelLM, "dream": DreamModel}


def model_class(cfg: ModelConfig) -> type[LLaDAModelLM]:
    """The nn.Module class serving ``cfg.family`` (the family of ``cfg.architecture``)."""
    try:
        return _FAMILY_CLASSES[cfg.family]
    except KeyError:
        raise UnsupportedConfigError(f"architectures={cfg.architecture!r} (family {cfg.family!r}) has no model "
                                     "class") from None


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                init_std: float | None = 0.02, seed: int = 0, tp: TensorParallel | None = None) -> LLaDAModelLM:
    """A model with freshly initialised weights (normal(0, init_std), norms at 1), for training and tests.
    With init_std=None the parameters stay uninitialised (the loader fills them). ``tp``: build one rank's shard."""
    with torch.device("meta"):
        model = model_class(cfg)(cfg) if tp is None else model_class(cfg)(cfg, tp)
    model = model.to(dtype).to_empty(device=device)  # allocated once, in the final dtype
    if init_std is not None:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(init_std).to(p))
    return model
