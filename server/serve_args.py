"""``unmask serve`` flags -> EngineConfig + ServerSettings, and the uvicorn launch.

The model positional argument and ``--device``/``--dtype`` are added by cli.py (shared with
``generate``). Every resource limit is a flag, so operators can size them; the defaults suit the
embedded tiny model and a single GPU.
"""
from __future__ import annotations

import argparse
import logging
import os
import re

from unmask.kernels.options import ATTN_LOOPS, GEMMS, KernelOptions
from unmask.server.api.settings import OPEN_PATHS, ServerSettings
from unmask.server.config import EngineConfig, SchedulerConfig

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def byte_size(text: str) -> int:
    """'1073741824', '512M', '4G', '1.5g' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 4G, 512M, 1048576)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be ≥ 1")
    return value


def add_serve_args(p: argparse.ArgumentParser) -> None:
    net = p.add_argument_group("network and security")
    net.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    net.add_argument("--port", type=int, default=8000)
    net.add_argument("--api-key", nargs="*", default=None,
                     help="accepted bearer key(s); also read from UNMASK_API_KEY. Default: no authentication")
    net.add_argument("--open-paths", nargs="*", default=list(OPEN_PATHS),
                     help=f"paths reachable without a key (default: {' '.join(OPEN_PATHS)})")
    net.add_argument("--allowed-origins", nargs="*", default=["*"], help="CORS origins (default *)")
    net.add_argument("--served-model-name", nargs="+", default=None,
                     help="name(s) clients may send as `model`; the first is the one reported (default: the model "
                          "argument as given: hub id, path or built-in name)")
    eng = p.add_argument_group("engine")
    eng.add_argument("--max-num-seqs", type=_positive, default=64, help="sequences stepped together (default 64)")
    eng.add_argument("--max-num-batched-tokens", type=_positive, default=16384, help="token budget per step")
    eng.add_argument("--max-model-len", type=_positive, default=None, help="longest canvas (prompt + generation)")
    eng.add_argument("--kv-cache-memory", type=byte_size, default=None,
                     help="bytes for the prefix/dual cache, e.g. 4G (default: 0.4 of free GPU memory, 1G on CPU)")
    eng.add_argument("--seed", type=int, default=0, help="seeds requests that give no seed")
    eng.add_argument("--attention-loop", choices=ATTN_LOOPS, default="merged",
                     help="cached attention's key loop on CUDA (default merged; UNMASK_ATTN_LOOP overrides)")
    eng.add_argument("--gemm", choices=GEMMS, default="cublas",
                     help="triton: the skinny GEMM for <= 64 rows on CUDA (default cublas; UNMASK_GEMM overrides)")
    eng.add_argument("--serial-combine", action="store_true",
                     help="merge split-KV attention partials inside the attention launch (UNMASK_SERIAL_COMBINE)")
    eng.add_argument("--no-retain-host-memory", dest="retain_host_memory", action="store_false",
                     help="on CPU, let glibc return freed activation memory to the OS after each step (default: keep "
                          "it in the heap, no page faults per step; MALLOC_* settings in the environment win)")
    lim = p.add_argument_group("request limits")
    lim.add_argument("--max-queue", type=int, default=None,
                     help="most requests waiting for a slot; more get 503 + Retry-After (default unbounded)")
    lim.add_argument("--max-prompt-tokens", type=_positive, default=None, help="longest prompt accepted")
    lim.add_argument("--max-tokens-limit", type=_positive, default=4096, help="largest max_tokens accepted")
    lim.add_argument("--max-steps", type=_positive, default=4096, help="largest steps accepted")
    lim.add_argument("--max-choices", type=_positive, default=64, help="largest n × prompts per request")
    lim.add_argument("--max-body-bytes", type=byte_size, default=16 << 20, help="largest body (default 16M)")
    lim.add_argument("--default-max-tokens", type=_positive, default=256,
                     help="chat budget when the request gives none (default 256)")
    lim.add_argument("--default-preset", choices=["exact", "fast"], default=None,
                     help="preset for requests that pick none (default exact: the reference algorithm)")
    lim.add_argument("--drain-timeout", type=float, default=30.0,
                     help="seconds SIGTERM waits for in-flight requests before aborting them (default 30)")
    lim.add_argument("--stream-write-timeout", type=float, default=30.0,
                     help="disconnect a streaming client that reads nothing for this many seconds (default 30)")
    lim.add_argument("--max-stream-buffer", type=_positive, default=1024,
                     help="engine outputs a stream may hold unread before its request is aborted (default 1024)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--disable-access-log", action="store_true")
    add_scale_out_args(p)


def add_scale_out_args(p: argparse.ArgumentParser) -> None:
    """Ray Serve replicas (``pip install -e ".[ray]"``; see server/deploy/ray_serve.py)."""
    ray = p.add_argument_group("scale-out with Ray Serve (the [ray] extra)")
    ray.add_argument("--replicas", type=_positive, default=None,
                     help="serve N replicas (one engine each) behind Ray Serve's HTTP proxy on --host/--port; "
                          "with --max-replicas, the initial count (default: one process, no Ray)")
    ray.add_argument("--ray-address", default="local",
                     help="'local' starts a private Ray cluster, 'auto' joins the running one (`ray start`), "
                          "or a cluster address (default local)")
    ray.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of a local Ray cluster (default all)")
    ray.add_argument("--num-cpus-per-replica", type=float, default=1.0, help="Ray CPUs per replica (default 1)")
    ray.add_argument("--num-gpus-per-replica", type=float, default=None,
                     help="Ray GPUs per replica (default 1 if --device is cuda or auto finds cluster GPUs, else 0)")
    ray.add_argument("--min-replicas", type=int, default=None, help="autoscaling floor (default 1)")
    ray.add_argument("--max-replicas", type=_positive, default=None,
                     help="autoscale between --min-replicas and this on ongoing requests per replica")
    ray.add_argument("--target-ongoing-requests", type=float, default=None,
                     help="autoscaling target per replica (default --max-num-seqs: a full batch)")
    ray.add_argument("--max-ongoing-requests", type=_positive, default=None,
                     help="requests the proxy sends one replica at once (default --max-num-seqs + --max-queue "
                          "(or --max-num-seqs when unbounded) + 8, so overload meets the engine's own 503)")


def build_configs(args: argparse.Namespace) -> tuple[EngineConfig, ServerSettings]:
    from unmask.server.models.resolve import DEFAULT_MODEL, resolve_model_path

    from unmask.server.cli import model_source_kwargs

    # fails fast (exit 2) on a bad model argument; a hub id is fetched into the cache here, before the server starts
    path = resolve_model_path(args.model, args.revision, args.download_dir)
    keys = tuple(args.api_key or ()) or tuple(k for k in [os.environ.get("UNMASK_API_KEY")] if k)
    engine = EngineConfig(
        model=str(path), device=args.device, dtype=args.dtype, kv_cache_memory=args.kv_cache_memory, seed=args.seed,
        **model_source_kwargs(args),
        generation_config=args.generation_config,
        override_generation_config=tuple((args.override_generation_config or {}).items()),
        scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                                  max_model_len=args.max_model_len),
        kernels=KernelOptions(args.attention_loop, args.gemm, args.serial_combine),
        retain_host_memory=args.retain_host_memory)
    names = tuple(args.served_model_name or [args.model or DEFAULT_MODEL])  # vLLM: the argument as given
    settings = ServerSettings(
        served_model_name=names[0], served_model_aliases=names[1:], model_root=str(path.resolve()), api_keys=keys,
        open_paths=tuple(args.open_paths),
        max_prompt_tokens=args.max_prompt_tokens, max_tokens_limit=args.max_tokens_limit, max_steps=args.max_steps,
        max_choices=args.max_choices, max_body_bytes=args.max_body_bytes, default_max_tokens=args.default_max_tokens,
        default_preset=args.default_preset, drain_timeout=args.drain_timeout,
        stream_write_timeout=args.stream_write_timeout, max_stream_buffer=args.max_stream_buffer)
    return engine, settings


def run_server(args: argparse.Namespace) -> int:
    if getattr(args, "replicas", None) is not None or getattr(args, "max_replicas", None) is not None:
        from unmask.server.deploy.launch import run_replicas
        return run_replicas(args)
    import uvicorn

    from unmask.server.api.app import DrainingServer, create_app
    from unmask.server.engine.async_engine import AsyncEngine
    from unmask.server.engine.engine import Engine

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine_config, settings = build_configs(args)
    server: DrainingServer | None = None

    def factory() -> AsyncEngine:
        client = AsyncEngine(Engine.from_config(engine_config), max_queue=args.max_queue)
        if engine_config.tensor_parallel_size > 1:  # a failed rank cannot be replaced: fail requests, then exit
            client.on_dead.append(lambda reason: server.exit_after_fault(reason))
        return client

    def on_load_error(exc: BaseException) -> None:
        server.fail(exc)

    app = create_app(settings, factory, args.max_num_seqs, on_load_error, tuple(args.allowed_origins))
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            access_log=not args.disable_access_log, timeout_graceful_shutdown=5,
                            timeout_keep_alive=5)
    server = DrainingServer(config, app.state.unmask, settings.drain_timeout)
    server.run()
    return server.exit_code
