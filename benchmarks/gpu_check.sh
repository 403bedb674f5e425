#!/usr/bin/env bash
# One GPU check, no downloads: kernel tests on CUDA (bf16 included), CUDA-engine tests, the whole-step table
# and the op benches, in that order of importance. ≤ 8 minutes: BUDGET (470 s) caps the whole script, steps
# that no longer fit are skipped and say so. Results under $OUT (default
# benchmarks/results/gpu-latest): check.log (everything printed), step_table.{json,md}, benches.json,
# step_table_{segmented,prefetch}.json (the step with UNMASK_ATTN_LOOP=segmented / prefetch),
# step_table_skinny.json (batch 1 with UNMASK_GEMM=triton), quant_step_table.json (the step with fp8 / int8 / int4
# weights against the quantized floors), picks.md (the
# fastest measured option per tunable decision, from benchmarks/kernels/pick_configs.py).
#   bash benchmarks/gpu_check.sh
# PHASES=tests or PHASES=timings runs one half (the log is appended to), e.g. the tests beside other GPU work
# and the timings alone afterwards. PHASES=tp (not a default phase; a machine with 2+ GPUs, e.g. BUDGET=900
# PHASES=tp bash benchmarks/gpu_check.sh) times the tensor-parallel engine at TP=1/2/4/8 (as many GPUs as there
# are) on LLaDA-8B / LLaDA-MoE-shaped 4-layer random checkpoints and checks its answers against one device:
# tp_step_{llada8b,moe}.json; first, tests/gpu's 2-GPU test of the per-rank captured graphs against eager.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu-latest}"
mkdir -p "$OUT" "$OUT/../.gpu_tmp_$$"
TMP="$OUT/../.gpu_tmp_$$"
LOG="$OUT/check.log"
PHASES="${PHASES:-tests timings}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the checkout imports without an install too
{
  pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "Running pip as the 'root'" | tail -n 5
  python -c "import unmask.server.engine.engine, unmask.kernels.triton_ops.attention as a; print('imports ok', a.__file__)"
  for m in tokenizers safetensors jinja2 numpy tqdm; do python -c "import $m" 2>/dev/null || echo "missing module: $m"; done
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
  python -c "import pytest_timeout" 2>/dev/null || pip install -q pytest-timeout 2>&1 | tail -n 1
} >>"$LOG" 2>&1

BUDGET="${BUDGET:-470}"  # seconds for the whole script: each step's timeout is cut to what is left of it
run() {  # name, timeout seconds, command...
  local name=$1 t=$2; shift 2
  local start=$SECONDS left=$((BUDGET - SECONDS))
  if ((left < 15)); then echo "=== $name rc=skipped (budget of ${BUDGET}s spent)" | tee -a "$LOG"; return; fi
  ((t > left)) && t=$left
  echo "=== $name: $*" >>"$LOG"
  timeout "$t" "$@" >>"$LOG" 2>&1
  echo "=== $name rc=$? $((SECONDS - start))s" | tee -a "$LOG"
}

[[ " $PHASES " == *" tests "* ]] &&
  run kernel_tests 200 python -m pytest -q -p no:cacheprovider tests/kernels tests/gpu --timeout 190 --continue-on-collection-errors
if [[ " $PHASES " == *" tp "* ]]; then
  run tp_tests 200 python -m pytest -q -p no:cacheprovider tests/gpu -k tensor_parallel --timeout 190
  run tp_step_llada8b 300 python -m benchmarks.tp_step --shape llada-8b --layers 4 --sizes 1,2,4,8 --batches 1,8 \
    --json "$OUT/tp_step_llada8b.json"
  run tp_step_moe 300 python -m benchmarks.tp_step --shape llada-moe --layers 4 --sizes 1,2,4,8 --batches 1,8 \
    --expert-parallel --json "$OUT/tp_step_moe.json"
fi
[[ " $PHASES " == *" timings "* ]] || { rm -rf "$TMP"; exit 0; }
run step_table 160 python -m benchmarks.step_table --iters 5 --json "$OUT/step_table.json" --markdown "$OUT/step_table.md"
bench() {  # op name
  run "bench_$1" 90 python "benchmarks/kernels/bench_$1.py" --quick --json "$TMP/$1.json"
}
step_ab() {  # name, batches; the environment names the variant: the graphed step for the A/B against step_table
  run "step_table_$1" 90 python -m benchmarks.step_table --shapes llada-8b,llada-moe --graphs on --batches "$2" \
    --iters 5 --json "$OUT/step_table_$1.json"
}
# most informative first: what the budget cuts at the end matters least
bench attention
UNMASK_ATTN_LOOP=prefetch step_ab prefetch 1,32  # the cached-attention key loops (UNMASK_ATTN_LOOP)
bench gemm
UNMASK_GEMM=triton step_ab skinny 1  # the skinny GEMM at the batch-1 step's 32 rows (UNMASK_GEMM)
bench moe
bench qgemm  # fp8 / int8 / int4 weights streamed by the quantized GEMM vs the bf16 GEMM
run quant_step_table 120 python -m benchmarks.quant_step_table --batches 1,8 --iters 5 --json "$OUT/quant_step_table.json"
UNMASK_ATTN_LOOP=segmented step_ab segmented 1,32
bench remask
bench norm
python - "$TMP" "$OUT/benches.json" <<'PY'
import json, pathlib, sys
tmp, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
out.write_text(json.dumps({p.stem: json.loads(p.read_text()) for p in sorted(tmp.glob("*.json"))}, indent=1))
PY
rm -rf "$TMP"
# which measured option is fastest per decision (attention loop and tiles, MoE tiles, step per loop)
python benchmarks/kernels/pick_configs.py "$OUT" >"$OUT/picks.md" 2>>"$LOG" && cat "$OUT/picks.md" >>"$LOG"
grep "^=== .* rc=" "$LOG"
