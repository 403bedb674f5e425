"""Integration: the tiny checkpoints' forward with every op on the Triton path (interpreter on CPU) equals
the same forward on the PyTorch path, by the fp64 error model. Exercises the real call patterns (strided
q/k/v views, per-head QK-norm, routing into fused_moe, packed sequences)."""
import pytest
import torch

from tests.kernels.tolerance import DEVICE, assert_fa_close
from unmask.server.models.attention_meta import AttentionMetadata, packed_positions
from unmask.server.models.loader import load_model


def logits(path, dtype, ids, lens):
    model, _ = load_model(path, dtype=dtype)
    model = model.to(DEVICE)
    meta = AttentionMetadata.packed(lens, device=DEVICE)
    return model.compute_logits(model(ids.to(DEVICE), packed_positions(lens).to(DEVICE), meta))


@pytest.mark.parametrize("family", ["dense", "moe"])
def test_forward_triton_vs_torch(ckpts, family, monkeypatch):
    lens = [1, 7, 12]
    ids = torch.randint(0, 90, (sum(lens),), generator=torch.Generator().manual_seed(3))
    monkeypatch.setenv("UNMASK_KERNELS", "torch")
    ref64 = logits(ckpts[family], torch.float64, ids, lens)
    ref32 = logits(ckpts[family], torch.float32, ids, lens)
    monkeypatch.setenv("UNMASK_KERNELS", "triton")
    out = logits(ckpts[family], torch.float32, ids, lens)
    assert_fa_close(out, ref32, ref64, torch.float32, f"{family} logits")
