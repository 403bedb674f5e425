import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from unmask.server.config import CheckpointError, ModelConfig, UnsupportedConfigError
from unmask.server.models.llada import LLaDAModelLM
from unmask.server.models.llada_moe import LLaDAMoEModelLM
from unmask.server.models.loader import load_model
from tests.helpers import EOT_ID, MASK_ID


def test_dispatch_on_architectures_not_model_type(dense_ckpt, moe_ckpt):
    dense, dcfg = load_model(dense_ckpt, dtype=torch.float64)
    moe, mcfg = load_model(moe_ckpt, dtype=torch.float64)
    assert type(dense) is LLaDAModelLM and type(moe) is LLaDAMoEModelLM
    assert json.loads((dense_ckpt / "config.json").read_text())["model_type"] == "llada"
    assert json.loads((moe_ckpt / "config.json").read_text())["model_type"] == "llada"
    assert (dcfg.mask_token_id, dcfg.eot_token_id) == (MASK_ID, EOT_ID)
    assert mcfg.mask_token_id == MASK_ID  # from the tokenizer's <|mask|>: the MoE config has no mask_token_id
    assert "mask_token_id" not in json.loads((moe_ckpt / "config.json").read_text())
    assert mcfg.num_experts == 8 and mcfg.qk_norm and not mcfg.rope_fp32


def test_sharded_and_unsharded_load_identically(tmp_path, dense_ckpt):
    sharded = tmp_path / "sharded"
    from tests.helpers import write_checkpoint
    write_checkpoint(sharded, "dense", seed=1, shards=3)
    a, _ = load_model(dense_ckpt, dtype=torch.float64)
    b, _ = load_model(sharded, dtype=torch.float64)
    assert (sharded / "model.safetensors.index.json").is_file()
    for (n1, p1), (n2, p2) in zip(a.named_parameters(), b.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_moe_experts_are_stacked_in_order(moe_ckpt):
    model, cfg = load_model(moe_ckpt, dtype=torch.float64)
    raw = {}
    for f in moe_ckpt.glob("*.safetensors"):
        raw.update(load_file(str(f)))
    e3 = "model.layers.1.mlp.experts.3."
    w = model.blocks[1].ffn.w_gate_up[3]
    assert torch.equal(w[:cfg.expert_intermediate_size], raw[e3 + "gate_proj.weight"])
    assert torch.equal(w[cfg.expert_intermediate_size:], raw[e3 + "up_proj.weight"])
    assert torch.equal(model.blocks[1].ffn.w_down[3], raw[e3 + "down_proj.weight"])


def _raw(ckpt):
    """HF tensor name -> tensor, over every safetensors file of ``ckpt``."""
    raw = {}
    for f in ckpt.glob("*.safetensors"):
        raw.update(load_file(str(f)))
    return raw


@pytest.mark.parametrize("family", ["dense", "moe"])
def test_projections_are_fused_in_order_and_split_back_on_export(ckpts, family):
    from unmask.server.models.export import hf_state_dict

    model, cfg = load_model(ckpts[family], dtype=torch.float64)
    raw = _raw(ckpts[family])
    prefix = "model.transformer.blocks.1." if family == "dense" else "model.layers.1.self_attn."
    hq, hk = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    qkv = model.blocks[1].attn.qkv_proj  # [(H + 2Hk)·Dh, D]
    assert torch.equal(qkv[:hq], raw[prefix + "q_proj.weight"])
    assert torch.equal(qkv[hq:hq + hk], raw[prefix + "k_proj.weight"])
    assert torch.equal(qkv[hq + hk:], raw[prefix + "v_proj.weight"])
    if family == "dense":
        gate_up, inter = model.blocks[1].ffn.gate_up_proj, cfg.intermediate_size  # [2I, D]
        assert torch.equal(gate_up[:inter], raw[prefix + "ff_proj.weight"])
        assert torch.equal(gate_up[inter:], raw[prefix + "up_proj.weight"])
    exported = hf_state_dict(model, cfg, torch.float64)
    assert exported.keys() == raw.keys()
    assert all(torch.equal(exported[n], raw[n]) for n in raw)


def test_misshaped_fused_part_is_named(tmp_path, dense_ckpt):
    p = _copy(dense_ckpt, tmp_path / "c")
    _edit_tensors(p, lambda t: t.update({"model.transformer.blocks.0.k_proj.weight": torch.zeros(16, 32)}))
    with pytest.raises(CheckpointError, match=r"'model.transformer.blocks.0.k_proj.weight' has shape \[16, 32\], "
                                              r"expected \[32, 32\]"):
        load_model(p)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_loads_in_each_dtype(dense_ckpt, dtype):
    model, _ = load_model(dense_ckpt, dtype=dtype)
    assert all(p.dtype == dtype and not p.requires_grad for p in model.parameters())


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_tensors(path, fn):
    f = path / "model.safetensors"
    t = load_file(str(f))
    fn(t)
    save_file(t, str(f))


def test_missing_tensor_is_named(tmp_path, dense_ckpt):
    p = _copy(dense_ckpt, tmp_path / "c")
    _edit_tensors(p, lambda t: t.pop("model.transformer.blocks.1.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model.transformer.blocks.1.up_proj.weight'"):
        load_model(p)


def test_extra_tensor_is_named(tmp_path, dense_ckpt):
    p = _copy(dense_ckpt, tmp_path / "c")
    _edit_tensors(p, lambda t: t.update({"model.transformer.blocks.0.q_proj.bias": torch.zeros(32)}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'model.transformer.blocks.0.q_proj.bias'"):
        load_model(p)


def test_misshaped_tensor_is_named(tmp_path, dense_ckpt):
    p = _copy(dense_ckpt, tmp_path / "c")
    _edit_tensors(p, lambda t: t.update({"model.transformer.ln_f.weight": torch.ones(31)}))
    with pytest.raises(CheckpointError, match=r"'model.transformer.ln_f.weight' has shape \[31\], expected \[32\]"):
        load_model(p)


def test_misshaped_expert_is_named(tmp_path, moe_ckpt):
    p = _copy(moe_ckpt, tmp_path / "c")
    index = json.loads((p / "model.safetensors.index.json").read_text())
    name = "model.layers.0.mlp.experts.5.down_proj.weight"
    f = p / index["weight_map"][name]
    t = load_file(str(f))
    t[name] = torch.zeros(32, 15, dtype=torch.float64)
    save_file(t, str(f))
    with pytest.raises(CheckpointError, match="experts.5.down_proj"):
        load_model(p)


@pytest.mark.parametrize("victim, needle", [
    ("config.json", "config.json: missing"),
    ("model.safetensors", "neither model.safetensors nor model.safetensors.index.json"),
])
def test_missing_files(tmp_path, dense_ckpt, victim, needle):
    p = _copy(dense_ckpt, tmp_path / "c")
    (p / victim).unlink()
    with pytest.raises(CheckpointError, match=needle):
        load_model(p)


def test_missing_shard(tmp_path, moe_ckpt):
    p = _copy(moe_ckpt, tmp_path / "c")
    (p / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors: shard listed"):
        load_model(p)


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_model(tmp_path / "nowhere")


@pytest.mark.parametrize("key, value", [("alibi", True), ("weight_tying", True), ("block_type", "sequential"),
                                        ("attention_layer_norm", True), ("include_bias", True)])
def test_unsupported_dense_switch_names_key(tmp_path, dense_ckpt, key, value):
    p = _copy(dense_ckpt, tmp_path / "c")
    cfg = json.loads((p / "config.json").read_text())
    cfg[key] = value
    (p / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedConfigError, match=key):
        ModelConfig.from_pretrained(p)


@pytest.mark.parametrize("key, value", [("moe_router_enable_expert_bias", True), ("partial_rotary_factor", 0.5),
                                        ("moe_layer_freq", [1, 0]), ("shared_expert_intermediate_size", 64),
                                        ("clip_qkv", 8.0)])
def test_unsupported_moe_switch_names_key(tmp_path, moe_ckpt, key, value):
    p = _copy(moe_ckpt, tmp_path / "c")
    cfg = json.loads((p / "config.json").read_text())
    cfg[key] = value
    (p / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedConfigError, match=key):
        ModelConfig.from_pretrained(p)


def test_unknown_architecture(tmp_path, dense_ckpt):
    p = _copy(dense_ckpt, tmp_path / "c")
    cfg = json.loads((p / "config.json").read_text())
    cfg["architectures"] = ["LlamaForCausalLM"]
    (p / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedConfigError, match="LlamaForCausalLM"):
        ModelConfig.from_pretrained(p)
