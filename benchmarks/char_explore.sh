#!/usr/bin/env bash
# Exploration on the device machine: cold compile and step time of the shakespeare_char model,
# one process per way of running it (benchmarks/char_explore.py). Logs to $OUT.
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -X importtime -c "import torch" 2> "$OUT/imp_torch.txt"
python3 -X importtime -c "import torch, torch._dynamo, torch._inductor.compile_fx" 2> "$OUT/imp_compile.txt"

for v in ${VARIANTS:-eager eager-graph inductor-ro inductor-ro-noat inductor-ro-hybrid regional-graph regional-graph-noat 124m-inductor 124m-inductor-noat 124m-regional 124m-regional-noat}; do
  echo "=== $v"
  extra=""; [ "$v" = eager ] && extra=--profile
  TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) timeout 240 python3 benchmarks/char_explore.py "$v" $extra > "$OUT/$v.txt" 2>&1
  echo "rc=$?"; grep -E '^\{' "$OUT/$v.txt" || tail -5 "$OUT/$v.txt"
done

echo "=== profile"; grep -B2 -A34 "Self CPU" "$OUT/eager.txt" | cut -c1-160 | head -40
