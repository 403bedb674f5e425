"""Compile every Triton kernel for an H100 (sm_90) on a machine without a GPU: a fake driver reports the
target, launches become compile-only warmups, and Triton's bundled ptxas must accept the result.

Catches what the interpreter cannot: GPU lowering errors (dtype support, tl.dot shape rules, control flow)
and resource problems: per kernel it prints shared memory (fails above the H100's 227 KiB), registers and
spills (from ptxas -v), the MMA instructions used and the cp.async wait_group depths in the PTX (only 0: no
loop overlaps its loads with its compute). Numbers computed here are meaningless (nothing runs).
Registers and spills are read from the log of the ptxas run Triton itself makes (its own ptxas and flags, which
differ between versions: 3.9 compiles sm_90 with its CUDA 13 ptxas), so every kernel is compiled afresh in a
temporary cache. Outputs per Triton version: benchmarks/results/sm90-compile*/compile_check.txt.
    TRITON_INTERPRET= python benchmarks/kernels/compile_check.py [--small]
"""
import argparse
import atexit
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback

os.environ.pop("TRITON_INTERPRET", None)
os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"  # Triton prints its ptxas -v log after each compile
_CACHE = tempfile.mkdtemp(prefix="compile_check-")
os.environ["TRITON_CACHE_DIR"] = _CACHE  # empty: every kernel compiles (and logs) here
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver as _driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402


class _FakeDriver:
    """Just enough of a CUDA driver for JITFunction.run(warmup=True)."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_device_capability(self, device=None):
        return (9, 0)


H100_SMEM = 232448  # max dynamic shared memory per block on an H100 (227 KiB)
_compiled: list = []
_ptxas_logs: dict = {}  # (name, hash) -> the ptxas -v log Triton printed when it compiled that kernel


def _install_fake_driver():
    _driver.set_active(_FakeDriver())
    run = JITFunction.run

    def compile_only(self, *a, grid, warmup, **kw):
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            kernel = run(self, *a, grid=grid, warmup=True, **kw)
        if "ptxas" in log.getvalue():
            _ptxas_logs.setdefault((kernel.name, kernel.hash), log.getvalue())
        _compiled.append(kernel)
        return kernel

    JITFunction.run = compile_only


def _ptxas_report(kernel) -> tuple[int, int]:
    """(registers, spill-store bytes) of ``kernel`` from Triton's own ptxas log; without one (a Triton that does
    not print it), from running the ptxas Triton uses for sm_90 on the PTX (-1: not found)."""
    log = _ptxas_logs.get((kernel.name, kernel.hash))
    if log is None:
        try:
            from triton.backends.nvidia.compiler import get_ptxas
            ptxas = get_ptxas(90).path
        except (ImportError, AttributeError, RuntimeError):
            ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
        with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
            f.write(kernel.asm["ptx"])
        out = subprocess.run([ptxas, "-arch=sm_90a", "-v", f.name, "-o", os.devnull], capture_output=True, text=True)
        os.unlink(f.name)
        log = out.stderr
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores", log)
    return int(regs.group(1)) if regs else -1, int(spill.group(1)) if spill else -1


def _describe(kernels) -> tuple[list[str], int]:
    """One line per distinct compiled kernel; counts the ones whose shared memory cannot launch."""
    lines, bad, seen = [], 0, set()
    for k in kernels:
        key = (k.name, k.hash)
        if key in seen:
            continue
        seen.add(key)
        ptx = k.asm["ptx"]
        regs, spill = _ptxas_report(k)
        smem = k.metadata.shared
        flag = "SMEM>H100 " if smem > H100_SMEM else ("spills " if spill > 0 else "")
        bad += smem > H100_SMEM
        # cp.async groups a loop may leave in flight while it computes (0 only: no load/compute overlap)
        waits = ",".join(sorted(set(re.findall(r"cp\.async\.wait_group\s+(\d+)", ptx)), key=int)) or "-"
        mma = "wgmma" if "wgmma.mma_async" in ptx else ("mma" if "mma.sync" in ptx else "-")
        lines.append(f"        {flag}{k.name}: warps {k.metadata.num_warps} stages {k.metadata.num_stages} "
                     f"smem {smem} regs {regs} spill {spill} mma {mma} wait_group {waits}")
    return lines, bad


def cases(small: bool):
    """(name, thunk) pairs covering every kernel and the config branches (dtype, cache, splits, MoE table)."""
    from unmask.kernels.triton_ops import act, attention, linear, moe, norm, remask, rope, select

    e = lambda *s, dt=torch.bfloat16: torch.zeros(*s, dtype=dt)  # noqa: E731
    i32 = lambda *v: torch.tensor(v, dtype=torch.int32)  # noqa: E731
    out = []
    for dt in (torch.bfloat16, torch.float16, torch.float32):
        n, h, d = 64, 32, 128
        cu = i32(0, 32, 64)
        kc = e(40, 32, h, d, dt=dt)
        cache = (kc, kc.clone(), torch.arange(40, dtype=torch.int32).view(2, 20), i32(544, 300), i32(512, 100))
        out += [
            (f"rms_norm {dt}", lambda dt=dt: norm.rms_norm(e(8, 4096, dt=dt), e(4096, dt=dt), 1e-5)),
            (f"add_rms_norm {dt}", lambda dt=dt: norm.add_rms_norm(e(8, 2048, dt=dt), e(8, 2048, dt=dt),
                                                                    e(2048, dt=dt), 1e-5)),
            (f"silu_mul {dt}", lambda dt=dt: act.silu_mul(e(8, 2 * 12288, dt=dt))),
            (f"linear skinny {dt}", lambda dt=dt: [
                linear.linear_fwd(e(32, 4096, dt=dt), e(n_out, 4096, dt=dt), splits=s)
                for n_out, s in ((4096, 4), (12288, 1))]),
            (f"rope {dt}", lambda dt=dt: [rope.rope(e(4, 32, 128, dt=dt), e(4, 8, 128, dt=dt),
                                                    torch.arange(4), 1e4, f) for f in (True, False)]),
            (f"qk_norm_rope {dt}", lambda dt=dt: rope.qk_norm_rope(e(4, 16, 128, dt=dt), e(4, 16, 128, dt=dt),
                                                                   e(4, 128, dt=torch.float32),
                                                                   e(4, 128, dt=torch.float32), False,
                                                                   e(128, dt=dt), e(128, dt=dt), 1e-6)),
            (f"attention no-cache {dt}", lambda dt=dt, cu=cu: attention.attention_fwd(
                e(n, h, d, dt=dt), e(n, h, d, dt=dt), e(n, h, d, dt=dt), cu, 32, 0.1, num_splits=1)),
            (f"attention cache split {dt}", lambda dt=dt, cu=cu, c=cache: attention.attention_fwd(
                e(n, h, d, dt=dt), e(n, 8, d, dt=dt), e(n, 8, d, dt=dt), cu, 32, 0.1, *c, num_splits=4)),
            (f"attention cache segmented/prefetch {dt}", lambda dt=dt, cu=cu, c=cache: [attention.attention_fwd(
                e(n, h, d, dt=dt), e(n, h, d, dt=dt), e(n, h, d, dt=dt), cu, 32, 0.1, *c, num_splits=s,
                loop=loop) for s in (1, 4) for loop in ("segmented", "prefetch")]),
            (f"attention d=64 {dt}", lambda dt=dt, cu=cu: attention.attention_fwd(
                e(n, 4, 64, dt=dt), e(n, 4, 64, dt=dt), e(n, 4, 64, dt=dt), cu, 32, 0.1, num_splits=1)),
            (f"kv_cache_write {dt}", lambda dt=dt, kc=kc: attention.kv_cache_write(
                kc, kc.clone(), e(8, h, d, dt=dt), e(8, h, d, dt=dt), torch.arange(8))),
            (f"remask {dt}", lambda dt=dt: [remask.remask_fwd(e(32, 126464, dt=dt), torch.ones(32),
                                                              torch.arange(32), s) for s in (1, 8)]),
            (f"select {dt}", lambda dt=dt: select.select_commits(e(4, 32, dt=dt), torch.ones(4, 32, dtype=torch.bool),
                                                                 i32(1, 2, 3, 4), torch.zeros(4))),
            (f"moe_route {dt}", lambda dt=dt: moe.moe_route(e(16, 64, dt=torch.float32), 8, dt)),
        ]
        for tokens in ((32,) if small else (32, 256, 1024, 2048)):  # every row of the H100 config table
            out.append((f"fused_moe T={tokens} {dt}", lambda dt=dt, t=tokens: moe.fused_moe(
                e(t, 2048, dt=dt), e(64, 2048, 2048, dt=dt), e(64, 2048, 1024, dt=dt), e(t, 8, dt=dt),
                torch.randint(0, 64, (t, 8)))))
        if small:
            break
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--small", action="store_true", help="bf16 only, one MoE size")
    args = p.parse_args()
    _install_fake_driver()
    print(f"triton {triton.__version__}, sm_90 ({'--small' if args.small else 'all cases'})", flush=True)
    failed = 0
    for name, thunk in cases(args.small):
        _compiled.clear()
        try:
            thunk()
        except Exception:  # noqa: BLE001 - report every failure, keep going
            failed += 1
            print(f"FAILED  {name}\n{traceback.format_exc(limit=-3)}", flush=True)
            continue
        lines, bad = _describe(_compiled)
        failed += bad
        print(f"{'FAILED' if bad else 'ok':8}{name}", *lines, sep="\n", flush=True)
    print(f"{failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
