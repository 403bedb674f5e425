"""A CPU engine keeps freed activation memory in its heap between steps (server/engine/host_memory.py)."""
import platform
import subprocess
import sys

import pytest

from unmask.server.engine import host_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Two runs of the same 8 requests; prints the second run's minor page faults (a fresh process per setting:
# malloc's thresholds are process-wide and cannot be put back).
PROBE = """
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


def _second_run_faults(setting: str, env: dict | None = None) -> tuple[int, bool]:
    out = subprocess.run([sys.executable, "-c", PROBE, setting], capture_output=True, text=True, timeout=300,
                         env=env, check=True).stdout.split()
    return int(out[0]), out[1] == "True"


@pytest.mark.skipif(not GLIBC, reason="the policy tunes glibc's malloc; other C libraries are left as they are")
def test_steps_touch_no_new_pages_when_retained():
    retained, applied = _second_run_faults("on")
    released, not_applied = _second_run_faults("off")
    assert applied and not not_applied
    # 8 requests x 32 steps = 256 steps; one step's activations span ~400 pages at this size. Retained: under 4
    # faults per step (the kernels' one-time setup, not activations). The default returns and re-touches pages.
    assert retained < 1024, retained
    assert released > 10 * retained, (released, retained)


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
