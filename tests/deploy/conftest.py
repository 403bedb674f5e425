"""Ray Serve tests: a ``ray`` marker, the skip reason when the [ray] extra is absent, and process helpers."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

RAY_MISSING = "the [ray] extra is not installed (pip install -e \".[dev,ray]\"; CI installs it)"
HAVE_RAY = importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.serve") is not None


def pytest_configure(config):
    config.addinivalue_line("markers", "ray: starts a local Ray cluster (2 CPUs) and Ray Serve; needs the [ray] extra")
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:ray")  # Ray's own pydantic usage


def process_tree(root: int) -> set[int]:
    """``root`` and every live descendant (by /proc parent links; zombies count as gone)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    tree, frontier = {root} & set(parents), [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if state[state.rindex(")") + 2] != "Z":
            out.add(pid)
    return out
