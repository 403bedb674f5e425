"""Generation defaults (server/engine/generation_config.py): what is read from a checkpoint's
generation_config.json, and the order request > override > checkpoint > server, offline and in params."""
from __future__ import annotations

import json

import pytest

from unmask import DiffusionParams
from unmask.server.engine.generation_config import read_generation_config, resolve_defaults, with_server_defaults

CKPT = {"max_new_tokens": 24, "block_length": 8, "steps": 12, "temperature": 0.25, "eos_token_id": [3, 4],
        "top_p": 0.9, "num_beams": 2, "transformers_version": "4.56.0", "eos_early_stop": False}


def test_read_modes(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps(CKPT))
    assert read_generation_config("auto", tmp_path) == CKPT
    assert read_generation_config("vllm", tmp_path) == read_generation_config("none", tmp_path) == {}
    other = tmp_path / "other"
    other.mkdir()
    (other / "generation_config.json").write_text(json.dumps({"max_new_tokens": 7}))
    assert read_generation_config(str(other), tmp_path) == {"max_new_tokens": 7}
    assert read_generation_config("auto", other / "missing-is-fine") == {}
    with pytest.raises(ValueError, match="expected 'auto'"):
        read_generation_config(str(tmp_path / "nope"), tmp_path)
    (other / "generation_config.json").write_text("[1]")
    with pytest.raises(ValueError, match="JSON object"):
        read_generation_config(str(other), tmp_path)


def test_layers_and_sources():
    d = with_server_defaults(resolve_defaults(CKPT, {"block_length": 4, "threshold": 0.8}),
                             {"preset": "fast", "block_length": 32, "temperature": None})
    assert d.values == {"preset": "fast", "block_length": 4, "max_tokens": 24, "steps": 12, "temperature": 0.25,
                        "early_stop": False, "threshold": 0.8, "top_p": 0.9}
    assert d.sources == {"preset": "server", "block_length": "override", "max_tokens": "checkpoint",
                         "steps": "checkpoint", "temperature": "checkpoint", "early_stop": "checkpoint",
                         "threshold": "override", "top_p": "checkpoint"}
    assert d.stop_token_ids == (3, 4) and d.ignored == ("num_beams (checkpoint)",)
    assert "block_length=4 (override)" in d.describe() and "ignored: num_beams" in d.describe()
    with pytest.raises(ValueError, match="eos_token_id"):
        resolve_defaults({"eos_token_id": "x"})


def test_request_fields_win_over_defaults():
    defaults = resolve_defaults(CKPT).values
    p = DiffusionParams.from_fields({"max_tokens": None, "temperature": None}, defaults)
    assert (p.max_tokens, p.block_length, p.steps, p.temperature, p.early_stop) == (24, 8, 12, 0.25, False)
    q = DiffusionParams.from_fields({"max_tokens": 16, "steps": 16, "temperature": 0.0}, defaults)
    assert (q.max_tokens, q.block_length, q.steps, q.temperature) == (16, 8, 16, 0.0)


def test_offline_llm_uses_checkpoint_defaults_and_stop_ids(dense_ckpt, tmp_path):
    from unmask import LLM
    from tests.helpers import EOS_ID, EOT_ID

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in dense_ckpt.iterdir():
        (ckpt / f.name).write_bytes(f.read_bytes())
    (ckpt / "generation_config.json").write_text(json.dumps({"max_new_tokens": 12, "block_length": 4,
                                                             "eos_token_id": [EOS_ID, 7]}))
    llm = LLM(str(ckpt), device="cpu", dtype="float32", override_generation_config={"block_length": 6})
    p = llm.default_params()
    assert (p.max_tokens, p.block_length, p.canvas_length) == (12, 6, 12)
    assert 7 in llm.engine.stop_token_ids and EOT_ID in llm.engine.stop_token_ids
    assert llm.default_params(max_tokens=5).canvas_length == 6  # the default block, then the budget rule
    plain = LLM(str(ckpt), device="cpu", dtype="float32", generation_config="vllm")
    assert plain.default_params() == DiffusionParams() and 7 not in plain.engine.stop_token_ids
