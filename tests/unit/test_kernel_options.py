"""Kernel options: a frozen config from EngineConfig / the serve flags, environment variables as overrides,
and the engine's runner making its options the active ones while it steps."""
import pytest
import torch

from unmask.kernels import options
from unmask.kernels.backend import KernelBackendError
from unmask.kernels.options import KernelOptions


def test_environment_overrides_the_config(monkeypatch):
    for name in ("UNMASK_ATTN_LOOP", "UNMASK_GEMM", "UNMASK_SERIAL_COMBINE"):
        monkeypatch.delenv(name, raising=False)
    configured = KernelOptions(attn_loop="segmented", gemm="triton", serial_combine=True)
    assert options.resolve(configured) == configured and options.resolve() == KernelOptions()
    monkeypatch.setenv("UNMASK_ATTN_LOOP", "prefetch")
    monkeypatch.setenv("UNMASK_SERIAL_COMBINE", "0")
    assert options.resolve(configured) == KernelOptions("prefetch", "triton", False)
    with pytest.raises(KernelBackendError, match="attention loop 'spiral'"):
        KernelOptions(attn_loop="spiral")


def test_backend_choice_is_an_option_read_from_the_environment(monkeypatch):
    from unmask.kernels import backend

    monkeypatch.delenv("UNMASK_KERNELS", raising=False)
    assert options.resolve().backend == "auto"
    monkeypatch.setenv("UNMASK_KERNELS", " Torch ")
    assert options.resolve().backend == "torch"
    with options.use(KernelOptions(backend="triton")):  # an engine's step: its resolved choice, not the variable
        assert options.active().backend == "triton"
    assert backend.active_backend("rms_norm", torch.device("cuda")) == "torch"
    monkeypatch.setenv("UNMASK_KERNELS", "cuda")
    with pytest.raises(KernelBackendError, match="UNMASK_KERNELS='cuda'"):
        options.resolve()
    with pytest.raises(KernelBackendError, match="kernel backend 'cuda'"):
        KernelOptions(backend="cuda")


def test_use_sets_the_active_options_for_its_block_only(monkeypatch):
    monkeypatch.delenv("UNMASK_GEMM", raising=False)
    with options.use(KernelOptions(gemm="triton")):
        assert options.active().gemm == "triton"
    assert options.active().gemm == "cublas"


def test_engine_steps_with_its_configured_options(ckpts, monkeypatch):
    from unmask.server.config import EngineConfig
    from unmask.server.engine.engine import Engine
    from unmask.server.engine.sequence import Request
    from unmask import DiffusionParams

    monkeypatch.delenv("UNMASK_ATTN_LOOP", raising=False)
    engine = Engine.from_config(EngineConfig(model=str(ckpts["dense"]), device="cpu", dtype="float32",
                                             kernels=KernelOptions(attn_loop="segmented")))
    seen = []
    forward = engine.model.forward
    monkeypatch.setattr(engine.model, "forward", lambda *a: seen.append(options.active()) or forward(*a))
    engine.add_request(Request("k", (1, 2), DiffusionParams(max_tokens=2, block_length=2)))
    while engine.has_unfinished():
        engine.step()
    assert seen and all(o.attn_loop == "segmented" for o in seen)
    assert options.active().attn_loop == "merged"


def test_serve_flags_build_kernel_options():
    import argparse

    from unmask.server.serve_args import add_serve_args

    p = argparse.ArgumentParser()
    add_serve_args(p)
    args = p.parse_args(["--attention-loop", "prefetch", "--gemm", "triton", "--serial-combine"])
    assert (args.attention_loop, args.gemm, args.serial_combine) == ("prefetch", "triton", True)
