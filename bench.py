"""Time the full training step (forward, backward, optimizer) of a GPT-2-shaped model.

    python bench.py                                   # GPT-2 124M, batch 12, on the best device
    python bench.py --batch_size=32                   # the classic H100/H200 comparison point
    python bench.py --device=cpu --compile=False --n_layer=2 --n_head=2 --n_embd=64 \\
        --block_size=64 --batch_size=4 --real_data=False --num_steps=3   # a CPU smoke test

Prints time per iteration, tokens per second and MFU against the device's own peak.
"""

import itertools
import os
import statistics
import time

import bytecode_cache  # noqa: F401  (before torch: caches its bytecode when the install has none)

# isort: split
import torch

from common import (
    BatchSource,
    UserError,
    autocast_context,
    check_device,
    check_dtype,
    default_device,
    default_dtype,
    enable_tf32,
    run_main,
)
from configurator import configure
from model import GPT, GPTConfig, device_peak_flops

# -----------------------------------------------------------------------------
batch_size = 12
block_size = 1024
bias = False
real_data = True  # sample from data/<dataset>/train.bin; False: random tokens
dataset = "openwebtext"
seed = 1337
device = default_device()
dtype = default_dtype(device)
compile = True  # torch.compile the model
profile = False  # write a torch.profiler trace to ./bench_log instead of timing
# beyond classic bench.py: model shape and how long to measure
n_layer = 12
n_head = 12
n_embd = 768
vocab_size = 50304
burn_in = 10  # untimed steps first: compilation, autotuning, allocator warm-up
num_steps = 20  # steps per timed repeat
repeats = 3  # timed repeats; the median is reported
attn_backend = "auto"  # 'auto', or force an SDPA backend on CUDA: 'flash', 'cudnn', 'efficient', 'math'
compile_mode = "default"  # torch.compile mode, e.g. 'max-autotune-no-cudagraphs'
# -----------------------------------------------------------------------------


def make_batches(cfg):
    """A function returning (x, y) batches: windows of the real train.bin, or random tokens."""
    if not real_data:
        gen = torch.Generator().manual_seed(seed)
        x = torch.randint(vocab_size, (batch_size, block_size), generator=gen)
        y = torch.randint(vocab_size, (batch_size, block_size), generator=gen)
        x, y = x.to(cfg["device"]), y.to(cfg["device"])
        return lambda: (x, y)
    folder = os.path.join("data", dataset)
    if not os.path.isfile(os.path.join(folder, "train.bin")):
        raise UserError(f"{folder}/train.bin not found: run python data/{dataset}/prepare.py, or use --real_data=False")
    # train.py's sampler: random windows of block_size + 1 tokens, pinned copies on CUDA
    source = BatchSource(folder, block_size, batch_size, cfg["device"], seed=seed)
    keys = itertools.count()

    def get_batch():
        return source.get_batch("train", next(keys))

    return get_batch


def sdpa_context(device_type):
    from contextlib import nullcontext

    if attn_backend == "auto" or device_type != "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "math": SDPBackend.MATH,
    }
    if attn_backend not in backends:
        raise UserError(f"unknown attn_backend {attn_backend!r}: use auto, {', '.join(backends)}")
    return sdpa_kernel(backends[attn_backend])


def sync(device_type):
    if device_type == "cuda":
        torch.cuda.synchronize()


def run_steps(n, step, device_type):
    """Run n steps and return seconds per step (host clock after a device sync)."""
    sync(device_type)
    t0 = time.perf_counter()
    for _ in range(n):
        loss = step()
    sync(device_type)
    return (time.perf_counter() - t0) / n, loss.item()


def main():
    cfg, changed = configure(globals())
    global dtype
    if "dtype" not in changed:
        dtype = cfg["dtype"] = default_dtype(device)
    device_type = check_device(device)
    check_dtype(device, dtype)
    torch.manual_seed(seed)
    enable_tf32()

    model = GPT(
        GPTConfig(
            block_size=block_size,
            vocab_size=vocab_size,
            n_layer=n_layer,
            n_head=n_head,
            n_embd=n_embd,
            dropout=0.0,
            bias=bias,
        )
    ).to(device)
    optimizer = model.configure_optimizers(1e-2, 1e-4, (0.9, 0.95), device_type)
    fwd_model = torch.compile(model, mode=compile_mode, dynamic=False) if compile else model
    get_batch = make_batches(cfg)
    ctx = autocast_context(device_type, dtype)

    def step():
        x, y = get_batch()
        with ctx, sdpa_context(device_type):
            _, loss = fwd_model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    if profile:
        return run_profile(step)

    t0 = time.perf_counter()
    run_steps(burn_in, step, device_type)
    print(f"burn-in: {burn_in} steps in {time.perf_counter() - t0:.1f} s (includes compilation)")
    times = []
    for r in range(repeats):
        dt, loss = run_steps(num_steps, step, device_type)
        times.append(dt)
        print(f"repeat {r}: {dt * 1000:.2f} ms/iter, loss {loss:.4f}")
    report(model, statistics.median(times), times)


def report(model, dt, times):
    tokens = batch_size * block_size
    peak, label = device_peak_flops(device)
    mfu = model.estimate_mfu(batch_size, dt, peak_flops=peak) if peak else None
    mfu_text = f"{mfu * 100:.1f}% of {label}" if mfu is not None else label
    spread = (max(times) - min(times)) * 1000
    print(
        f"time per iteration: {dt * 1000:.2f} ms (median of {len(times)}, spread {spread:.2f} ms), "
        f"{tokens / dt:,.0f} tokens/s, MFU {mfu_text}"
    )


def run_profile(step):
    wait, warmup, active = 5, 5, 5
    schedule = torch.profiler.schedule(wait=wait, warmup=warmup, active=active, repeat=1)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    handler = torch.profiler.tensorboard_trace_handler("./bench_log")
    with torch.profiler.profile(
        activities=activities, schedule=schedule, on_trace_ready=handler, record_shapes=False, with_stack=False
    ) as prof:
        for _ in range(wait + warmup + active):
            step()
            prof.step()
    sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=90))
    print("profile written to ./bench_log")


if __name__ == "__main__":
    run_main(main)
