"""Quantized weights on CPU: the format (round trip, nibble order), the reference GEMM paths, load-time
quantization of both families (resident bytes, exact preset = the reference loop on the dequantized weights),
and compressed-tensors checkpoints written by the library (tests/fixtures/compressed_writer.py)."""
from __future__ import annotations

import copy
import importlib.util
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.engine.reference_cases import oracle, random_case
from tests.helpers import write_checkpoint
from unmask import LLM
from unmask.kernels import quant
from unmask.kernels.torch_ref import linear as ref_linear
from unmask.kernels.torch_ref import qlinear as ref_qlinear
from unmask.kernels.torch_ref import moe as ref_moe
from unmask.server.models import quantize as Q
from unmask.server.models.attention_meta import AttentionMetadata, packed_positions
from unmask.server.models.loader import load_model
from unmask.server.models.resolve import ASSETS

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "compressed"
# worst relative error of a dequantized weight element against its group's absmax (half a quantization step)
STEP = {"fp8": 2 ** -4, "int8": 0.5 / 127, "int4": 0.5 / 7}


@pytest.mark.parametrize("fmt", quant.FORMATS)
def test_round_trip_within_half_a_step(fmt):
    w = torch.randn(3, 48, 256, dtype=torch.float64)
    qw = quant.quantize(w, fmt)
    assert qw.shape == w.shape and qw.scales.dtype == torch.float32
    assert qw.group_size == (128 if fmt == "int4" else 256) and qw.scales.shape == (3, 48, 256 // qw.group_size)
    err = (qw.dequantize(torch.float64) - w).abs().unflatten(-1, (-1, qw.group_size))
    bound = w.abs().unflatten(-1, (-1, qw.group_size)).amax(-1, keepdim=True) * STEP[fmt] * 1.01
    assert (err <= bound).all()
    assert torch.equal(qw[1].dequantize(), qw.dequantize()[1])  # an expert slice is the same weight


def test_int4_nibbles_low_first():
    q = torch.tensor([[-8, 7, 0, -1]])
    packed = quant.pack_int4(q)
    assert packed.tolist() == [[0x00 | (15 << 4), 8 | (7 << 4)]]
    qw = quant.QuantizedWeight(packed, torch.ones(1, 1), "int4", 4)
    assert qw.int_values().tolist() == q.tolist() and quant.int4_group(96) == 32


@pytest.mark.parametrize("fmt", quant.FORMATS)
def test_reference_linear_is_the_dequantized_gemm(fmt, monkeypatch):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 256, generator=g, dtype=torch.float64), torch.randn(40, 256, generator=g)
    qw = quant.quantize(w, fmt)
    want = x @ qw.dequantize(torch.float64).t()
    assert torch.equal(ref_linear.linear(x, qw), want)  # float64: exactly the dense GEMM
    out32 = ref_linear.linear(x.float(), qw)  # int8: torch._weight_int8pack_mm
    torch.testing.assert_close(out32.double(), want, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(ref_qlinear, "DEQUANT_ROWS", 16)  # fp32 dequantized 16 rows at a time
    torch.testing.assert_close(ref_linear.linear(x.float(), qw), out32, rtol=1e-5, atol=1e-5)
    assert torch.equal(ref_linear.linear(x, qw), want)  # float64 never tiles


def test_reference_moe_takes_quantized_experts():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 64, generator=g, dtype=torch.float64)
    w1, w2 = torch.randn(4, 64, 64, generator=g) * 0.1, torch.randn(4, 64, 32, generator=g) * 0.1
    tw, ids = ref_moe.moe_route(torch.randn(7, 4, generator=g, dtype=torch.float64), 2, torch.float64)
    for fmt in quant.FORMATS:
        q1, q2 = quant.quantize(w1, fmt), quant.quantize(w2, fmt)
        want = ref_moe.fused_moe(x, q1.dequantize(torch.float64), q2.dequantize(torch.float64), tw, ids)
        assert torch.equal(ref_moe.fused_moe(x, q1, q2, tw, ids), want)


@pytest.mark.parametrize("family", ["dense", "moe"])
def test_resident_bytes_of_the_embedded_models(family):
    path = ASSETS / ("tiny-llada-instruct" if family == "dense" else "tiny-llada-moe-instruct")
    # fp32 scales: +4 bytes per row (fp8, int8) or per group (int4: 32 of the tiny models' K = 96, 128 of K = 384)
    for fmt, ratio, slack in (("fp8", 0.5, 1.05), ("int8", 0.5, 1.05), ("int4", 0.25, 1.3)):
        model, _ = load_model(path, "cpu", torch.bfloat16, fmt)
        qws = [w for m in model.modules() for w in vars(m).values() if isinstance(w, quant.QuantizedWeight)]
        bf16 = sum(2 * w.shape.numel() for w in qws)
        got = Q.weight_bytes(model)["quantized"] / bf16
        assert ratio <= got < ratio * slack, (fmt, got)
        assert all(p.dtype == torch.bfloat16 for p in model.parameters())  # embeddings, norms, router, head


@pytest.fixture(scope="module")
def quant_ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    return {"dense": write_checkpoint(root / "dense", "dense", seed=11, d=64, inter=128),
            "moe": write_checkpoint(root / "moe", "moe", seed=12, d=64, inter=32)}


@pytest.mark.parametrize("family", ["dense", "moe"])
@pytest.mark.parametrize("fmt", quant.FORMATS)
def test_exact_preset_equals_reference_on_dequantized_weights(quant_ckpts, family, fmt):
    llm = LLM(str(quant_ckpts[family]), device="cpu", dtype="float64", quantization=fmt)
    dense = Q.dequantize_model(copy.deepcopy(llm.engine.model), torch.float64)
    assert not Q.weight_bytes(dense)["quantized"]
    rng = random.Random(hash((family, fmt)) % 1000)
    cases = [random_case(rng, short=True) for _ in range(4)]
    outs = llm.generate([c[0] for c in cases], [c[1] for c in cases])
    assert [o.token_ids for o in outs] == [oracle(dense, prompt, p) for prompt, p in cases]


def _logits(model, ids):
    ids = torch.tensor(ids)
    with torch.no_grad():
        return model.compute_logits(model(ids, packed_positions([len(ids)]), AttentionMetadata.packed([len(ids)])))


@pytest.mark.parametrize("name,fmt", [("fp8_dynamic", "fp8"), ("w8a16", "int8"), ("w4a16", "int4")])
def test_compressed_tensors_checkpoint_matches_its_dequantized_logits(name, fmt):
    path = FIXTURES / name
    model, _ = load_model(path, "cpu", torch.float32)
    # every block linear is loaded quantized, as stored (no bf16 copy); the rest stays dense
    assert {w.fmt for m in model.modules() for w in vars(m).values() if isinstance(w, quant.QuantizedWeight)} == {fmt}
    assert not [n for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
    # the dense twin: same checkpoint, linear weights replaced by the library's own decompression
    dense = Q.dequantize_model(copy.deepcopy(model), torch.float32)
    lib = load_file(str(path / "dequantized.safetensors.ref"))
    hf = {**model.hf_names(model.cfg), **{k: [n for n, _ in v] for k, v in model.hf_fused_names(model.cfg).items()}}
    params = dict(dense.named_parameters())
    for ours, theirs in hf.items():
        if isinstance(theirs, list) and theirs[0] in lib:
            params[ours].data.copy_(torch.cat([lib[n] for n in theirs]))
        elif isinstance(theirs, str) and theirs in lib:
            params[ours].data.copy_(lib[theirs])
    ids = [1, 5, 9, 2, 7, 3, 3, 8]
    got, want = _logits(model, ids), _logits(dense, ids)
    assert (got - want).norm() <= 1e-5 * want.norm()


@pytest.mark.skipif(importlib.util.find_spec("compressed_tensors") is None,
                    reason="compressed-tensors not installed (pip install compressed-tensors): the committed fixtures "
                           "are still tested above")
def test_fixture_is_what_the_library_writes(tmp_path):
    """Regenerate one fixture with compressed-tensors (in a subprocess without the repository on sys.path: its
    transformers dependency imports a top-level ``kernels`` package) and compare it with the committed one."""
    src = write_checkpoint(tmp_path / "dense", "dense", seed=1, d=64, inter=128, layers=1)
    writer = Path(__file__).resolve().parent.parent / "fixtures" / "compressed_writer.py"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, str(writer), str(src), str(tmp_path / "w4a16"), "W4A16", "32"], cwd=tmp_path,
                   env=env, check=True, capture_output=True)
    got = load_file(str(tmp_path / "w4a16" / "model.safetensors"))
    want = load_file(str(FIXTURES / "w4a16" / "model.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
