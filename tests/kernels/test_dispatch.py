"""The Triton modules mirror their specifications: same op names, same parameters, all reachable via ops."""
import importlib
import inspect

import pytest

from unmask.kernels import backend, ops

PUBLIC_OPS = ["rms_norm", "add_rms_norm", "rope", "rope_apply", "qk_norm_rope", "silu_mul", "attention",
              "kv_cache_write", "moe_route", "fused_moe", "remask_confidence", "select_commits", "linear",
              "quantized_linear"]


def params(fn):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("module", backend._TRITON_MODULES)
def test_triton_module_matches_spec_signatures(module):
    tri = importlib.import_module(f"unmask.kernels.triton_ops.{module}")
    spec = importlib.import_module(f"unmask.kernels.torch_ref.{module}")
    assert tri.__all__, module
    for name in tri.__all__:
        assert params(getattr(tri, name)) == params(getattr(spec, name)), name


def test_every_public_op_has_a_triton_path(monkeypatch):
    table = backend.triton_table()
    assert sorted(table) == sorted(PUBLIC_OPS)
    assert all(hasattr(ops, name) for name in PUBLIC_OPS)
    monkeypatch.setenv("UNMASK_KERNELS", "triton")
    import torch

    assert all(backend.active_backend(name, torch.device("cpu")) == "triton" for name in PUBLIC_OPS)
