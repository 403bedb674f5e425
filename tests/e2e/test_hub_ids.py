"""Hugging Face ids: a fake hub cache (``models--org--name/snapshots/<rev>``, ``refs/main``) built from the embedded
checkpoint resolves offline, serves, and is listed under its hub id; a missing model offline is a clear error;
``--served-model-name a b`` answers to both names."""
from __future__ import annotations

import shutil

import pytest

from tests.e2e.remote import RemoteServer
from unmask.server.config import CheckpointError
from unmask.server.models.resolve import ASSETS, resolve_model_path

REPO = "unmask-test/tiny-llada-instruct"
REV = "0123456789abcdef0123456789abcdef01234567"


def fake_hub_cache(root, repo=REPO, rev=REV, branch="main"):
    """The layout huggingface_hub writes: blobs are plain copies here (the real cache symlinks them)."""
    entry = root / f"models--{repo.replace('/', '--')}"
    snap = entry / "snapshots" / rev
    shutil.copytree(ASSETS / "tiny-llada-instruct", snap, ignore=shutil.ignore_patterns("README.md"))
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / branch).write_text(rev)
    return snap


@pytest.fixture()
def offline_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache, fake_hub_cache(cache)


def test_hub_id_resolves_from_the_cache_offline(offline_cache, tmp_path):
    cache, snap = offline_cache
    assert resolve_model_path(REPO) == snap
    other = "c" * 40
    fake_hub_cache(cache, REPO.replace("tiny", "other"), other, branch="v1")
    assert resolve_model_path(REPO.replace("tiny", "other"), revision="v1").name == other
    # --download-dir is a cache folder of its own
    elsewhere = tmp_path / "dl"
    fake_hub_cache(elsewhere)
    assert resolve_model_path(REPO, download_dir=str(elsewhere)) == elsewhere / snap.relative_to(cache)


def test_missing_model_offline_is_a_clear_error(offline_cache):
    cache, _ = offline_cache
    with pytest.raises(CheckpointError) as err:
        resolve_model_path("nobody/not-cached")
    msg = str(err.value)
    assert "'nobody/not-cached'" in msg and str(cache) in msg and "HF_HUB_OFFLINE=1" in msg
    assert "hf download nobody/not-cached" in msg


def test_served_under_the_hub_id_offline(offline_cache, tmp_path):
    _, snap = offline_cache
    with RemoteServer(REPO, log_path=tmp_path / "hub.log") as srv, srv.http() as http:
        cards = http.get("/v1/models").json()["data"]
        assert [(c["id"], c["root"]) for c in cards] == [(REPO, str(snap.resolve()))]
        body = {"model": REPO, "prompt": "12+3=", "max_tokens": 4}
        assert http.post("/v1/completions", json=body).status_code == 200


def test_served_model_names_answer_to_each(offline_cache, tmp_path):
    with RemoteServer(REPO, ("--served-model-name", "a", "b"), log_path=tmp_path / "names.log") as srv, \
            srv.http() as http:
        assert [c["id"] for c in http.get("/v1/models").json()["data"]] == ["a", "b"]
        for name, code in (("a", 200), ("b", 200), (REPO, 404)):
            body = {"model": name, "prompt": "12+3=", "max_tokens": 4}
            assert http.post("/v1/completions", json=body).status_code == code, name
