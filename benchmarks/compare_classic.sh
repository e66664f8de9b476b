#!/usr/bin/env bash
# Classic nanoGPT and this project, side by side in one call on one GPU machine:
#
#   bash benchmarks/compare_classic.sh CLASSIC_DIR [stage ...]
#
# CLASSIC_DIR is a checkout of karpathy/nanoGPT that this script may write into (its data/ and
# out-* folders): a copy, e.g. `cp -r ../shared/classic-nanogpt /tmp/classic`. Run from the root of
# this project. Stages (default: all, in this order): env pyc data train sample bench. Within each
# stage the two sides alternate, classic first. Tiny Shakespeare comes from $INPUT (default
# .dev/input.txt), else prepare.py downloads it. Logs go to $OUT (default /tmp/compare_classic); the
# table comes last. A ratio holds only inside one run of this script: host CPUs differ.
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
[ $# -ge 1 ] && [ -f "$1/train.py" ] || { echo "usage: bash benchmarks/compare_classic.sh CLASSIC_DIR [stage ...]" >&2; exit 2; }
CLASSIC=$(cd "$1" && pwd); shift
OURS=$(pwd)
# nanogpt_plus for data/*/prepare.py where pip install -e . has not run (classic's scripts find their own
# modules first, in their folder)
export PYTHONPATH="$OURS${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-/tmp/compare_classic}; mkdir -p "$OUT"
RESULTS=${RESULTS:-$OUT/results.tsv}  # one line per figure: work, side, value
INPUT=${INPUT:-.dev/input.txt}
REPEATS=${REPEATS:-3}  # whole-process repeats of each sample.py run (the median is reported)
BENCH_BATCHES=${BENCH_BATCHES:-12 32}  # the batch sizes of the bench stage
PY=${PYTHON:-python3}
CHAR_OUT=out-shakespeare-char  # both train.py's out_dir for config/train_shakespeare_char.py
CACHES=$(mktemp -d)  # each side's torch.compile and Triton caches

now() { date +%s.%N; }
result() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$RESULTS"; }  # work, side, value
side_dir() { if [ "$1" = classic ]; then echo "$CLASSIC"; else echo "$OURS"; fi; }
use_cache() { export TORCHINDUCTOR_CACHE_DIR="$CACHES/$1" TRITON_CACHE_DIR="$CACHES/$1/triton"; }  # SIDE's own

# `timed SIDE LOG cmd...`: runs cmd in SIDE's folder, its output to LOG, and prints its wall seconds
timed() {
  local dir; dir=$(side_dir "$1"); local log=$2; shift 2
  local t0; t0=$(now)
  (cd "$dir" && "$@") > "$log" 2>&1
  local rc=$?
  awk -v a="$t0" -v b="$(now)" 'BEGIN {printf "%.2f", b - a}'
  [ $rc -eq 0 ] || echo " (exit $rc, see $log)" >&2
}

# A script run as its own __main__, with its peak GPU memory printed at exit (classic's scripts don't say it)
PEAK='import atexit, runpy, sys, torch
atexit.register(lambda: print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"))
sys.argv = sys.argv[1:]; sys.path.insert(0, "."); runpy.run_path(sys.argv[0], run_name="__main__")'

stage_env() {
  local gpu cpu
  gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)
  cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
  result env gpu "$gpu"
  result env cpu "$cpu ($(nproc) cores)"
  result env software "$($PY -c 'import sys, torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, Python {sys.version.split()[0]}")')"
  result env date "$(date -u +%Y-%m-%d)"
}

# What a pip install leaves: bytecode beside every installed module (the GPU machine's image ships none)
stage_pyc() {
  local site; site=$($PY -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  $PY -m compileall -q -j 0 "$site" > /dev/null 2>&1
  return 0
}

# The same train.bin, val.bin and meta.pkl for both (the bytes are the same by contract)
stage_data() {
  [ -f "$INPUT" ] && export NANOGPT_INPUT_FILE=$PWD/$INPUT
  $PY data/shakespeare_char/prepare.py > "$OUT/prepare.txt" 2>&1 || { cat "$OUT/prepare.txt"; exit 1; }
  cp data/shakespeare_char/{train.bin,val.bin,meta.pkl} "$CLASSIC/data/shakespeare_char/"
}

train_once() {  # SIDE ROUND: shakespeare_char from start to exit, out_dir removed first
  local side=$1 round=$2 dir; dir=$(side_dir "$side")
  local log="$OUT/train_${side}_$round.txt"
  rm -rf "${dir:?}/$CHAR_OUT"
  use_cache "$side"
  local wall; wall=$(timed "$side" "$log" $PY train.py config/train_shakespeare_char.py)
  result "train $round" "$side" "$wall"
  # ms per iteration: the median of the last 100 log lines (each the mean of 10 iterations)
  result "iter $round" "$side" "$(grep -o 'time [0-9.]*ms' "$log" | tail -100 | grep -o '[0-9.]*' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')"
  result "best val $round" "$side" "$(grep -o 'val loss [0-9.]*' "$log" | grep -o '[0-9.]*' | sort -n | head -1)"
}

stage_train() {  # fresh: an empty compile cache for each side; warm: the same run again
  rm -rf "${CACHES:?}"/classic "${CACHES:?}"/ours
  for round in fresh warm; do
    for side in classic ours; do train_once "$side" "$round"; done
  done
}

stage_bench() {  # GPT-2 124M training step, random tokens, each script's own timing
  for b in $BENCH_BATCHES; do
    for side in classic ours; do
      local log="$OUT/bench_${side}_b$b.txt"
      use_cache "$side"  # (not the cache of whichever side trained last)
      timed "$side" "$log" $PY -c "$PEAK" bench.py --real_data=False --batch_size="$b" > /dev/null
      result "bench b$b" "$side" "$(grep -o 'time per iteration: [0-9.]*' "$log" | grep -o '[0-9.]*$')"
      result "bench b$b memory" "$side" "$(grep -o 'peak GPU memory [0-9.]*' "$log" | tail -1 | grep -o '[0-9.]*$')"
    done
  done
}

stage_sample() {  # 10 samples of 500 tokens from each side's own shakespeare_char checkpoint, whole process
  for r in $(seq "$REPEATS"); do
    result "sample" classic "$(timed classic "$OUT/sample_classic_$r.txt" $PY sample.py --out_dir=$CHAR_OUT)"
    result "sample" ours "$(timed ours "$OUT/sample_ours_$r.txt" $PY sample.py --out_dir=$CHAR_OUT)"
    result "sample batched" ours "$(timed ours "$OUT/sample_batched_$r.txt" $PY sample.py --out_dir=$CHAR_OUT --batch_samples=True)"
  done
}

: > "$RESULTS"
for s in ${*:-env pyc data train sample bench}; do echo "=== $s"; "stage_$s"; done
$PY benchmarks/compare_table.py "$RESULTS" | tee "$OUT/table.md"
