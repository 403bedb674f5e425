"""A CPU engine keeps freed activation memory in its heap between steps (server/engine/host_memory.py)."""
import platform
import subprocess
import sys

import pytest

from unmask.server.engine import host_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
glibc_only = pytest.mark.skipif(not GLIBC, reason=(
    "the policy tunes glibc's malloc only: with another C library retain_freed_host_memory() returns False and "
    "leaves the allocator as it is (test_other_c_libraries_are_left_alone), so there is no retained heap to measure"))

# A fresh process per setting: malloc's thresholds are process-wide and cannot be put back.
ALLOC_PROBE = """
import ctypes, resource, sys
from unmask.server.engine.host_memory import retain_freed_host_memory
if sys.argv[1] == "on":
    assert retain_freed_host_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
def cycle():  # what a step does: many megabyte-sized activations written, then all freed
    blocks = [libc.malloc(1 << 20) for _ in range(64)]  # 64 x 1 MiB
    for b in blocks:
        libc.memset(b, 1, 1 << 20)
    for b in blocks:
        libc.free(b)
cycle(); cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
# The blocks come straight from malloc: with torch tensors, small allocations made between the blocks can pin the
# heap top, so how much glibc trims by default would depend on the allocation history.

# Two runs of the same 8 requests; prints the second run's minor page faults and whether the policy is applied.
ENGINE_PROBE = """
import resource, sys
import torch
from unmask import LLM, DiffusionParams
torch.set_num_threads(1)
llm = LLM(None, device="cpu", max_num_seqs=8, retain_host_memory=sys.argv[1] == "on")
prompts = [llm.tokenizer.encode_chat([{"role": "user", "content": f"Count to {i}."}]) for i in range(8)]
p = DiffusionParams(max_tokens=32, block_length=32, steps=32, early_stop=False)
first = llm.generate(prompts, p)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
second = llm.generate(prompts, p)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
assert [r.token_ids for r in first] == [r.token_ids for r in second]
print(faults, llm.engine.retains_host_memory)
"""


def _run(probe: str, setting: str) -> list[str]:
    return subprocess.run([sys.executable, "-c", probe, setting], capture_output=True, text=True, timeout=300,
                          check=True).stdout.split()


@glibc_only
def test_freed_activations_stay_in_the_heap():
    retained, released = (int(_run(ALLOC_PROBE, s)[0]) for s in ("on", "off"))
    # 5 cycles x 64 MiB = 81,920 pages if every cycle came back from the OS, which is what glibc does by default
    # (it trims the freed heap top: 81,760 measured); retained: none (0 measured).
    assert retained < 1024, retained
    assert released > 65536, released


@glibc_only
def test_engine_steps_touch_no_new_pages():
    faults, applied = _run(ENGINE_PROBE, "on")
    assert applied == "True"
    # 8 requests x 32 steps = 256 steps; one step's activations span ~400 pages at this size. Retained: under 4
    # faults per step (the kernels' one-time setup, not activations).
    assert int(faults) < 1024, faults
    assert _run(ENGINE_PROBE, "off")[1] == "False"  # LLM(retain_host_memory=False) leaves malloc as it is


def test_the_environment_settings_win(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda *_: calls.append(1))
    for key, value in (("MALLOC_TRIM_THRESHOLD_", "131072"), ("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")):
        with monkeypatch.context() as m:
            m.setenv(key, value)
            assert host_memory.retain_freed_host_memory() is False
    assert calls == []  # malloc untouched


def test_serve_flag_turns_it_off():
    import argparse

    from unmask.server.serve_args import add_serve_args

    p = argparse.ArgumentParser()
    add_serve_args(p)
    assert p.parse_args([]).retain_host_memory is True
    assert p.parse_args(["--no-retain-host-memory"]).retain_host_memory is False


def test_other_c_libraries_are_left_alone(monkeypatch):
    calls = []
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda *_: calls.append(1))
    monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert host_memory.retain_freed_host_memory() is False
    assert calls == []  # malloc untouched
