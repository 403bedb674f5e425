"""The loader and config parser name what is wrong in a malformed LLaDA2 or Dream checkpoint."""
import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from unmask.server.config import CheckpointError, UnsupportedConfigError
from unmask.server.models.loader import load_model


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def _edit_tensors(path, fn):
    for f in path.glob("*.safetensors"):
        tensors = load_file(str(f))
        fn(tensors)
        save_file(tensors, str(f))


@pytest.mark.parametrize("changes, message", [
    ({"score_function": "softmax"}, "score_function='softmax'"),
    ({"use_qkv_bias": True}, "use_qkv_bias=True"),
    ({"num_experts": 6}, "num_experts=6 is not a multiple of n_group=4"),
    ({"partial_rotary_factor": 0.1}, "rotary dim 0"),
    ({"num_nextn_predict_layers": 1}, "num_nextn_predict_layers=1"),
])
def test_llada2_config_errors_name_the_key(family_ckpts, tmp_path, changes, message):
    path = _copy(family_ckpts["llada2"], tmp_path / "ck")
    _edit_config(path, **changes)
    with pytest.raises(UnsupportedConfigError, match=message.replace("(", r"\(")):
        load_model(path)


def test_dream_config_errors_name_the_key(family_ckpts, tmp_path):
    path = _copy(family_ckpts["dream"], tmp_path / "ck")
    _edit_config(path, use_sliding_window=True)
    with pytest.raises(UnsupportedConfigError, match="use_sliding_window=True"):
        load_model(path)


def test_missing_and_misshaped_tensors_are_named(family_ckpts, tmp_path):
    path = _copy(family_ckpts["llada2"], tmp_path / "a")
    _edit_tensors(path, lambda t: t.pop("model.layers.1.mlp.gate.expert_bias", None))
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.gate.expert_bias"):
        load_model(path)
    path = _copy(family_ckpts["dream"], tmp_path / "b")

    def bad_bias(t):
        if "model.layers.0.self_attn.k_proj.bias" in t:
            t["model.layers.0.self_attn.k_proj.bias"] = t["model.layers.0.self_attn.k_proj.bias"][:3].clone()
    _edit_tensors(path, bad_bias)
    with pytest.raises(CheckpointError, match=r"model.layers.0.self_attn.k_proj.bias.*\[3\]"):
        load_model(path)
