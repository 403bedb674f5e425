"""pick_configs: from a gpu_check result folder, the fastest graphed option per decision and its speedup over
the current default; plain (non-graph), NaN and non-Triton rows never win."""
import json
import math
from benchmarks.kernels import pick_configs


def _row(bench, shape, provider, ms):
    return {"bench": bench, "shape": shape, "provider": provider, "ms": ms}


def _folder(tmp_path):
    attention = [
        _row("attn_cached", "B=8", "triton@graph", 0.06),
        _row("attn_cached", "B=8", "triton_prefetch@graph", 0.03),
        _row("attn_cached", "B=8", "triton_prefetch", 0.01),  # a plain (launch-timed) row never competes
        _row("attn_cached", "B=8", "sdpa_dense_kv@graph", 0.02),  # not an option for the engine
        _row("attn_cached", "B=8", "triton_segmented[bm=64,bn=64,w=4,s=5]@graph", float("nan")),
        _row("attn_full", "B=8", "triton@graph", 0.2),
        _row("attn_full", "B=8", "triton_full[bm=128,bn=64,w=8,s=3]@graph", 0.25),
    ]
    moe = [_row("moe", "T=1024", "triton_fused@graph", 0.47),
           _row("moe", "T=1024", "triton_fused[bm=128,bn=64/64,bk=64,w=8,s=3]@graph", 0.31)]
    gemm = [_row("gemm", "o M=32", "torch@graph", 0.02), _row("gemm", "o M=32", "triton_skinny@graph", 0.015),
            _row("gemm", "o M=32", "torch", 0.001)]
    (tmp_path / "benches.json").write_text(json.dumps({"attention": {"rows": attention}, "moe": {"rows": moe},
                                                       "gemm": {"rows": gemm}}))
    step = lambda loop, ms, graph=True: {"shape": "llada-8b", "batch": 32, "cuda_graph": graph,  # noqa: E731
                                          "ms_full_depth_est": ms, "x_floor_peak": round(ms / 18.6, 2)}
    (tmp_path / "step_table.json").write_text(json.dumps({"rows": [step("merged", 31.5), step("merged", 5.0, False)]}))
    (tmp_path / "step_table_prefetch.json").write_text(json.dumps({"attn_loop": "prefetch",
                                                                   "rows": [step("prefetch", 27.0)]}))
    (tmp_path / "step_table_skinny.json").write_text(json.dumps({"attn_loop": "merged", "gemm": "triton",
                                                                 "rows": [step("merged", 29.0)]}))
    return tmp_path


def test_op_choices(tmp_path):
    picks = {(p["bench"], p["shape"]): p for p in pick_configs.op_choices(json.loads(
        (_folder(tmp_path) / "benches.json").read_text()))}
    cached = picks[("attn_cached", "B=8")]
    assert cached["best"] == "triton_prefetch@graph" and cached["speedup"] == 2.0
    assert picks[("attn_full", "B=8")]["best"] == "triton@graph" and picks[("attn_full", "B=8")]["speedup"] == 1.0
    moe = picks[("moe", "T=1024")]
    assert moe["best"].startswith("triton_fused[bm=128") and math.isclose(moe["speedup"], 1.52)
    gemm = picks[("gemm", "o M=32")]  # the default here is torch's GEMM; its plain row does not compete
    assert gemm["best"] == "triton_skinny@graph" and math.isclose(gemm["speedup"], 1.33)


def test_step_choices_label_old_files_merged_and_skip_eager_rows(tmp_path):
    (step,) = pick_configs.step_choices(_folder(tmp_path))
    assert step["best"] == "prefetch" and step["ms"] == {"merged": 31.5, "prefetch": 27.0, "merged+skinny-gemm": 29.0}
    assert step["x_floor"] == round(27.0 / 18.6, 2)
    text = pick_configs.markdown([], [step])
    assert "| llada-8b | 32 | prefetch | merged 31.5, merged+skinny-gemm 29.0, prefetch 27.0 |" in text
