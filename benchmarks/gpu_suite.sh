#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one call on the device machine:
#   bash benchmarks/gpu_suite.sh [stage ...]      stages: env tests train_char sample_e2e bench sample (default: all)
#                                                 and train_char_nopyc (train_char without bytecode_cache.py),
#                                                 compile_threads_ab (short runs: in-process Inductor vs its pool)
# Needs .dev/input.txt (Tiny Shakespeare) and .dev/tiktoken_cache carried along. Logs land in $OUT,
# and a short table is printed last.
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TIKTOKEN_CACHE_DIR="$PWD/.dev/tiktoken_cache"
OUT=${OUT:-/tmp/gpu_suite}; mkdir -p "$OUT"
TABLE="$OUT/table.txt"; : > "$TABLE"
row() { printf '%-28s %s\n' "$1" "$2" | tee -a "$TABLE"; }
stages=${*:-env tests train_char sample_e2e bench sample}

stage_env() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/env.txt"
  python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/env.txt"
  row env "$(tr '\n' ' ' < "$OUT/env.txt")"
}

stage_tests() {
  python3 -m pytest -q -x tests/test_gpu.py tests/test_model.py tests/test_generate.py 2>&1 | tee "$OUT/tests.txt" | tail -5
  row "pytest (gpu+model+generate)" "$(tail -1 "$OUT/tests.txt")"
}

prepare_char() {
  [ -f data/shakespeare_char/train.bin ] || python3 data/shakespeare_char/prepare.py .dev/input.txt > "$OUT/prepare.txt"
}

train_char() {  # the issue's end-to-end run, timed from start to exit; $1 names it
  prepare_char
  local t0=$(date +%s%N)
  python3 train.py config/train_shakespeare_char.py ${TRAIN_ARGS:-} > "$OUT/train_char_$1.txt" 2>&1
  local rc=$? t1=$(date +%s%N)
  local best=$(grep -o "best val loss [0-9.]*" "$OUT/train_char_$1.txt" | tail -1)
  local ms=$(grep -o "time [0-9.]*ms" "$OUT/train_char_$1.txt" | tail -20 | grep -o "[0-9.]*" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  row "train_char $1 ${TRAIN_ARGS:-}" "rc=$rc wall=$(( (t1 - t0) / 1000000 ))ms median_iter=${ms}ms $best"
  grep "^time:" "$OUT/train_char_$1.txt" | tee -a "$TABLE"
  tail -3 "$OUT/train_char_$1.txt"
}

# cold: a fresh torch.compile cache, as on a new machine; warm: the same run again (a user's second run)
# (bytecode_cache.py keeps its cache inside TORCHINDUCTOR_CACHE_DIR, so cold starts without it too)
stage_train_char() { export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d); train_char cold; train_char warm; }
stage_train_char_nopyc() {
  export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) NANOGPT_BYTECODE_CACHE=0
  train_char nopyc_cold; train_char nopyc_warm; unset NANOGPT_BYTECODE_CACHE
}

# Regional compile runs Inductor in-process; TORCHINDUCTOR_COMPILE_THREADS=16 brings back its worker pool.
# Alternated 300-iteration runs: Inductor's cache emptied before each "fresh" one (bytecode kept), then warm.
short_run() {  # $1 name, $2 compile threads ("" = train.py's choice)
  local t0=$(date +%s%N)
  env ${2:+TORCHINDUCTOR_COMPILE_THREADS=$2} python3 train.py config/train_shakespeare_char.py \
    ${SHORT_ARGS:---max_iters=300 --eval_interval=150 --eval_iters=40} > "$OUT/short_$1.txt" 2>&1
  local rc=$? t1=$(date +%s%N)
  row "short $1" "rc=$rc wall=$(( (t1 - t0) / 1000000 ))ms $(grep '^time:' "$OUT/short_$1.txt")"
}
empty_inductor_cache() {  # all of torch.compile's cache but the bytecode
  find "$TORCHINDUCTOR_CACHE_DIR" -mindepth 1 -maxdepth 1 ! -name pycache -exec rm -rf {} +
}
stage_compile_threads_ab() {
  prepare_char
  export TORCHINDUCTOR_CACHE_DIR=$(mktemp -d)
  short_run fill_cache ""
  for i in 1 2; do
    empty_inductor_cache; short_run "fresh_inprocess_$i" ""
    empty_inductor_cache; short_run "fresh_pool_$i" 16
  done
  for i in 1 2; do short_run "warm_inprocess_$i" ""; short_run "warm_pool_$i" 16; done
}

stage_bench() {
  for b in ${BENCH_BATCHES:-12 32}; do
    python3 bench.py --real_data=False --batch_size=$b > "$OUT/bench_b$b.txt" 2>&1
    row "bench 124M batch $b" "$(grep 'time per iteration' "$OUT/bench_b$b.txt" | cut -c1-150)"
  done
}

stage_sample_e2e() {  # classic sample.py's workload, whole process: 10 x 500 tokens from the char model
  local t0=$(date +%s%N)
  python3 sample.py --out_dir=out-shakespeare-char > "$OUT/sample_e2e.txt" 2>&1
  local rc=$? t1=$(date +%s%N)
  row "sample.py 10x500 char" "rc=$rc wall=$(( (t1 - t0) / 1000000 ))ms samples=$(grep -c -- '^---------------$' "$OUT/sample_e2e.txt")"
}

stage_sample() {
  python3 benchmarks/sample_speed.py --device=cuda > "$OUT/sample_speed.txt" 2>&1
  tail -12 "$OUT/sample_speed.txt"
  row "sample_speed" "see sample_speed.txt"
}

for s in $stages; do echo "=== $s"; "stage_$s"; done
echo "=== table"; cat "$TABLE"
