#!/usr/bin/env bash
# Several GPUs of one host, in one call (NVLink multicast off):
#   bash benchmarks/multi_gpu.sh [stage ...]      stages: scaling resume fsdp (default: all)
#   NGPUS="1 2 4 8" (default: every count up to the GPUs present, powers of two)
# scaling: GPT-2 124M with config/train_gpt2.py's batch (491,520 tokens per iteration), compiled:
#          tokens/s and the first iterations' losses on each number of GPUs
# resume:  a checkpoint saved by the most GPUs, evaluated and trained on after resuming on 1 and 2
# fsdp:    a 6.7B-parameter GPT (32 layers of 4096) under FSDP on all GPUs: peak memory per GPU
#          beside what DDP would need (16 bytes a parameter before activations), its gathered
#          ckpt.pt, and a resume on half the GPUs; FSDP_MODEL="--n_layer=.. --n_head=.. --n_embd=.."
#          picks another size (e.g. GPT-2 large's for two GPUs)
# Needs .dev/input.txt (Tiny Shakespeare) and .dev/tiktoken_cache. Logs in $OUT; a table last.
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TIKTOKEN_CACHE_DIR="$PWD/.dev/tiktoken_cache"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # nanogpt_plus for data/*/prepare.py where pip install -e . has not run
OUT=${OUT:-/tmp/multi_gpu}; mkdir -p "$OUT"
TABLE="$OUT/table.txt"; : > "$TABLE"
row() { printf '%-30s %s\n' "$1" "$2" | tee -a "$TABLE"; }
MAX=$(nvidia-smi -L | wc -l)
NGPUS=$(echo ${NGPUS:-$(for n in 1 2 4 8; do [ "$n" -le "$MAX" ] && echo "$n"; done)})  # "1 2 4 8", no trailing space
[ -f data/shakespeare/train.bin ] || python3 data/shakespeare/prepare.py .dev/input.txt > /dev/null

train() {  # name, number of GPUs, flags...
  local name=$1 n=$2; shift 2
  torchrun --standalone --nproc_per_node="$n" train.py config/train_gpt2.py --dataset=shakespeare \
    --wandb_log=False --eval_iters=4 --log_interval=1 "$@" --out_dir="out-$name" > "$OUT/$name.txt" 2>&1
  echo $?
}
median_ms() {  # the median step time of the log lines from the 5th on
  grep -o "time [0-9.]*ms" "$OUT/$1.txt" | tail -n +5 | grep -o "[0-9.]*" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

stage_scaling() {
  for n in $NGPUS; do
    local rc; rc=$(train "g$n" "$n" --max_iters=20 --eval_interval=1000 --overwrite=True)
    local ms; ms=$(median_ms "g$n")
    local losses; losses=$(grep -o "^iter [0-3]: loss [0-9.]*" "$OUT/g$n.txt" | awk '{print $4}' | tr '\n' ' ')
    row "124M on $n GPU(s)" "rc=$rc ${ms}ms/iter $(awk -v ms="$ms" 'BEGIN {printf "%.0f", 491520 / ms * 1000}') tokens/s; losses $losses"
  done
}

stage_resume() {
  local n; n=${NGPUS##* }
  train resume_src "$n" --max_iters=8 --eval_interval=4 --always_save_checkpoint=True --overwrite=True > /dev/null
  for m in 1 2; do
    rm -rf "out-resume_$m"; cp -r out-resume_src "out-resume_$m"
    train "resume_$m" "$m" --init_from=resume --eval_only=True > /dev/null
    row "saved on $n, resumed on $m" "$(grep -o 'step 8: .*' "$OUT/resume_$m.txt") (saved run: $(grep -o 'step 8: .*' "$OUT/resume_src.txt"))"
  done
}

stage_fsdp() {
  local n; n=${NGPUS##* }
  local big="${FSDP_MODEL:---n_layer=32 --n_head=32 --n_embd=4096} --batch_size=4 --gradient_accumulation_steps=$n --eval_iters=1"
  local rc; rc=$(train fsdp "$n" $big --fsdp=True --max_iters=3 --eval_interval=2 --always_save_checkpoint=True --overwrite=True)
  row "FSDP on $n GPUs" "rc=$rc $(grep -o 'number of parameters: [0-9.]*M' "$OUT/fsdp.txt"), $(grep -o 'peak GPU memory on rank 0: [0-9.]* GiB' "$OUT/fsdp.txt"); DDP would need 16 B/param before activations; ckpt.pt $(du -h out-fsdp/ckpt.pt | cut -f1)"
  rc=$(train fsdp "$((n / 2))" $big --fsdp=True --init_from=resume --max_iters=4 --eval_interval=2)
  row "FSDP resumed on $((n / 2)) GPU(s)" "rc=$rc $(grep -o 'iter 3: loss [0-9.]*' "$OUT/fsdp.txt")"
}

for s in ${*:-scaling resume fsdp}; do echo "=== $s"; "stage_$s"; done
echo "=== table"; cat "$TABLE"
