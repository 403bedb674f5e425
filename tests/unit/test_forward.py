"""The model forward in float64 against a straightforward implementation written here from LLADA-SPEC.md
§3-4 (reading the checkpoint tensors by their HF names, no project code), to 1e-10."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from unmask.server.models.attention_meta import AttentionMetadata, packed_positions
from unmask.server.models.loader import load_model


def _tensors(path):
    out = {}
    for f in path.glob("*.safetensors"):
        out.update(load_file(str(f)))
    return out


def _rms(x, w, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def _rope(x, theta):
    """x [L, H, Dh]: NeoX rotate-half with positions 0..L-1."""
    L, _, dh = x.shape
    inv = 1.0 / theta ** (torch.arange(0, dh, 2, dtype=torch.float64) / dh)
    ang = torch.arange(L, dtype=torch.float64)[:, None] * inv[None]
    cos, sin = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]
    x1, x2 = x[..., : dh // 2], x[..., dh // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _attend(q, k, v):
    """Bidirectional softmax attention, explicit matmuls. q/k/v [L, H, Dh]."""
    s = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("hqk,khd->qhd", torch.softmax(s, -1), v)


def dense_logits(path, ids):
    c, t = json.loads((path / "config.json").read_text()), _tensors(path)
    h, eps = c["n_heads"], c["rms_norm_eps"]
    x = t["model.transformer.wte.weight"][ids]
    L = len(ids)
    for n in range(c["n_layers"]):
        g = lambda name: t[f"model.transformer.blocks.{n}.{name}"]  # noqa: E731
        a = _rms(x, g("attn_norm.weight"), eps)
        q, k, v = (a @ g(w).T for w in ("q_proj.weight", "k_proj.weight", "v_proj.weight"))
        q, k, v = (z.view(L, h, -1) for z in (q, k, v))
        x = x + _attend(_rope(q, c["rope_theta"]), _rope(k, c["rope_theta"]), v).reshape(L, -1) @ g("attn_out.weight").T
        f = _rms(x, g("ff_norm.weight"), eps)
        x = x + (torch.nn.functional.silu(f @ g("ff_proj.weight").T) * (f @ g("up_proj.weight").T)) @ g("ff_out.weight").T
    return _rms(x, t["model.transformer.ln_f.weight"], eps) @ t["model.transformer.ff_out.weight"].T


def moe_logits(path, ids):
    c, t = json.loads((path / "config.json").read_text()), _tensors(path)
    h, eps, kk = c["num_attention_heads"], c["rms_norm_eps"], c["num_experts_per_tok"]
    x = t["model.embed_tokens.weight"][ids]
    L = len(ids)
    for n in range(c["num_hidden_layers"]):
        g = lambda name: t[f"model.layers.{n}.{name}"]  # noqa: E731
        a = _rms(x, g("input_layernorm.weight"), eps)
        q, k, v = (a @ g(f"self_attn.{w}_proj.weight").T for w in "qkv")
        q, k, v = (z.view(L, h, -1) for z in (q, k, v))
        q, k = _rms(q, g("self_attn.q_norm.weight"), eps), _rms(k, g("self_attn.k_norm.weight"), eps)
        x = x + _attend(_rope(q, c["rope_theta"]), _rope(k, c["rope_theta"]), v).reshape(L, -1) @ g("self_attn.o_proj.weight").T
        f = _rms(x, g("post_attention_layernorm.weight"), eps)
        probs = torch.softmax(f @ g("mlp.gate.weight").T, -1)
        w, e = torch.topk(probs, kk, -1)  # no renormalisation
        out = torch.zeros_like(f)
        for tok in range(L):
            for j in range(kk):
                ex = lambda name: g(f"mlp.experts.{int(e[tok, j])}.{name}")  # noqa: E731
                y = torch.nn.functional.silu(f[tok] @ ex("gate_proj.weight").T) * (f[tok] @ ex("up_proj.weight").T)
                out[tok] += w[tok, j] * (y @ ex("down_proj.weight").T)
        x = x + out
    return _rms(x, t["model.norm.weight"], eps) @ t["lm_head.weight"].T


@pytest.mark.parametrize("family", ["dense", "moe"])
def test_float64_forward_matches_spec(ckpts, family):
    path = ckpts[family]
    model, _ = load_model(path, dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    for L in (1, 7, 19):
        ids = torch.randint(0, 90, (L,), generator=gen)
        ours = model.compute_logits(model(ids, packed_positions([L]), AttentionMetadata.packed([L])))
        want = (dense_logits if family == "dense" else moe_logits)(path, ids)
        assert (ours - want).abs().max().item() < 1e-10


@pytest.mark.parametrize("family", ["dense", "moe"])
def test_packed_sequences_do_not_see_each_other(ckpts, family):
    model, _ = load_model(ckpts[family], dtype=torch.float64)
    a, b = torch.randint(0, 90, (5,)), torch.randint(0, 90, (9,))
    packed = model(torch.cat([a, b]), packed_positions([5, 9]), AttentionMetadata.packed([5, 9]))
    alone = model(b, packed_positions([9]), AttentionMetadata.packed([9]))
    assert (packed[5:] - alone).abs().max().item() < 1e-12


def test_llm_logits_is_one_full_forward(llm64, ckpts):
    ids = [3, 14, 15, 9, 26]
    got = llm64["dense"].logits(ids)
    assert got.dtype == torch.float64 and got.shape == (5, 96)
    assert (got - dense_logits(ckpts["dense"], torch.tensor(ids))).abs().max().item() < 1e-10


@pytest.mark.parametrize("family", ["dense", "moe"])
def test_out_rows_are_the_full_forwards_rows(ckpts, family):
    """The last block runs past attention on the wanted rows only: those rows equal the full forward's, for
    rows of both packed sequences, in any order, repeated, or none."""
    model, _ = load_model(ckpts[family], dtype=torch.float64)
    ids = torch.randint(0, 90, (14,), generator=torch.Generator().manual_seed(3))
    args = (ids, packed_positions([5, 9]), AttentionMetadata.packed([5, 9]))
    full = model(*args)  # [14, D]
    for rows in ([0, 4, 5, 13], [12, 2, 7], [6, 6], list(range(14)), []):
        got = model(*args, torch.tensor(rows, dtype=torch.int64))
        assert got.shape == (len(rows), full.shape[1])
        assert (got - full[rows]).abs().max().item() < 1e-12 if rows else got.numel() == 0
