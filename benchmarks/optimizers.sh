#!/usr/bin/env bash
# Muon against AdamW (issue 27), in one call on a GPU machine:
#   bash benchmarks/optimizers.sh [stage ...]
# stages: env char gpt2 (default: all)
#   char: config/train_shakespeare_char.py with each optimizer, its schedule as it is (decay to 5000
#         iterations) but stopped at 2500, evaluated every 50: iterations and seconds to val loss 1.47
#   gpt2: GPT-2 124M (config/train_gpt2.py's shape) from scratch on the shakespeare BPE bins, 500
#         iterations of 16 x 1024 tokens (8.2M tokens, ~27 epochs of its 300K) with each optimizer: val losses
# Needs data/shakespeare_char/ and data/shakespeare/ prepared (their prepare.py). About 4 minutes on an H200.
# Logs go to $OUT (or /tmp/optimizers), the runs' out_dirs to /tmp/optimizer_runs; a table is printed last.
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/optimizers}; mkdir -p "$OUT"
RUNS=/tmp/optimizer_runs; mkdir -p "$RUNS"
TABLE="$OUT/table.txt"; : > "$TABLE"
row() { printf '%-20s %s\n' "$1" "$2" | tee -a "$TABLE"; }
stamp() {  # each line with the seconds since the start
  python3 -u -c 'import sys, time; t0 = time.time(); [print(f"{time.time() - t0:7.2f} {line}", end="") for line in sys.stdin]'
}

run() {  # $1: a name; $2: the target val loss or ''; the rest: train.py's arguments
  local name=$1 target=$2; shift 2
  python3 train.py "$@" --out_dir="$RUNS/$name" --overwrite=True --wandb_log=False 2>&1 | stamp > "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  row "$name" "rc=$rc $(python3 benchmarks/optimizer_report.py "$RUNS/$name" "$OUT/$name.txt" ${target:+--target "$target"})"
}

stage_env() {
  row env "$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader) $(python3 -c 'import torch; print("torch", torch.__version__)')"
}

stage_char() {
  for opt in adamw muon; do
    run "char_$opt" 1.47 config/train_shakespeare_char.py --optimizer=$opt \
      --max_iters=2500 --eval_interval=50 --eval_iters=50 ${CHAR_ARGS:-}
  done
}

stage_gpt2() {  # the schedule scaled to the run: warm up 50, decay to min_lr over the 500
  for opt in adamw muon; do
    run "gpt2_$opt" "" config/train_gpt2.py --dataset=shakespeare --optimizer=$opt \
      --batch_size=16 --gradient_accumulation_steps=1 --max_iters=500 --lr_decay_iters=500 --warmup_iters=50 \
      --eval_interval=50 --eval_iters=20 --log_interval=10 --always_save_checkpoint=False ${GPT2_ARGS:-}
  done
}

for s in ${*:-env char gpt2}; do echo "=== $s"; "stage_$s"; done
tar -czf "$OUT/train_logs.tgz" -C "$RUNS" $(cd "$RUNS" && ls -d */train_log.csv 2>/dev/null)
echo "=== table"; cat "$TABLE"
