"""Hugging Face hub ids (``org/name``) -> a snapshot folder in the local hub cache, as vLLM and SGLang resolve them.

The cache is looked up first and never left when ``HF_HUB_OFFLINE=1``; otherwise only the files the server reads
are downloaded (config, generation config, tokenizer files, safetensors and their index), with huggingface_hub's
progress bars. ``HF_HOME`` / ``HF_HUB_CACHE`` are read at call time (not at import), so a process that changes
them still finds the right cache. huggingface_hub is already installed with ``tokenizers``, which requires it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from unmask.server.config import CheckpointError

SERVER_FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "tokenizer.model", "chat_template.jinja", "chat_template.json",
                "*.safetensors", "model.safetensors.index.json"]
"""Files a snapshot needs for ``unmask serve``: no PyTorch ``.bin`` weights, no remote code."""
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.\-]{0,95}/[\w.\-]{1,96}")


def is_repo_id(name: str) -> bool:
    """'org/name' with hub-legal characters and no path markers ('./', '~', a leading '/')."""
    return bool(_REPO_ID.fullmatch(name)) and ".." not in name and not name.startswith((".", "~"))


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def hub_cache_dir(download_dir: str | Path | None = None) -> Path:
    """``download_dir``, else ``HF_HUB_CACHE``, else ``HF_HOME``/hub, else ~/.cache/huggingface/hub."""
    if download_dir:
        return Path(download_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "huggingface"
    return Path(home).expanduser() / "hub"


def fetch_command(repo_id: str, revision: str | None, cache: Path) -> str:
    """The shell command that puts ``repo_id`` where the server looks for it."""
    rev = f" --revision {revision}" if revision else ""
    include = " ".join(f"'{p}'" for p in SERVER_FILES)
    return f"HF_HUB_CACHE={cache} hf download {repo_id}{rev} --include {include}"


def snapshot(repo_id: str, revision: str | None = None, download_dir: str | Path | None = None) -> Path:
    """The snapshot folder of ``repo_id`` at ``revision`` (default: the cached ``refs/main``), downloading the
    server's files when it is not cached and the hub may be reached. Raises CheckpointError naming the id, the
    cache folder and the command that fetches it."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - tokenizers depends on huggingface_hub
        raise CheckpointError(f"model {repo_id!r} looks like a Hugging Face id, which needs huggingface_hub "
                              "(pip install huggingface_hub)") from exc
    cache = hub_cache_dir(download_dir)
    kw = dict(revision=revision, cache_dir=str(cache), allow_patterns=SERVER_FILES)
    try:
        path = Path(snapshot_download(repo_id, local_files_only=True, **kw))
        if (path / "config.json").is_file():
            return path
    except Exception:  # noqa: BLE001 - not cached (or a partial entry): fall through to the download
        pass
    where = f"revision {revision!r} of " if revision else ""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")):
        raise CheckpointError(f"model {where}{repo_id!r} is not in the Hugging Face cache {cache} and HF_HUB_OFFLINE=1 "
                              f"forbids downloading it. Fetch it first with: {fetch_command(repo_id, revision, cache)}")
    try:
        return Path(snapshot_download(repo_id, **kw))
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo: one clear message
        raise CheckpointError(f"model {where}{repo_id!r}: not in the Hugging Face cache {cache} and the download "
                              f"failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                              f"Fetch it with: {fetch_command(repo_id, revision, cache)}") from exc
