"""The Dockerfile without a docker engine: its install step is the README's, its ENTRYPOINT + CMD run
``unmask serve`` with flags the CLI accepts (the entrypoint shell is executed with a stub ``unmask`` and
the captured argv parsed by the real argparse parser), and the health check, port and user are right."""
from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10: the dev extra installs tomli
    import tomli as tomllib

from unmask.server.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
README = (ROOT / "README.md").read_text()


def instructions() -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        buf += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            key, _, rest = buf.partition(" ")
            out.append((key.upper(), rest.strip()))
            buf = ""
    return out


def first(key: str) -> str:
    return next(arg for k, arg in instructions() if k == key)


def env() -> dict[str, str]:
    out = {}
    for key, arg in instructions():
        if key == "ENV":
            out.update(dict(t.split("=", 1) for t in shlex.split(arg)))
    return out


def serve_options() -> set[str]:
    serve = next(a for a in build_parser()._actions if a.dest == "command").choices["serve"]
    return {s for action in serve._actions for s in action.option_strings}


def test_base_is_a_cuda_pytorch_image():
    base = re.search(r"ARG BASE_IMAGE=(\S+)", DOCKERFILE).group(1)
    assert base.startswith("pytorch/pytorch:") and "cuda" in base and "cudnn" in base
    assert first("FROM") == "${BASE_IMAGE}"


def test_install_step_is_the_readmes():
    readme_cmd = re.search(r"pip install -c constraints\.txt -e \.(?=\s|$| &&)", README)
    assert readme_cmd, "README quickstart install command changed: update the Dockerfile and this test"
    assert "leave `-c constraints.txt` out" in README  # the README's rule for machines that have torch
    runs = [arg for key, arg in instructions() if key == "RUN"]
    gpu_cmd = readme_cmd.group(0).replace("-c constraints.txt ", "")
    assert any(re.search(re.escape(gpu_cmd) + r"(\s|$)", r) for r in runs), runs
    assert first("COPY").split() == [".", "/app"] and first("WORKDIR") == "/app"


def test_dockerignore_keeps_what_the_install_needs():
    ignored = {l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and l[0] != "#"}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"], *project["tool"]["setuptools"]["package-dir"].values(),
              "server/assets", "server/api/static"}
    assert not needed & ignored and ".venv" in ignored and ".git" in ignored
    assert project["project"]["scripts"]["unmask"] == "unmask.server.cli:main"


def _entrypoint_argv(tmp_path: Path, extra_env: dict[str, str], args: list[str]) -> list[str]:
    """Run ENTRYPOINT + args with /bin/sh and a stub ``unmask`` that records its argv."""
    stub = tmp_path / "unmask"
    stub.write_text(f'#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    entry = json.loads(first("ENTRYPOINT"))
    run_env = {**os.environ, **env(), **extra_env, "PATH": f"{tmp_path}:{os.environ['PATH']}"}
    done = subprocess.run([*entry, *args], env=run_env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("extra_env, args, model", [
    ({}, None, None),
    ({"UNMASK_MODEL": "/models/LLaDA 8B"}, ["--max-num-seqs", "32", "--api-key", "sk-local"], "/models/LLaDA 8B"),
    ({"UNMASK_ARGS": "--max-queue 64 --default-preset fast"}, ["tiny-llada-instruct"], "tiny-llada-instruct"),
])
def test_entrypoint_is_unmask_serve_with_valid_flags(tmp_path, extra_env, args, model):
    cmd = json.loads(first("CMD")) if args is None else args
    argv = _entrypoint_argv(tmp_path, extra_env, cmd)
    assert argv[0] == "serve"
    parsed = build_parser().parse_args(argv)  # argparse exits (fails the test) on an unknown flag
    assert (parsed.command, parsed.model, parsed.host) == ("serve", model, "0.0.0.0")
    assert str(parsed.port) == env()["UNMASK_PORT"] == first("EXPOSE")


def test_every_flag_the_dockerfile_mentions_exists():
    used = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", first("ENTRYPOINT") + first("CMD")))
    example = " ".join(l.lstrip("# ").rstrip("\\") for l in DOCKERFILE.splitlines() if l.startswith("#   "))
    for run in re.findall(r"docker run (.*?)(?=docker |$)", example):
        tokens = shlex.split(run)
        used |= {t for t in tokens[tokens.index("unmask") + 1:] if t.startswith("--")}
    assert used and used <= serve_options(), used - serve_options()


def test_healthcheck_user_and_signals():
    from unmask.server.api.routes import router

    health = first("HEALTHCHECK")
    assert "/health" in health and "UNMASK_PORT" in health and "--start-period" in health
    assert "/health" in {r.path for r in router.routes}
    user = first("USER")
    assert user not in ("root", "0")
    keys = [k for k, _ in instructions()]
    assert keys.index("USER") > max(i for i, (k, a) in enumerate(instructions()) if k == "RUN" and "pip install" in a)
    assert "exec unmask serve" in first("ENTRYPOINT")  # PID 1 gets SIGTERM and drains
