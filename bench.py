"""Time train.py's training step (forward, backward, optimizer: step.py) on a GPT-2-shaped model.

    python bench.py                          # GPT-2 124M, batch 12, on the best device there is
    python bench.py --batch_size=32          # the README's comparison point
    python bench.py --optimizer=muon         # the step of train.py --optimizer=muon (Muon and AdamW)
    python bench.py --device=cpu --n_layer=2 --n_head=2 --n_embd=64 --block_size=64 \\
        --batch_size=4 --real_data=False --num_steps=3      # a quick look on a CPU
    python bench.py --sample=True            # sampling as sample.py runs it: decode tokens/s, time to the first token

The step runs as train.py would run it here (the plan it prints; on a CPU not compiled, as the CPU recipe, unless
--compile=True). Prints the time per iteration (the median of the repeats), tokens/s, MFU and peak GPU memory.
"""

import statistics
import time

import torch

from configurator import check_ranges, configure
from model import ARCH_KEYS, GPT, GPTConfig
from nanogpt_plus.dataloader import Batches
from nanogpt_plus.engine import MAX_TOKENS, Sampler
from nanogpt_plus.errors import UserError, report_user_errors
from nanogpt_plus.muon import muon_and_adamw
from nanogpt_plus.plan import check_device, chosen_dtype, default_device, default_dtype, make_plan, prepare_torch
from nanogpt_plus.step import TrainStep

report_user_errors()  # a mistake ends the run with one `error:` line, not a traceback

# -----------------------------------------------------------------------------
batch_size = 12  # sequences per step
block_size = 1024  # tokens per sequence
bias = False  # biases in the Linear and LayerNorm layers
real_data = True  # windows of data/<dataset>/train.bin; False: random tokens
dataset = "openwebtext"  # the dataset of real_data
seed = 1337  # the random seed
device = default_device()  # examples: 'cpu', 'cuda', 'cuda:0', 'cuda:1', etc., or 'mps'
dtype = default_dtype(device)  # 'float32', 'bfloat16' or 'float16'
compile = True  # use PyTorch 2.0 to compile the model to be faster (on a CPU or with sample=True: False unless given)
compile_mode = "auto"  # as train.py's: 'auto', 'regional' or a torch.compile mode, e.g. 'max-autotune-no-cudagraphs'
profile = False  # write a torch.profiler trace to ./bench_log instead of timing
n_layer = 12  # transformer blocks (GPT-2 124M)
n_head = 12  # attention heads per block
n_embd = 768  # width of the residual stream
vocab_size = 50304  # GPT-2's vocabulary, padded to a multiple of 64
head_loss = "auto"  # 'full' logits, 'chunked' (chunked_loss.py), or 'auto' (plan.py)
attention = "auto"  # 'sdpa', 'manual' (the masked softmax), or 'auto': sdpa on CUDA only
optimizer = "adamw"  # the optimizer stepped: 'adamw' (nanoGPT's) or 'muon' (train.py --optimizer=muon's, its defaults)
sample = False  # time sample.py's sampling instead, at batch 1 and 10: tokens/s and the time to the first token
max_new_tokens = 500  # sample=True: the tokens of each sample, after a one-token prompt
burn_in = 10  # untimed steps first: compilation, autotuning, allocator warm-up
num_steps = 20  # steps per timed repeat
repeats = 3  # timed repeats; the median is reported
# -----------------------------------------------------------------------------
config, changed = configure(globals())
config["dtype"] = dtype = chosen_dtype(device, dtype, changed)  # the default dtype follows the device finally chosen
if "compile" not in changed and (sample or check_device(device, dtype) == "cpu"):
    compile = False  # as sample.py, whose decode steps replay CUDA graphs uncompiled; on a CPU compiling costs
    # minutes and gains little on a small model (config/train_shakespeare_char.py trains uncompiled there)
# -----------------------------------------------------------------------------
# what cannot work is an error now, before anything is built or run
check_ranges(config, at_least_1=("batch_size", "num_steps", "repeats"))
if burn_in < 0:
    raise UserError(f"burn_in={burn_in} must not be negative (0: no untimed steps)")
if optimizer not in ("adamw", "muon"):
    raise UserError(f"unknown optimizer={optimizer!r}: use adamw (nanoGPT's) or muon")
if sample and not 1 <= max_new_tokens < MAX_TOKENS:  # sampling is timed per new token: none, nothing to time
    raise UserError(
        f"max_new_tokens={max_new_tokens} must be at least 1 with --sample=True (the tokens it times), and below 2**62"
    )
try:
    gpt_config = GPTConfig(**{k: config[k] for k in ARCH_KEYS})  # (dropout 0)
except ValueError as e:  # a shape no GPT can have
    raise UserError(str(e)) from None
plan = make_plan(
    device, dtype, compile=compile, compile_mode=compile_mode, head_loss=head_loss, attention=attention,
    vocab_size=vocab_size, task="sample" if sample else "train",
)  # fmt: skip
print(f"plan: {plan.describe()}")
device_type = plan.device_type
prepare_torch(seed)

# data: train.py's batches, or random tokens made once
if sample:
    get_batch = None
elif real_data:
    batches = Batches(dataset, block_size, batch_size, device, seed=seed)
    if (batches.max_token() or 0) >= vocab_size:
        raise UserError(f"--dataset={dataset} holds token id {batches.max_token()}: use a --vocab_size above it")
    get_batch = lambda it, k: batches.get("train", it)  # noqa: E731
else:
    x = torch.randint(vocab_size, (batch_size, block_size), device=device)
    y = torch.randint(vocab_size, (batch_size, block_size), device=device)
    get_batch = lambda it, k: (x, y)  # noqa: E731

# model, optimizer and train.py's step, as the plan says
model = GPT(gpt_config).to(device)
if not sample and optimizer == "muon":  # train.py's muon_lr, muon_momentum and muon_weight_decay defaults
    muon = dict(lr=0.02, momentum=0.95, weight_decay=0.01)
    torch_optimizer = muon_and_adamw(model, 1e-2, 1e-4, (0.9, 0.95), plan.fused_optimizer, muon)
    print("optimizer: Muon for the blocks' matrices, AdamW for the rest")
elif not sample:
    torch_optimizer = model.configure_optimizers(
        weight_decay=1e-2, learning_rate=1e-4, betas=(0.9, 0.95), device_type=device_type, fused=plan.fused_optimizer
    )
if not sample:
    step = TrainStep(model, torch_optimizer, plan, micro_steps=1, grad_clip=1.0, get_batch=get_batch)
plan.apply(model.eval() if sample else model)


def say_compiling():
    """One line before the first call of a compiled model, which waits (minutes on a CPU) while it compiles."""
    if plan.compile != "none":
        what = "each block" if plan.compile == "blocks" else "the model"
        slow = "; minutes on a CPU" if device_type == "cpu" else ""
        print(f"compiling {what} at its first call (torch.compile{slow})...", flush=True)


def sync():
    if device_type == "cuda":
        torch.cuda.synchronize()


def time_sampling(rows):
    """sample.py's Sampler on `rows` one-token prompts: a first call, which records its CUDA graphs,
    then the median of `repeats` calls; each call's time to its first new token is timed too."""
    idx = torch.randint(min(vocab_size, 50257), (rows, 1), device=device)
    sampler = Sampler(
        model, rows, 1, max_new_tokens, temperature=0.8, top_k=200, cuda_graph=plan.cuda_graph, cast_to=plan.cast_dtype
    )
    calls = []  # (seconds, seconds to the first new token) of each call
    for _ in range(1 + repeats):
        first = []  # when the first new token is on the device

        def told(out, t, first=first):
            if not first:
                sync()
                first.append(time.perf_counter())

        sync()
        t0 = time.perf_counter()
        with torch.no_grad(), plan.autocast():
            sampler(idx, on_tokens=told)
        sync()
        calls.append((time.perf_counter() - t0, first[0] - t0))
    dt, to_first = statistics.median(c[0] for c in calls[1:]), statistics.median(c[1] for c in calls[1:])
    line = f"sampling {rows} x {max_new_tokens} tokens: {rows * max_new_tokens / dt:,.0f} tokens/s"
    line += f" ({dt / max_new_tokens * 1000:.3f} ms per step), first token after {to_first * 1000:.1f} ms"
    if plan.cuda_graph:
        line += "; the first call, which records the CUDA graphs"
    else:
        line += "; the first call" + (", which compiles" if plan.compile != "none" else "")
    print(line + f": {calls[0][0]:.2f} s")


def timed_steps(first, n):
    """Seconds per step over n steps (a host clock read after the device is done), and the last loss."""
    sync()
    t0 = time.perf_counter()
    for k in range(first, first + n):
        loss = step(k, lr=1e-4)
    lossf = loss.item()  # waits for the device
    return (time.perf_counter() - t0) / n, lossf


say_compiling()
if sample:
    for rows in (1, 10):
        time_sampling(rows)
elif profile:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device_type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    schedule = torch.profiler.schedule(wait=5, warmup=5, active=5, repeat=1)
    trace = torch.profiler.tensorboard_trace_handler("./bench_log")
    with torch.profiler.profile(activities=activities, schedule=schedule, on_trace_ready=trace) as prof:
        for k in range(15):
            step(k, lr=1e-4)
            prof.step()
    sort_by = "cuda_time_total" if device_type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=40))
    print("profile written to ./bench_log")
else:
    t0 = time.perf_counter()
    if burn_in:
        timed_steps(0, burn_in)
    compiled = " (compilation included)" if plan.compile != "none" and burn_in else ""
    print(f"burn-in: {burn_in} steps in {time.perf_counter() - t0:.1f} s{compiled}")
    times = []
    for r in range(repeats):
        dt, lossf = timed_steps(burn_in + r * num_steps, num_steps)
        times.append(dt)
        print(f"repeat {r}: {dt * 1000:.2f} ms/iter, loss {lossf:.4f}")
    dt = statistics.median(times)
    peak, mfu_note = plan.peak_flops
    spread = (max(times) - min(times)) * 1000
    line = f"time per iteration: {dt * 1000:.2f} ms (median of {repeats}, spread {spread:.2f} ms)"
    line += f", {batch_size * block_size / dt:,.0f} tokens/s"
    if peak is not None:
        line += f", MFU {model.estimate_mfu(batch_size, dt, peak) * 100:.1f}%"
    if device_type == "cuda":
        line += f", peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    print(line)
    print(mfu_note)
