"""Read one ``gpu_check.sh`` result folder and say, per decision, which measured option is fastest: the cached
attention key loop (``UNMASK_ATTN_LOOP``) and its tiles, the no-cache attention tiles, the fused-MoE tile config
per batch, cuBLAS or the skinny GEMM (``UNMASK_GEMM``) per projection, and the whole graphed step per key loop
(and with the skinny GEMM). Only CUDA-graph timings (``@graph`` rows, graph step rows)
are compared, since they are what the engine runs. Prints Markdown; changes nothing.
    python benchmarks/kernels/pick_configs.py benchmarks/results/<gpu>
"""
import argparse
import json
import math
from pathlib import Path

DEFAULTS = {"attn_cached": "triton@graph", "attn_full": "triton@graph", "moe": "triton_fused@graph",
            "gemm": "torch@graph"}
"""The row each decision's current default produced (the table's own pick)."""


def _graph_rows(rows: list, bench: str) -> dict:
    """shape -> {provider: ms} for ``bench``'s finite @graph rows of Triton providers and of the default."""
    out: dict = {}
    for r in rows:
        p = r["provider"]
        engine_option = p.startswith("triton") or p == DEFAULTS[bench]
        if r["bench"] == bench and engine_option and p.endswith("@graph") and math.isfinite(r["ms"]):
            out.setdefault(r["shape"], {})[p] = r["ms"]
    return out


def op_choices(benches: dict) -> list[dict]:
    """One entry per (bench, shape): the fastest Triton @graph option and its speedup over the default's row."""
    picks = []
    for bench, key in (("attn_cached", "attention"), ("attn_full", "attention"), ("moe", "moe"), ("gemm", "gemm")):
        rows = benches.get(key, {}).get("rows", [])
        for shape, options in _graph_rows(rows, bench).items():
            best = min(options, key=options.get)
            default_ms = options.get(DEFAULTS[bench])
            picks.append({"bench": bench, "shape": shape, "best": best, "best_ms": options[best],
                          "default_ms": default_ms,
                          "speedup": round(default_ms / options[best], 2) if default_ms else None})
    return picks


def step_choices(folder: Path) -> list[dict]:
    """Whole graphed step per cached key loop: ``step_table.json`` (the default loop) and
    ``step_table_<loop>.json`` compared at every (shape, batch) they share."""
    by_loop: dict = {}
    for path in sorted(folder.glob("step_table*.json")):
        res = json.loads(path.read_text())
        # files written before step_table.py recorded the loop all used the only one there was then: merged
        stem_loop = "merged" if path.stem == "step_table" else path.stem.removeprefix("step_table_")
        loop = res.get("attn_loop") or stem_loop
        loop += "+skinny-gemm" if res.get("gemm") == "triton" else ""
        for r in res.get("rows", []):
            if r.get("cuda_graph"):
                by_loop.setdefault((r["shape"], r["batch"]), {})[loop] = (r["ms_full_depth_est"], r.get("x_floor_peak"))
    picks = []
    for (shape, batch), loops in sorted(by_loop.items()):
        best = min(loops, key=lambda name: loops[name][0])
        picks.append({"shape": shape, "batch": batch, "best": best, "ms": {k: v[0] for k, v in loops.items()},
                      "x_floor": loops[best][1]})
    return picks


def markdown(ops: list[dict], steps: list[dict]) -> str:
    lines = ["| op | shape | fastest @graph | ms | default ms | speedup |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {p['bench']} | {p['shape']} | {p['best']} | {p['best_ms']} | {p['default_ms']} | {p['speedup']} |"
              for p in ops]
    if steps:
        lines += ["", "| shape | batch | fastest loop | ms per loop (graph, full depth) | × floor |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {s['shape']} | {s['batch']} | {s['best']} | "
                  + ", ".join(f"{k} {v}" for k, v in sorted(s["ms"].items())) + f" | {s['x_floor']} |" for s in steps]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="a gpu_check.sh $OUT folder (benches.json, step_table*.json)")
    args = p.parse_args()
    benches_path = args.folder / "benches.json"
    if not benches_path.exists():
        raise SystemExit(f"{benches_path}: not found (run benchmarks/gpu_check.sh first)")
    print(markdown(op_choices(json.loads(benches_path.read_text())), step_choices(args.folder)))


if __name__ == "__main__":
    main()
