"""Tokens per second of GPT.generate with the KV cache against the classic recompute loop.

    python benchmarks/sample_speed.py                      # best device, full workloads
    python benchmarks/sample_speed.py --device=cpu --quick # small sizes, a smoke test
    python benchmarks/sample_speed.py --device=cuda --compile

Workloads (random-init models: speed does not depend on the weights):
  char      the shakespeare_char model (6 layers, 6 heads, 384 wide, block 256, vocab 65):
            num_samples sequential samples of max_new_tokens from a 1-token prompt, as sample.py draws them
  gpt2-1    a GPT-2 124M-shaped model (12/12/768, block 1024, vocab 50304): max_new_tokens from 1 token
  gpt2-512  the same model from a 512-token prompt (the prefill is part of the time)
All sample with temperature 0.8 and top_k 200, in one process, warm-up first, the median of --repeats.

Modes: cached (generate's default: the KV cache, its steps replayed as CUDA graphs on CUDA),
cached-eager (the KV cache without graphs; CUDA only, on CPU it is the same as cached) and
recompute (the classic loop: the whole cropped context every step).
On a small CPU the full workloads take many minutes: shrink them with --num_samples/--max_new_tokens.
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import autocast_context, check_device, check_dtype, default_device, default_dtype, enable_tf32  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

CHAR = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, bias=False, dropout=0.0)
GPT2 = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304, bias=False, dropout=0.0)
# name: (model shape, prompt length, samples, new tokens per sample)
WORKLOADS = {
    "char": (CHAR, 1, 10, 500),
    "gpt2-1": (GPT2, 1, 1, 500),
    "gpt2-512": (GPT2, 512, 1, 500),
}
# --quick: the same shapes, far fewer tokens
QUICK = {"char": (1, 40), "gpt2-1": (1, 8), "gpt2-512": (1, 8)}
# cached: generate's default (CUDA graphs on CUDA); cached-eager: the cache without graphs;
# recompute: the classic loop
MODES = ("cached", "cached-eager", "recompute")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default=default_device())
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on CUDA, else fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model's forward (both modes)")
    p.add_argument("--compile_mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset of " + ", ".join(WORKLOADS))
    p.add_argument("--modes", default=None, help="comma-separated subset of " + ", ".join(MODES))
    p.add_argument("--repeats", type=int, default=3, help="timed runs per cell; the median is shown")
    p.add_argument("--num_samples", type=int, default=None, help="override the samples per workload")
    p.add_argument("--max_new_tokens", type=int, default=None, help="override the new tokens per sample")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    args = p.parse_args(argv)
    args.dtype = args.dtype or default_dtype(args.device)
    args.workloads = args.workloads.split(",")
    on_cuda = torch.device(args.device).type == "cuda"
    args.modes = args.modes.split(",") if args.modes else [m for m in MODES if on_cuda or m != "cached-eager"]
    for name in args.workloads:
        if name not in WORKLOADS:
            p.error(f"unknown workload {name!r}: choose from {', '.join(WORKLOADS)}")
    for mode in args.modes:
        if mode not in MODES:
            p.error(f"unknown mode {mode!r}: choose from {', '.join(MODES)}")
    return args


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def make_model(shape, args):
    torch.manual_seed(args.seed)
    model = GPT(GPTConfig(**shape)).to(args.device).eval()
    if args.compile:
        model.compile(mode=args.compile_mode)
    return model


def run_workload(model, prompt, num_samples, max_new_tokens, mode, ctx):
    kwargs = {"use_cache": mode != "recompute"}
    if mode == "cached-eager":
        kwargs["cuda_graph"] = False
    with torch.no_grad(), ctx:
        for _ in range(num_samples):
            y = model.generate(prompt, max_new_tokens, temperature=0.8, top_k=200, **kwargs)
    return y


def time_cell(model, prompt, num_samples, max_new_tokens, mode, args, ctx):
    """Median seconds of the whole workload, after a warm-up run of one sample."""
    # warm-up: kernels, allocator, per-shape attention plans; with --compile every shape the run meets
    warm_tokens = max_new_tokens if args.compile or torch.device(args.device).type == "cuda" else 16
    run_workload(model, prompt, 1, min(warm_tokens, max_new_tokens), mode, ctx)
    times = []
    for _ in range(args.repeats):
        sync(args.device)
        t0 = time.perf_counter()
        run_workload(model, prompt, num_samples, max_new_tokens, mode, ctx)
        sync(args.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def describe(args) -> str:
    dev = torch.device(args.device)
    if dev.type == "cuda":
        where = torch.cuda.get_device_name(dev)
    else:
        where = f"{dev.type}, {torch.get_num_threads()} threads"
    compiled = f", torch.compile (mode={args.compile_mode or 'default'})" if args.compile else ", eager"
    return f"torch {torch.__version__} on {where}, dtype {args.dtype}{compiled}, median of {args.repeats}"


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device_type = check_device(args.device)
    check_dtype(args.device, args.dtype)
    if device_type == "cuda":
        enable_tf32()
    ctx = autocast_context(device_type, args.dtype)
    print(describe(args), flush=True)
    rows = []
    for name in args.workloads:
        shape, prompt_len, num_samples, max_new_tokens = WORKLOADS[name]
        if args.quick:
            num_samples, max_new_tokens = QUICK[name]
        num_samples = args.num_samples or num_samples
        max_new_tokens = args.max_new_tokens if args.max_new_tokens is not None else max_new_tokens
        model = make_model(shape, args)
        g = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, shape["vocab_size"], (1, prompt_len), generator=g).to(args.device)
        tokens = num_samples * max_new_tokens
        per_mode = {}
        for mode in args.modes:
            seconds, times = time_cell(model, prompt, num_samples, max_new_tokens, mode, args, ctx)
            per_mode[mode] = seconds
            shown = " ".join(f"{t:.3f}" for t in times)
            print(f"  {name:9s} {mode:12s} {num_samples} x {max_new_tokens} tokens: {shown} s", flush=True)
            rows.append((name, f"{num_samples}x{max_new_tokens}", prompt_len, mode, seconds, tokens))
        del model
        if device_type == "cuda":
            torch.cuda.empty_cache()
        base = per_mode.get("recompute")
        rows[-len(per_mode) :] = [row + (base / row[4] if base else None,) for row in rows[-len(per_mode) :]]
    print_table(rows)


def print_table(rows):
    head = f"| {'workload':9s} | {'tokens':8s} | {'prompt':6s} | {'mode':12s} | {'seconds':>8s} | {'tokens/s':>9s} | "
    head += f"{'ms/token':>8s} | {'vs recompute':>12s} |"
    print()
    print(head)
    print("|" + "|".join("-" * (len(cell)) for cell in head.split("|")[1:-1]) + "|")
    for name, size, prompt_len, mode, seconds, tokens, ratio in rows:
        ratio_text = f"{ratio:.2f}x" if ratio is not None else ""
        print(
            f"| {name:9s} | {size:8s} | {prompt_len:6d} | {mode:12s} | {seconds:8.3f} | {tokens / seconds:9.1f} | "
            f"{1000 * seconds / tokens:8.3f} | {ratio_text:>12s} |"
        )


if __name__ == "__main__":
    main()
