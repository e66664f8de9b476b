"""The shakespeare_char training step and eval forward on a GPU, timed and profiled kernel by kernel.

    python benchmarks/profile_step.py [variant ...]        # default: auto regional
    python benchmarks/profile_step.py --classic=DIR classic  # classic nanoGPT's step, from its model.py
    python benchmarks/profile_step.py --gpt2=12 auto classic  # GPT-2 124M at batch 12 (bench.py's shape)

Each variant builds config/train_shakespeare_char.py's model (6 x 384, batch 64 x 256, dropout 0.2,
vocabulary 65) and times train.py's step (nanogpt_plus/step.py) on random tokens: the median of 3 repeats of 100
steps, after 20 untimed ones (compilation included, and timed). Then 5 steps under torch.profiler give
the GPU time per step by kind of kernel (matmul, attention, Triton's fused kernels, optimizer, other)
and the top kernels; `eval` variants time one of train.py's evaluations (200 batches of each split,
25 batches a forward pass) instead. The roofline: about 1.16 TFLOP a step.

Variants: auto (train.py's plan), regional (the same blocks launched eagerly), nodrop (dropout 0),
flash / cudnn / efficient (that SDPA backend only), model (torch.compile of the whole model, no CUDA
graph: classic's way), model_graph (the same, recorded as a CUDA graph), autotune (blocks compiled
with mode max-autotune-no-cudagraphs), coord (auto with coordinate_descent_tuning), aten_random
(dropout's random numbers from ATen, not Triton), full (full logits, for --gpt2), chunk1 (the chunked head
in one chunk, for --gpt2), mm_fp32 (the chunked head's weight gradient summed in float32 by the matmuls, out_dtype,
for --gpt2: shakespeare_char's 65 tokens take the full head),
regions (auto with the embeddings, ln_f and the head compiled too, each on its own), eval, eval_model,
eval_regions, eval_cudnn, eval_flash, classic.
"""

import argparse
import importlib.util
import os
import statistics
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import replace

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # model.py: not installed
from model import GPT, GPTConfig  # noqa: E402
from nanogpt_plus import chunked_loss  # noqa: E402
from nanogpt_plus.plan import make_plan, prepare_torch  # noqa: E402
from nanogpt_plus.step import TrainStep  # noqa: E402

B, T, V = 64, 256, 65
SHAPE = dict(block_size=T, vocab_size=V, n_layer=6, n_head=6, n_embd=384, bias=False)
DROPOUT = 0.2
BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION}  # fmt: skip


def kind(name):
    n = name.lower()
    if any(k in n for k in ("gemm", "nvjet", "xmma", "cutlass", "cublas", "splitk")):
        return "matmul"
    if any(k in n for k in ("flash", "fmha", "attention", "cudnn", "sdpa")):
        return "attention"
    if "adam" in n or "multi_tensor" in n or "foreach" in n:
        return "optimizer"
    if n.startswith("triton"):
        return "triton fused"
    return "other"


def kernel_profile(fn, steps, label):
    """GPU time per call of fn by kind of kernel, and the top kernels, from torch.profiler."""
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    per_kernel = defaultdict(float)
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per_kernel[e.name] += e.device_time_total / 1000 / steps  # ms per call
    kinds = defaultdict(float)
    for name, ms in per_kernel.items():
        kinds[kind(name)] += ms
    total = sum(kinds.values())
    print(f"[{label}] GPU busy {total:.3f} ms per call: " + ", ".join(
        f"{k} {ms:.3f}" for k, ms in sorted(kinds.items(), key=lambda kv: -kv[1])))  # fmt: skip
    ranked = sorted(per_kernel.items(), key=lambda kv: -kv[1])
    for name, ms in ranked[:18] + [kv for kv in ranked[18:] if kind(kv[0]) == "other"][:8]:  # (and what "other" is)
        print(f"    {ms:7.3f} ms  {kind(name):12s} {name[:110]}")


def build(dropout=None):
    prepare_torch(1337)
    return GPT(GPTConfig(**SHAPE, dropout=DROPOUT if dropout is None else dropout)).cuda()


def classic_model(classic_dir):
    spec = importlib.util.spec_from_file_location("classic_model", os.path.join(classic_dir, "model.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prepare_torch(1337)
    return module.GPT(module.GPTConfig(**SHAPE, dropout=DROPOUT)).cuda()


def compile_outside_blocks(model):
    """The 'regions' variants: what runs eagerly around the compiled blocks compiled too, each part on
    its own (the embeddings, the embedding dropout, ln_f, the head and loss)."""
    for module in (model.transformer.wte, model.transformer.wpe, model.transformer.drop, model.transformer.ln_f):
        module.compile(dynamic=False)
    model.head_loss = torch.compile(model.head_loss, dynamic=False)


CHUNK_TOKENS, ADD_PRODUCT = chunked_loss.CHUNK_TOKENS, chunked_loss.add_product  # as the module has them


def add_product_in_matmul(total, a, b, acc):
    """The 'mm_fp32' variant's chunked_loss.add_product: the matmul writes float32 and adds total itself."""
    if total is None:
        return torch.mm(a, b, out_dtype=acc)
    return torch.addmm(total, a, b, out_dtype=acc)


def check_add_product_in_matmul():
    """The weight gradient of the chunked head with add_product_in_matmul against the module's own."""
    torch.manual_seed(0)
    x = torch.randn(3 * 4096, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(50304, 768, device="cuda") * 0.02).requires_grad_()
    y = torch.randint(50304, (3 * 4096,), device="cuda")
    grads = []
    for add in (ADD_PRODUCT, add_product_in_matmul):
        chunked_loss.add_product, chunked_loss.CHUNK_TOKENS = add, 4096  # (main puts both back for the next variant)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            chunked_loss.linear_cross_entropy(x, w, y).backward()
        grads.append(w.grad.clone())
        w.grad = None
    diff = ((grads[1] - grads[0]).abs().max() / grads[0].abs().max()).item()
    print(f"[mm_fp32] weight gradient against add_product's: max abs difference {diff:.2e} of the largest")


def time_calls(fn, n, repeats=3):
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            out = fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / n * 1000)
    return statistics.median(times), out


def train_variant(name, classic_dir):
    x = torch.randint(V, (B, T), device="cuda")
    y = torch.randint(V, (B, T), device="cuda")
    backend = sdpa_kernel([BACKENDS[name]]) if name in BACKENDS else nullcontext()
    if name == "classic":  # classic's own loop: torch.compile(model), step as its train.py
        raw = classic_model(classic_dir)
        opt = raw.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cuda")
        model = torch.compile(raw)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16)

        def step():
            with ctx:
                _, loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss
    else:
        model = build(0.0 if name == "nodrop" else None)
        mode = {"regional": "regional", "model": "default"}.get(name, "auto")
        plan = make_plan("cuda", "bfloat16", compile=True, compile_mode=mode, vocab_size=V)
        if name == "model_graph":  # the whole model compiled, and the micro-step recorded as a CUDA graph
            plan = replace(plan, compile="model", compile_mode="default")
        if name == "coord":  # Triton's block sizes tuned by coordinate descent
            torch._inductor.config.coordinate_descent_tuning = True
        if name == "aten_random":  # dropout's random numbers from ATen's kernels, not generated inside Triton's
            torch._inductor.config.fallback_random = True
        if name == "full":  # the full logits and F.cross_entropy instead of the chunked head
            plan = replace(plan, head_loss="full", chunk_step_compiled=False)
        if name == "chunk1":  # the chunked head with all tokens in one chunk
            chunked_loss.CHUNK_TOKENS = B * T
        if name == "mm_fp32":  # the chunked head's weight gradient summed by the matmuls, in float32
            check_add_product_in_matmul()
            chunked_loss.CHUNK_TOKENS, chunked_loss.add_product = CHUNK_TOKENS, add_product_in_matmul
        if name == "autotune":  # each block compiled with Triton's matmul templates tried too
            plan = replace(plan, compile="none")
        opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cuda", fused=plan.fused_optimizer)
        plan.apply(model)
        if name == "regions":
            compile_outside_blocks(model)
        if name == "autotune":
            for block in model.transformer.h:
                block.compile(dynamic=False, mode="max-autotune-no-cudagraphs")
        train_step = TrainStep(model, opt, plan, 1, 1.0, lambda it, k: (x, y))
        counter = iter(range(10**9))

        def step():
            return train_step(next(counter), 1e-3)

    with backend:
        t0 = time.perf_counter()
        for _ in range(20):
            loss = step()
        loss.item()
        first = time.perf_counter() - t0
        ms, loss = time_calls(step, 100)
        print(f"[{name}] {ms:.3f} ms/step (median of 3 x 100), first 20 steps {first:.1f} s, loss {loss.item():.3f}")
        kernel_profile(step, 5, name)


def eval_variant(name):
    model = build()
    mode = "default" if name == "eval_model" else "auto"
    plan = make_plan("cuda", "bfloat16", compile=True, compile_mode=mode, vocab_size=V)
    plan.apply(model)
    if name == "eval_regions":
        compile_outside_blocks(model)
    model.eval()
    xs = [torch.randint(V, (25 * B, T), device="cuda") for _ in range(2)]
    backend = sdpa_kernel([BACKENDS[name[5:]]]) if name[5:] in BACKENDS else nullcontext()

    @torch.no_grad()
    def evaluate():  # one evaluation: 16 forwards of 25 batches
        total = torch.zeros((), device="cuda")
        for i in range(16):
            with plan.autocast():
                _, loss = model(xs[i % 2], xs[(i + 1) % 2])
            total += loss.float()
        return total

    with backend:
        t0 = time.perf_counter()
        evaluate().item()
        first = time.perf_counter() - t0
        ms, _ = time_calls(evaluate, 3)
        print(f"[{name}] {ms:.1f} ms per evaluation (400 batches), first {first:.1f} s; x21 = {ms * 21 / 1000:.2f} s")
        kernel_profile(evaluate, 1, name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="*", default=["auto", "regional"])
    parser.add_argument("--classic", default="/tmp/classic", help="a checkout of karpathy/nanoGPT")
    parser.add_argument("--gpt2", type=int, default=0, metavar="BATCH", help="GPT-2 124M at this batch instead")
    args = parser.parse_args()
    if args.gpt2:  # bench.py's shape: 12 x 768, 1024 tokens, 50,304-token vocabulary, no dropout
        global B, T, V, SHAPE, DROPOUT
        B, T, V, DROPOUT = args.gpt2, 1024, 50304, 0.0
        SHAPE = dict(block_size=T, vocab_size=V, n_layer=12, n_head=12, n_embd=768, bias=False)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    for name in args.variants:
        torch._dynamo.reset()
        torch._inductor.config.coordinate_descent_tuning = False
        torch._inductor.config.fallback_random = False
        chunked_loss.CHUNK_TOKENS, chunked_loss.add_product = CHUNK_TOKENS, ADD_PRODUCT  # (a variant before set them)
        try:
            eval_variant(name) if name.startswith("eval") else train_variant(name, args.classic)
        except Exception as e:  # one variant failing (a backend that refuses the shape) must not end the rest
            print(f"[{name}] failed: {type(e).__name__}: {str(e)[:300]}")


if __name__ == "__main__":
    main()
