"""Run benchmarks/serving.py across concurrency levels and presets; write JSON, a Markdown table and plots.

    python -m benchmarks.sweep                                  # embedded model, CPU, 1 4 16 64 × exact fast
    python -m benchmarks.sweep --machine h100 --server-args "--device cuda --max-num-seqs 64"
    python -m benchmarks.sweep --base-url http://127.0.0.1:8000 --machine my-box   # an already running server

Without ``--base-url`` it starts ``unmask serve [--model]`` itself (``--max-num-seqs`` = the highest
concurrency unless ``--server-args`` sets it). Each level runs closed-loop: ``--request-rate inf`` with
``--max-concurrency C`` and max(min-prompts, prompts-per-level × C) task-suite prompts; the preset goes in the
body (``{"preset": P}``). NFE/TPF come from the response usage when reported, else from the server's
/metrics counters before/after the run. Output: benchmarks/results/<machine>/ (sweep.json, sweep.md,
throughput.png, latency.png, machine.json and runs/<preset>-c<C>.json: each serving.py result).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from benchmarks import serving
from benchmarks.load import launch, markdown, plots, report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model for the launched server (default: the embedded one)")
    p.add_argument("--base-url", default=None, help="benchmark this running server instead of launching one")
    p.add_argument("--server-args", default="",
                   help="extra `unmask serve` flags for the launched server (write --server-args=\"--flag ...\")")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--presets", nargs="+", default=["exact", "fast"])
    p.add_argument("--prompts-per-level", type=int, default=4,
                   help="prompts = this × concurrency (at least --min-prompts)")
    p.add_argument("--min-prompts", type=int, default=16)
    p.add_argument("--dataset", default="tasks", choices=["tasks", "random", "jsonl"])
    p.add_argument("--endpoint", default="chat")
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--serving-args", default="",
                   help="extra serving.py flags for every run (write --serving-args=\"--flag ...\")")
    p.add_argument("--machine", default=None, help="results folder name (default: from the CPU model and cores)")
    p.add_argument("--results-root", default=str(Path(__file__).resolve().parent / "results"))
    return p.parse_args(argv)


def machine_name() -> str:
    """e.g. ``cpu-amd-epyc-7b13-2c``: the CPU model (from /proc/cpuinfo) and the usable cores."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1]
                break
    except OSError:
        pass
    model = re.sub(r"\((r|tm)\)|cpu|processor|\d+-core|@.*", "", model, flags=re.I)
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")
    return f"cpu-{slug}-{len(os.sched_getaffinity(0))}c"


def machine_info(args: argparse.Namespace, server_cmd: list[str] | None) -> dict:
    import torch
    return {"machine": args.machine, "node": platform.node(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "cpus": len(os.sched_getaffinity(0)),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": datetime.now().isoformat(timespec="seconds"), "sweep_command": "python -m benchmarks.sweep " + shlex.join(sys.argv[1:]),
            "server_command": shlex.join(server_cmd) if server_cmd else None}


def run_level(base_url: str, preset: str, conc: int, args: argparse.Namespace, out_dir: Path) -> dict:
    """One serving.py run at ``conc`` requests in flight; returns its result row."""
    num = max(args.min_prompts, args.prompts_per_level * conc)
    argv = ["--base-url", base_url, "--dataset", args.dataset, "--endpoint", args.endpoint,
            "--output-len", str(args.output_len), "--num-prompts", str(num), "--max-concurrency", str(conc),
            "--extra-body", json.dumps({"preset": preset}), "--label", f"{preset}-c{conc}",
            "--metric-percentiles", "50,90,99", "--ready-check-timeout-sec", "60", *shlex.split(args.serving_args)]
    sargs = serving.parse_args(argv)
    before = launch.scrape(base_url)
    res = asyncio.run(serving.benchmark(sargs))
    res.update(launch.server_side(before, launch.scrape(base_url)), preset=preset, concurrency=conc,
               serving_command="python -m benchmarks.serving " + shlex.join(argv))
    for key in ("nfe", "tpf"):
        if res[f"mean_{key}"] is None:
            res[f"mean_{key}"] = res[f"server_mean_{key}"]
    report.save(res, str(out_dir / "runs"), f"{preset}-c{conc}.json")
    print(f"[{preset} c={conc}] {res['completed']} ok / {res['failed']} failed, "
          f"{res['output_throughput']:.1f} tok/s, E2E p50 {res['median_e2el_ms']:.0f} ms", flush=True)
    return res


def write_outputs(rows: list[dict], info: dict, out_dir: Path, model: str) -> None:
    title = f"{model} on {info['machine']}"
    light = [{k: v for k, v in r.items() if not isinstance(v, list)} for r in rows]
    (out_dir / "sweep.json").write_text(json.dumps({"machine": info, "rows": light}, indent=1) + "\n")
    (out_dir / "machine.json").write_text(json.dumps(info, indent=1) + "\n")
    plots.throughput_plot(rows, out_dir / "throughput.png", title)
    plots.latency_plot(rows, out_dir / "latency.png", title)
    md = [f"# Serving sweep: {title}", "", f"- date: {info['date']}", f"- command: `{info['sweep_command']}`",
          f"- server: `{info['server_command'] or 'external'}`", f"- python {info['python']}, torch {info['torch']}, "
          f"{info['cpus']} CPUs{', ' + info['cuda'] if info['cuda'] else ''}", "",
          "Closed loop: every level keeps C requests in flight (request rate inf, max concurrency C). "
          "Latencies from streamed responses (TTFT = first chunk; E2E = last chunk).", "",
          markdown.table(rows), "", "![throughput](throughput.png)", "", "![latency](latency.png)", ""]
    (out_dir / "sweep.md").write_text("\n".join(md))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.machine = args.machine or machine_name()
    out_dir = Path(args.results_root) / args.machine
    out_dir.mkdir(parents=True, exist_ok=True)
    server = None
    if args.base_url is None:
        flags = shlex.split(args.server_args)
        if "--max-num-seqs" not in flags:
            flags += ["--max-num-seqs", str(max(args.concurrency))]
        log = Path(tempfile.mkdtemp(prefix="unmask-sweep-")) / "server.log"
        print(f"starting unmask serve (log: {log})", flush=True)
        server = launch.ServerProcess(args.model, flags + ["--disable-access-log"], log)
    base_url = args.base_url or server.base_url
    try:
        rows = [run_level(base_url, preset, c, args, out_dir) for preset in args.presets for c in args.concurrency]
        info = machine_info(args, server.command if server else None)
        write_outputs(rows, info, out_dir, rows[0]["model_id"])
    finally:
        if server is not None:
            server.stop()
    print(f"results in {out_dir}")
    return 0 if all(r["completed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
