#!/usr/bin/env bash
# Muon against AdamW (issues 27 and 40), in one call on a GPU machine:
#   bash benchmarks/optimizers.sh [stage ...]
# stages: env char gpt2 bench code (default: env char gpt2)
#   char:  config/train_shakespeare_char.py with each optimizer, its schedule as it is (decay to 5000
#          iterations) but stopped at 2500, evaluated every 50: iterations and seconds to val loss 1.47
#   gpt2:  GPT-2 124M (config/train_gpt2.py's shape) from scratch on the shakespeare BPE bins, 500
#          iterations of 16 x 1024 tokens (8.2M tokens, ~27 epochs of its 300K) with each optimizer: val losses
#   bench: the time of a training step with each optimizer (issue 40: Muon's within 1.10x AdamW's): bench.py's
#          GPT-2 124M on random tokens at batch 12 and 32, and the median ms/iter of config/train_shakespeare_char.py
#          over BENCH_CHAR_ITERS=500 iterations. About 3 minutes.
#   code:  GPT-2 124M from scratch on the Python standard library's code (data/pystdlib below), 16 x 1024 tokens a
#          step, CODE_ITERS=350 iterations (5.7M tokens, under half an epoch) with AdamW at each learning rate of
#          CODE_ADAMW_LRS and Muon at each muon_lr of CODE_MUON_LRS (AdamW's part at learning_rate 6e-4), warmup a
#          tenth, cosine decay to a tenth at the end, evaluated every CODE_EVAL_INTERVAL=25: best val of each run,
#          then iterations and seconds to the target, CODE_TARGET or by default the higher of the two optimizers'
#          best val losses (which both best runs reach). CODE_ARGS adds train.py flags. About 8 minutes.
# Needs data/shakespeare_char/ and data/shakespeare/ prepared (their prepare.py) for char and gpt2; char and gpt2
# take about 4 minutes on an H200.
#
# The code corpus, data/pystdlib/, is made by the code stage when it is missing (rm -r data/pystdlib to rebuild):
# the .py files of python3's standard library (sysconfig's 'stdlib' path) but for site-packages and the few test
# files written in another encoding than UTF-8 on purpose (4 in Python 3.11), copied into /tmp/pystdlib_src, then
#   python3 data/prepare_text.py /tmp/pystdlib_src --glob='*.py' --tokenizer=gpt2 --name=pystdlib
# Python 3.11.7's: 1,786 files, 31.5M characters, 13.9M train and 1.4M val tokens (8 s on 2 CPU cores). It needs
# tiktoken's GPT-2 files: TIKTOKEN_CACHE_DIR, by default .dev/tiktoken_cache as benchmarks/gpu_suite.sh has them.
# Logs go to $OUT (or /tmp/optimizers), the runs' out_dirs to /tmp/optimizer_runs; a table is printed last.
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TIKTOKEN_CACHE_DIR="${TIKTOKEN_CACHE_DIR:-$PWD/.dev/tiktoken_cache}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # nanogpt_plus for data/prepare_text.py where pip install -e . has not run
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
  report "$name" "$target" "rc=$rc "
}

report() {  # $1: a run's name; $2: the target val loss or ''; $3: what its row starts with
  row "$1" "$3$(python3 benchmarks/optimizer_report.py "$RUNS/$1" "$OUT/$1.txt" ${2:+--target "$2"})"
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

stage_bench() {  # bench.py: random tokens, GPT-2 124M, the step as train.py runs it on this GPU (BENCH_ARGS adds flags)
  for b in 12 32; do
    for opt in adamw muon; do
      local log="$OUT/bench_${opt}_b$b.txt"
      python3 bench.py --real_data=False --batch_size="$b" --optimizer=$opt ${BENCH_ARGS:-} > "$log" 2>&1
      local rc=$?
      row "bench b$b $opt" "rc=$rc $(grep 'time per iteration' "$log" | sed 's/time per iteration: //')"
    done
  done
  [ -f data/shakespeare_char/train.bin ] || python3 data/shakespeare_char/prepare.py .dev/input.txt > /dev/null
  local n=${BENCH_CHAR_ITERS:-500}
  for opt in adamw muon; do  # one eval at the end only; train.py's median ms/iter over its logged steps
    run "bench_char_$opt" "" config/train_shakespeare_char.py --optimizer=$opt \
      --max_iters="$n" --eval_interval="$n" --eval_iters=20 --log_interval=10
  done
}

prepare_code() {  # data/pystdlib/, as the header says
  [ -f data/pystdlib/train.bin ] && return
  local stdlib; stdlib=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")
  rm -rf /tmp/pystdlib_src
  python3 - "$stdlib" /tmp/pystdlib_src <<'EOF'
import os, shutil, sys
from pathlib import Path

src, dst = map(Path, sys.argv[1:])
kept, left_out = 0, []
for root, dirs, names in os.walk(src):
    dirs[:] = [d for d in dirs if d != "site-packages" and not d.startswith(".")]
    for path in (Path(root, n) for n in names if n.endswith(".py") and not n.startswith(".")):
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:  # (test files of other encodings, on purpose)
            left_out.append(str(path.relative_to(src)))
            continue
        (dst / path.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dst / path.relative_to(src))
        kept += 1
print(f"{src}: {kept} .py files copied to {dst}; not UTF-8, left out: {', '.join(left_out) or 'none'}")
EOF
  python3 data/prepare_text.py /tmp/pystdlib_src --glob='*.py' --tokenizer=gpt2 --name=pystdlib 2> /dev/null
}

best_val() {  # the lowest val loss logged by the runs named, rounded up to 4 decimals
  python3 - "$RUNS" "$@" <<'EOF'
import csv, math, os, sys

vals = []
for name in sys.argv[2:]:
    path = os.path.join(sys.argv[1], name, "train_log.csv")
    if os.path.isfile(path):
        with open(path, newline="") as f:
            vals += [float(r["val_loss"]) for r in csv.DictReader(f) if r["val_loss"]]
print(f"{math.ceil(min(vals) * 1e4) / 1e4:.4f}" if vals else "")
EOF
}

stage_code() {
  prepare_code | tee "$OUT/code_prepare.txt"
  local n=${CODE_ITERS:-350} adamw=() muon=()
  local common=(config/train_gpt2.py --dataset=pystdlib --batch_size=16 --gradient_accumulation_steps=1
    --max_iters="$n" --lr_decay_iters="$n" --warmup_iters=$((n / 10)) --eval_interval=${CODE_EVAL_INTERVAL:-25}
    --eval_iters=10 --log_interval=10 --always_save_checkpoint=False)
  for lr in ${CODE_ADAMW_LRS:-6e-4 1.2e-3 2.4e-3}; do
    adamw+=("code_adamw_$lr")
    run "code_adamw_$lr" "" "${common[@]}" --optimizer=adamw --learning_rate="$lr" \
      --min_lr="$(python3 -c "print($lr / 10)")" ${CODE_ARGS:-}
  done
  for lr in ${CODE_MUON_LRS:-0.01 0.02 0.04}; do
    muon+=("code_muon_$lr")
    run "code_muon_$lr" "" "${common[@]}" --optimizer=muon --muon_lr="$lr" ${CODE_ARGS:-}
  done
  local target=${CODE_TARGET:-$(printf '%s\n' "$(best_val "${adamw[@]}")" "$(best_val "${muon[@]}")" | sort -g | tail -1)}
  [ -n "$target" ] || return
  for name in "${adamw[@]}" "${muon[@]}"; do report "$name" "$target" "@$target: "; done
}

for s in ${*:-env char gpt2}; do echo "=== $s"; "stage_$s"; done
tar -czf "$OUT/train_logs.tgz" -C "$RUNS" $(cd "$RUNS" && ls -d */train_log.csv 2>/dev/null)
echo "=== table"; cat "$TABLE"
