"""One worker rank of a tensor-parallel engine, as its own spawned process (``workers.RankGroup`` starts and
watches them): join the process group, load this rank's shard, allocate its KV cache, then run each step rank 0
sends over the pipe until told to stop, or until the pipe closes (rank 0 is gone). An error is sent to rank 0
before the process exits with status 1.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from unmask.kernels import options
from unmask.kernels.options import KernelOptions
from unmask.server.engine.host_memory import retain_freed_host_memory
from unmask.server.engine.kv_cache import KVCacheManager, bytes_per_page
from unmask.server.engine.tp_runner import ShardStep
from unmask.server.models.loader import load_model
from unmask.server.models.parallel import TensorParallel, init_group
from unmask.server.models.quantize import weight_bytes


@dataclasses.dataclass(frozen=True)
class RankSpec:
    """What a worker needs to build its rank (picklable)."""
    model_path: str
    device: str
    """Rank 0's device; rank r uses ``rank_device``."""
    dtype: torch.dtype
    size: int
    expert_parallel: bool
    init_method: str
    timeout_s: float
    """Timeout of the collectives (longer than the step timeout: the watcher names a hang first)."""
    kernels: KernelOptions
    quantization: str | None
    """Load-time quantization (``load_model``), as rank 0's."""
    quantize_lm_head: bool
    cuda_graphs: bool
    """Greedy dual-cache block steps through this rank's captured CUDA graphs (``cuda_graph.graph_capture``)."""
    retain_host_memory: bool
    """On CPU, keep freed host memory in this process between steps (``host_memory.py``), as rank 0's engine."""


def rank_device(base: torch.device, rank: int) -> torch.device:
    """The device of ``rank`` when rank 0 uses ``base``: the next GPUs on CUDA, the CPU otherwise."""
    return torch.device("cuda", (base.index or 0) + rank) if base.type == "cuda" else base


def rss_anon_bytes() -> int | None:
    """This process's resident anonymous memory (Linux ``RssAnon``: not the mapped checkpoint files), else None."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    line = next((x for x in status.read_text().splitlines() if x.startswith("RssAnon:")), None)
    return int(line.split()[1]) * 1024 if line else None


def run_worker(rank: int, spec: RankSpec, conn) -> None:
    """A worker process: join the group, load this rank's shard, then run what rank 0 sends until told to stop
    or until rank 0 goes away."""
    try:
        device = rank_device(torch.device(spec.device), rank)
        if device.type == "cpu":  # the node's cores are shared by the ranks
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.size))
            if spec.retain_host_memory:
                retain_freed_host_memory()
        conn.send(("hello", os.getpid()))
        tp = TensorParallel(rank, spec.size, spec.expert_parallel)
        init_group(rank, spec.size, spec.init_method, device, spec.timeout_s)
        before = rss_anon_bytes()
        model, cfg = load_model(spec.model_path, device, spec.dtype, spec.quantization, spec.quantize_lm_head, tp=tp)
        conn.send(("loaded", {"pid": os.getpid(), "rss_before_load": before, "rss_after_load": rss_anon_bytes(),
                              "param_bytes": weight_bytes(model)["total"]}))
        num_pages = conn.recv()
        local = tp.local_config(cfg)
        kv = KVCacheManager(local, num_pages * bytes_per_page(local, spec.dtype), device, spec.dtype)
        kernels = options.resolve(spec.kernels)
        shard = ShardStep(model, tp, kv, device, cfg, spec.cuda_graphs, kernels)
        conn.send(("ready", None))
        with options.use(kernels):
            while True:
                kind, arg = pickle.loads(conn.recv_bytes())
                if kind == "stop":
                    break
                (shard.run if kind == "step" else shard.logits)(arg)
    except EOFError:  # rank 0 is gone
        os._exit(0)
    except BaseException as exc:  # noqa: BLE001 - report, then leave: rank 0 fails the group
        text = f"rank {rank}: {type(exc).__name__}: {exc}"
        traceback.print_exc()
        try:
            conn.send(("error", text))
        except OSError:
            pass
        os._exit(1)
    if dist.is_initialized():
        dist.destroy_process_group()
