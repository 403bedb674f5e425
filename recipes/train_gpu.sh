#!/usr/bin/env bash
# Train both embedded checkpoints at once on one CUDA GPU (no downloads), under a wall-clock budget.
# Results under $OUT: tiny-llada-instruct/ and tiny-llada-moe-instruct/ (HF checkpoints), run-dense/ and
# run-moe/ (last.pt, loss.log, summary.json, tokenizer), dense.log and moe.log.
#   OUT=runs/gpu MINUTES=4.5 bash recipes/train_gpu.sh
# The shipped checkpoints' model cards give the exact command line each run used.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-runs/gpu}"
MINUTES="${MINUTES:-4.5}"
DEVICE="${DEVICE:-cuda}"
BATCH="${BATCH:-256}"
WORKERS="${WORKERS:-6}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export UNMASK_KERNELS=torch  # training needs autograd: the reference ops, not the inference kernels
common=(--device "$DEVICE" --batch-size "$BATCH" --lr 2e-3 --warmup 300 --steps 30000 --equal-lengths
        --workers "$WORKERS" --eval-n 0 --threads 2 --ckpt-every 500 --max-minutes "$MINUTES")
python -m recipes.train_tiny --family llada --out "$OUT/tiny-llada-instruct" --run-dir "$OUT/run-dense" \
  "${common[@]}" >"$OUT/dense.log" 2>&1 &
python -m recipes.train_tiny --family llada_moe --out "$OUT/tiny-llada-moe-instruct" --run-dir "$OUT/run-moe" \
  "${common[@]}" >"$OUT/moe.log" 2>&1 &
wait
for f in "$OUT/dense.log" "$OUT/moe.log"; do echo "== $f"; tr '\r' '\n' <"$f" | grep -v "^ *$" | tail -n 4; done
for r in run-dense run-moe; do echo "== $r"; tail -n 2 "$OUT/$r/loss.log"; done
