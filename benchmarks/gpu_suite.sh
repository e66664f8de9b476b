#!/usr/bin/env bash
# The README's single-GPU figures, in one call on a GPU machine:
#   bash benchmarks/gpu_suite.sh [stage ...]
# stages: env pyc tests train_char train_char_regional train_char_default sample bench hellaswag
# (default: all but tests and hellaswag)
# Needs the Tiny Shakespeare text at .dev/input.txt and tiktoken's GPT-2 files in .dev/tiktoken_cache.
# Logs go to $OUT (or /tmp/gpu_suite); a table of the results is printed last.
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TIKTOKEN_CACHE_DIR="$PWD/.dev/tiktoken_cache"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # nanogpt_plus for data/*/prepare.py where pip install -e . has not run
OUT=${OUT:-/tmp/gpu_suite}; mkdir -p "$OUT"
TABLE="$OUT/table.txt"; : > "$TABLE"
row() { printf '%-34s %s\n' "$1" "$2" | tee -a "$TABLE"; }
now() { date +%s.%N; }
secs() { echo "$1 $2" | awk '{printf "%.1f", $2 - $1}'; }
stamp() {  # each line with the seconds since the start
  python3 -u -c 'import sys, time; t0 = time.time(); [print(f"{time.time() - t0:7.2f} {line}", end="") for line in sys.stdin]'
}

stage_env() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/env.txt"
  python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$OUT/env.txt"
  row env "$(tr '\n' ' ' < "$OUT/env.txt")"
}

# What a pip install leaves: bytecode beside the sources of every package (this machine's image ships none)
stage_pyc() {
  local site; site=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  local t0; t0=$(now)
  python3 -m compileall -q -j 16 "$site" > /dev/null 2>&1
  row "compileall site-packages" "$(secs "$t0" "$(now)") s"
}

stage_tests() {
  python3 -m pytest -q -m gpu -p no:cacheprovider tests/ > "$OUT/tests.txt" 2>&1
  row "pytest -m gpu" "$(tail -1 "$OUT/tests.txt")"
}

prepare_char() {
  [ -f data/shakespeare_char/train.bin ] || python3 data/shakespeare_char/prepare.py .dev/input.txt > /dev/null
}

train_char() {  # $1: a name; the rest: flags. Start to exit, as a user runs it.
  local name=$1; shift
  local t0; t0=$(now)
  python3 train.py config/train_shakespeare_char.py --overwrite=True "$@" 2>&1 | stamp > "$OUT/train_char_$name.txt"
  local rc=${PIPESTATUS[0]} wall; wall=$(secs "$t0" "$(now)")
  local best; best=$(grep -o "best val loss [0-9.]*" "$OUT/train_char_$name.txt" | tail -1)
  local ms; ms=$(grep -o "time [0-9.]*ms" "$OUT/train_char_$name.txt" | tail -100 | grep -o "[0-9.]*" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  local loop; loop=$(grep -o "iters 0..5000 in [0-9.]*s" "$OUT/train_char_$name.txt")
  row "train_char $name" "rc=$rc ${wall}s (loop: $loop), median ${ms}ms/iter, $best"
}

# fresh: an empty torch.compile cache, as on a new machine; warm: the same run again
stage_train_char() {
  prepare_char
  export TORCHINDUCTOR_CACHE_DIR; TORCHINDUCTOR_CACHE_DIR=${FRESH_CACHE:-$(mktemp -d)}
  train_char fresh; train_char warm
}
# the same without recording the micro-step as a CUDA graph (each block compiled, launched eagerly)
stage_train_char_regional() { prepare_char; train_char regional --compile_mode=regional; }
# torch.compile of the whole model, mode default: the closest to classic nanoGPT's own step
stage_train_char_default() {
  prepare_char
  export TORCHINDUCTOR_CACHE_DIR; TORCHINDUCTOR_CACHE_DIR=$(mktemp -d)
  train_char default_fresh --compile_mode=default; train_char default_warm --compile_mode=default
}

stage_sample() {  # classic sample.py's work: 10 samples of 500 tokens from the char model, whole process
  local t0; t0=$(now)
  python3 sample.py --out_dir=out-shakespeare-char 2>&1 | stamp > "$OUT/sample.txt"
  row "sample.py 10x500" "rc=${PIPESTATUS[0]} $(secs "$t0" "$(now)")s, $(grep -c -- ' ---------------$' "$OUT/sample.txt") samples"
}

stage_bench() {  # GPT-2 124M training step; BENCH_ARGS adds flags
  for b in ${BENCH_BATCHES:-32}; do
    python3 bench.py --real_data=False --batch_size="$b" ${BENCH_ARGS:-} > "$OUT/bench_b$b.txt" 2>&1
    row "bench 124M b$b ${BENCH_ARGS:-}" "$(grep 'time per iteration' "$OUT/bench_b$b.txt" | sed 's/time per iteration: //')"
  done
}

stage_hellaswag() {  # eval_hellaswag.py over 10,042 synthetic items with a random GPT-2 124M, bf16
  local dir=/tmp/hellaswag_synthetic  # (a 500 MB checkpoint: not in $OUT)
  python3 benchmarks/hellaswag_synthetic.py "$dir" > /dev/null
  local t0; t0=$(now)
  python3 eval_hellaswag.py --out_dir="$dir" --hellaswag_file="$dir/hellaswag_val.jsonl" 2>&1 | stamp > "$OUT/hellaswag.txt"
  row "eval_hellaswag 124M 10,042 items" "rc=${PIPESTATUS[0]} $(secs "$t0" "$(now)")s whole, $(grep -o 'in [0-9.]*s ([0-9,.]* items/s)' "$OUT/hellaswag.txt")"
}

for s in ${*:-env pyc train_char sample bench train_char_default}; do echo "=== $s"; "stage_$s"; done
echo "=== table"; cat "$TABLE"
