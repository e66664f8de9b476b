#!/usr/bin/env bash
# DDP and FSDP on the GPUs of one host (run on a 2-GPU machine):
#   bash benchmarks/multi_gpu.sh
# GPT-2 124M tokens/s on 1 and 2 GPUs with the same total batch, and peak memory per GPU of a
# gpt2-xl-sized model under DDP and FSDP. Needs .dev/input.txt and .dev/tiktoken_cache. Table last.
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export TIKTOKEN_CACHE_DIR="$PWD/.dev/tiktoken_cache"
OUT=${OUT:-/tmp/multi_gpu}; mkdir -p "$OUT"
NGPU=${NGPU:-2}
TABLE="$OUT/table.txt"; : > "$TABLE"
row() { printf '%-34s %s\n' "$1" "$2" | tee -a "$TABLE"; }
[ -f data/shakespeare/train.bin ] || python3 data/shakespeare/prepare.py .dev/input.txt > "$OUT/prepare.txt"

median_iter_ms() {  # median of the last 6 logged step times
  grep -o "time [0-9.]*ms" "$1" | tail -6 | grep -o "[0-9.]*" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
}

train() {  # name nproc args...
  local name=$1 n=$2; shift 2
  if [ "$n" = 1 ]; then cmd=(python3 train.py); else cmd=(torchrun --standalone --nproc_per_node="$n" train.py); fi
  timeout ${LIMIT:-110} "${cmd[@]}" "$@" --out_dir="out-$name" > "$OUT/$name.txt" 2>&1
  echo "rc=$? $(median_iter_ms "$OUT/$name.txt")ms/iter $(grep -o 'val loss [0-9.]*' "$OUT/$name.txt" | tail -1) $(grep -o 'peak GPU memory on rank 0: [0-9.]* GiB' "$OUT/$name.txt")"
}

GPT2="config/train_gpt2.py --dataset=shakespeare --wandb_log=False --eval_iters=4 --eval_interval=1000 --log_interval=1"
GPT2="$GPT2 --batch_size=16 --gradient_accumulation_steps=8 --max_iters=14 --compile=False"
row "124M, 1 GPU, 8x16x1024 tok/iter" "$(train g1 1 $GPT2)"
row "124M, $NGPU GPUs DDP, same batch" "$(train g$NGPU $NGPU $GPT2)"

XL="config/train_gpt2.py --dataset=shakespeare --wandb_log=False --eval_iters=1 --eval_interval=1000 --log_interval=1"
XL="$XL --n_layer=48 --n_head=25 --n_embd=1600 --batch_size=4 --gradient_accumulation_steps=$NGPU --max_iters=2 --compile=False"
row "gpt2-xl shape, $NGPU GPUs DDP" "$(train xl_ddp $NGPU $XL)"
row "gpt2-xl shape, $NGPU GPUs FSDP" "$(train xl_fsdp $NGPU $XL --fsdp=True)"
echo "=== table"; cat "$TABLE"
