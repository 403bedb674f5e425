"""The ranks of a tensor-parallel engine on one node: worker processes 1..N-1, driven and watched by rank 0.

Rank 0 is the engine's own process: it loads its shard, runs the scheduler and, for every step, sends the forward's
inputs to each worker over a pipe (``tp_runner.StepPayload``) and then runs the same forward; the ranks meet in
``torch.distributed`` collectives (gloo on CPU, NCCL on CUDA: rank r on cuda:(i + r) when rank 0 has cuda:i).
Workers are spawned (``rank_worker.run_worker``), load only their own shard, allocate a KV cache of rank 0's page
count, then wait on their pipe: a pipe closed by rank 0 (its process ended) ends the worker too.

Faults: a watcher thread on rank 0 waits on the workers' process sentinels and times every step. A rank that
exits, or a step that takes longer than ``tp_step_timeout`` (a rank hangs), fails the group once: every
listener hears the reason (``AsyncEngine`` fails all requests with EngineDeadError and reports it through
``health()``; ``unmask serve`` then exits), the remaining workers are terminated (then killed) and joined, so
none is left behind. Any exception while the ranks run a step is fatal too (the ranks may no longer agree on
where they are in their collectives), raised to the engine as :class:`RankFailedError`.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection
import pickle
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from unmask.kernels import options
from unmask.kernels.options import KernelOptions
from unmask.server.config import EngineConfig, ModelConfig
from unmask.server.engine.client import EngineDeadError
from unmask.server.engine.kv_cache import KVCacheManager
from unmask.server.engine.rank_worker import RankSpec, run_worker
from unmask.server.engine.tp_runner import ShardStep, TPModelRunner
from unmask.server.models.loader import load_model
from unmask.server.models.parallel import TensorParallel, init_group

log = logging.getLogger("unmask.workers")
STARTUP_TIMEOUT_S = 600.0
"""Longest a worker may take to start and load its shard."""
COLLECTIVE_SLACK_S = 30.0
"""A collective's own timeout exceeds the step timeout by this much, so the watcher names a hang first."""


class RankFailedError(EngineDeadError):
    """A tensor-parallel rank died, hung or failed a step: the engine cannot serve any more."""


def _last_error(conn) -> str | None:
    """The error a dead worker sent before exiting, if any."""
    try:
        while conn.poll(0):
            kind, value = conn.recv()
            if kind == "error":
                return value
    except (EOFError, OSError):
        pass
    return None


class RankGroup:
    """Rank 0's handle on the worker ranks: start, per-step dispatch, fault watch, shutdown."""

    def __init__(self, spec: RankSpec, tp: TensorParallel, step_timeout_s: float):
        self.spec, self.tp, self.step_timeout_s = spec, tp, step_timeout_s
        self.listeners: list[Callable[[str], None]] = []
        """Called once, from any thread, with the reason when the group fails."""
        self.failure: str | None = None
        self.reports: list[dict] = []
        """Per worker rank 1..N-1: pid, weight bytes (``param_bytes``: parameters and quantized weights,
        ``quantize.weight_bytes``) and RssAnon before and after loading its shard."""
        self.model: torch.nn.Module | None = None
        self.cfg: ModelConfig | None = None
        self.store_dir: Path | None = None
        self._lock = threading.Lock()
        # The watcher and the engine thread may both reap a dead worker and read its pipe: one at a time, or the
        # loser's waitpid finds no child and its exit code reads None.
        self._read_lock = threading.Lock()
        self._closed = False
        self._step_started: float | None = None
        ctx = mp.get_context("spawn")
        self.conns, self.procs = [], []
        for rank in range(1, spec.size):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=run_worker, args=(rank, spec, child), name=f"unmask-tp-rank{rank}", daemon=True)
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    @classmethod
    def start(cls, path: Path, device: torch.device, dtype: torch.dtype, config: EngineConfig) -> "RankGroup":
        """Spawn ranks 1..N-1 (N = ``config.tensor_parallel_size``), join the group as rank 0 and load every rank's
        shard (rank 0's in this process: ``group.model``, ``group.cfg``). Raises ValueError naming the problem if
        the model cannot be split or a rank cannot start."""
        size, expert_parallel, step_timeout_s = (config.tensor_parallel_size, config.enable_expert_parallel,
                                                 config.tp_step_timeout)
        if size < 1:
            raise ValueError(f"tensor_parallel_size must be ≥ 1, got {size}")
        tp = TensorParallel(0, size, expert_parallel)
        tp.check(ModelConfig.from_pretrained(path))  # refuse an unsplittable model before spawning anything
        store = Path(tempfile.mkdtemp(prefix="unmask-tp-")) / "store"
        spec = RankSpec(str(path), str(device), dtype, size, expert_parallel, f"file://{store}",
                        step_timeout_s + COLLECTIVE_SLACK_S, config.kernels, config.quantization,
                        config.quantize_lm_head, config.cuda_graphs, config.retain_host_memory)
        group = cls(spec, tp, step_timeout_s)
        group.store_dir = store.parent
        try:
            for rank in range(1, size):
                group._expect(rank, "hello")
            init_group(0, size, spec.init_method, device, spec.timeout_s)
            group.model, group.cfg = load_model(path, device, dtype, config.quantization, config.quantize_lm_head,
                                                tp=tp)
            group.reports = [group._expect(rank, "loaded") for rank in range(1, size)]
        except BaseException:
            group.shutdown()
            raise
        return group

    def _expect(self, rank: int, kind: str):
        """The next message of worker ``rank``, which must be ``kind``; a worker that reports an error, exits
        or stays silent past STARTUP_TIMEOUT_S raises ValueError."""
        conn, proc = self.conns[rank - 1], self.procs[rank - 1]
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if conn.poll(0.1):
                got, value = conn.recv()
                if got == "error":
                    raise ValueError(f"tensor-parallel {value}")
                if got != kind:
                    raise RuntimeError(f"tensor-parallel rank {rank} sent {got!r}, expected {kind!r}")
                return value
            if not proc.is_alive():
                raise ValueError(f"tensor-parallel rank {rank} exited with code {proc.exitcode} while starting")
        raise ValueError(f"tensor-parallel rank {rank} did not start within {STARTUP_TIMEOUT_S:.0f} s")

    def runner(self, kv: KVCacheManager, kernels: KernelOptions, cuda_graphs: bool) -> TPModelRunner:
        """Rank 0's runner over ``kv``; every worker allocates a cache of the same page count, then the watcher
        starts. Every rank runs greedy dual-cache block steps through its own CUDA graphs when ``cuda_graphs``
        (the workers were told at spawn: ``RankSpec.cuda_graphs``)."""
        try:
            for conn in self.conns:
                conn.send(kv.num_pages)
            for rank in range(1, self.tp.size):
                self._expect(rank, "ready")
        except BaseException:
            self.shutdown()
            raise
        threading.Thread(target=self._watch, name="unmask-tp-watch", daemon=True).start()
        device = self.model.embed.device
        shard = ShardStep(self.model, self.tp, kv, device, self.cfg, cuda_graphs, options.resolve(kernels))
        return TPModelRunner(shard, self, self.cfg, device, kv, kernels)

    def run_all(self, kind: str, arg, local: Callable):
        """Send (kind, arg) to every worker, then run ``local(arg)`` here -> its result. Any failure is fatal
        (RankFailedError, the group failed)."""
        if self.failure is not None:
            raise RankFailedError(self.failure)
        data = pickle.dumps((kind, arg), protocol=pickle.HIGHEST_PROTOCOL)
        self._step_started = time.monotonic()
        try:
            for conn in self.conns:
                conn.send_bytes(data)
            return local(arg)
        except Exception as exc:  # noqa: BLE001 - the ranks may be out of step: no further step is safe
            reason = (self.failure or self._exited_rank(wait_s=1.0)
                      or f"tensor-parallel step failed on rank 0: {type(exc).__name__}: {exc}")
            self.fail(reason)
            raise RankFailedError(reason) from exc
        finally:
            self._step_started = None

    def _exited_rank(self, wait_s: float) -> str | None:
        """Why the group broke if a worker exited (or exits within ``wait_s``: a collective that failed because a
        peer died can be noticed before its process is gone): that rank, its exit code and its last error."""
        sentinels = {proc.sentinel: rank for rank, proc in enumerate(self.procs, start=1)}
        done = mp.connection.wait(list(sentinels), timeout=wait_s)
        if not done:
            return None
        rank = sentinels[done[0]]
        proc = self.procs[rank - 1]
        with self._read_lock:
            proc.join(1.0)
            said = _last_error(self.conns[rank - 1])
        return f"tensor-parallel rank {rank} (pid {proc.pid}) exited with code {proc.exitcode}" + (
            f" ({said})" if said else "")

    def _watch(self) -> None:
        """Watcher thread: a worker that exits, or a step past the timeout, fails the group."""
        while not self._closed and self.failure is None:
            reason = self._exited_rank(wait_s=0.2)
            if self._closed:
                return
            if reason is not None:
                self.fail(reason)
                return
            started = self._step_started
            if started is not None and time.monotonic() - started > self.step_timeout_s:
                self.fail(f"a tensor-parallel step did not finish within {self.step_timeout_s:g} s (a rank hangs)")
                return

    def fail(self, reason: str) -> None:
        """Fail the group once: tell the listeners, then end every worker."""
        with self._lock:
            if self.failure is not None or self._closed:
                return
            self.failure = reason
        log.error("%s: shutting the other ranks down", reason)
        for listener in list(self.listeners):
            try:
                listener(reason)
            except Exception:  # noqa: BLE001 - one listener must not keep the others from hearing it
                log.exception("tensor-parallel failure listener failed")
        self._end_workers(grace_s=0.0)

    def shutdown(self) -> None:
        """Stop every worker (asked first, then terminated, then killed) and leave the process group."""
        self._closed = True
        for conn in self.conns:
            try:
                conn.send_bytes(pickle.dumps(("stop", None)))
            except (OSError, ValueError):
                pass
        self._end_workers(grace_s=5.0)
        if dist.is_initialized():
            dist.destroy_process_group()
        if self.store_dir is not None:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def _end_workers(self, grace_s: float) -> None:
        with self._read_lock:  # reaping, as in _exited_rank
            for proc in self.procs:
                proc.join(grace_s)
            for proc in self.procs:
                if proc.is_alive():
                    proc.terminate()
                    proc.join(2.0)
                if proc.is_alive():
                    proc.kill()
                    proc.join(2.0)
            for conn in self.conns:
                conn.close()
