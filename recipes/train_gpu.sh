#!/usr/bin/env bash
# Train the embedded checkpoints on one CUDA GPU (no downloads), under a wall-clock budget; both families at
# once by default. Results under $OUT: tiny-llada-instruct/ and/or tiny-llada-moe-instruct/ (HF checkpoints),
# run-dense/ and/or run-moe/ (last.pt, loss.log, summary.json, tokenizer), dense.log and/or moe.log.
#   OUT=runs/gpu MINUTES=4.5 bash recipes/train_gpu.sh
# A further stage from earlier weights, one family, other optimiser settings and task mix:
#   OUT=runs/gpu3 FAMILIES=llada INIT_DENSE=runs/cpu-dense2 LR=1e-3 WARMUP=100 SEED=3 \
#     TASK_WEIGHTS=reverse=4,upper=4,sub=4 MINUTES=3.5 bash recipes/train_gpu.sh
# The shipped checkpoints' model cards give the exact command line each run used.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu}"
MINUTES="${MINUTES:-4.5}"
DEVICE="${DEVICE:-cuda}"
BATCH="${BATCH:-256}"
WORKERS="${WORKERS:-6}"
FAMILIES="${FAMILIES:-llada llada_moe}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export UNMASK_KERNELS=torch  # training needs autograd: the reference ops, not the inference kernels
common=(--device "$DEVICE" --batch-size "$BATCH" --lr "${LR:-2e-3}" --warmup "${WARMUP:-300}" --steps 30000
        --equal-lengths --workers "$WORKERS" --eval-n 0 --threads 2 --ckpt-every 500 --max-minutes "$MINUTES"
        --seed "${SEED:-0}")
[ -n "${TASK_WEIGHTS:-}" ] && common+=(--task-weights "$TASK_WEIGHTS")
for family in $FAMILIES; do
  case $family in
    llada) name=tiny-llada-instruct run=run-dense log=dense init="${INIT_DENSE:-}" ;;
    llada_moe) name=tiny-llada-moe-instruct run=run-moe log=moe init="${INIT_MOE:-}" ;;
    *) echo "unknown family: $family" >&2; exit 2 ;;
  esac
  extra=()
  [ -n "$init" ] && extra=(--init-from "$init")
  python -m recipes.train_tiny --family "$family" --out "$OUT/$name" --run-dir "$OUT/$run" \
    "${common[@]}" "${extra[@]}" >"$OUT/$log.log" 2>&1 &
done
wait
for f in "$OUT"/dense.log "$OUT"/moe.log; do
  [ -f "$f" ] && { echo "== $f"; tr '\r' '\n' <"$f" | grep -v "^ *$" | tail -n 4; }
done
for r in run-dense run-moe; do [ -f "$OUT/$r/loss.log" ] && { echo "== $r"; tail -n 2 "$OUT/$r/loss.log"; }; done
exit 0
