#!/usr/bin/env bash
# Exploration on the device machine: variants of the GPT-2 124M train step. Results to $OUT.
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/env.txt"
python3 -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.backends.cudnn.version())" | tee -a "$OUT/env.txt"
python3 - <<'PY' | tee -a "$OUT/env.txt"
import torch, time
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
for _ in range(3): a @ b
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(20): a @ b
torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 20
print(f"bf16 matmul 8192^3: {2 * 8192**3 / dt / 1e12:.0f} TFLOP/s")
PY
run() {  # name, timeout, args...
  local name=$1 t=$2; shift 2
  echo "=== $name: $*"
  timeout "$t" python3 bench.py --real_data=False --num_steps=20 --repeats=3 "$@" 2>&1 | grep -v Overriding | tee "$OUT/$name.txt" | tail -3
}
for spec in "$@"; do
  eval "run $spec"
done
echo "=== summary"
grep -H "time per iteration" "$OUT"/*.txt | sed "s|$OUT/||"
