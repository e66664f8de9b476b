"""Where the shakespeare_char run's time goes on a GPU, one way of running the model per process.

    python benchmarks/char_explore.py VARIANT [--profile]

VARIANT: words joined by '-': inductor (torch.compile of the whole model; with ro: mode
reduce-overhead, CUDA graph trees), regional (train.py's compile_blocks; with blocksonly: the blocks alone), cudagraphs
(torch.compile's Inductor-free CUDA-graph backend), eager (none of these), graph (the train step
and the eval pass captured by hand in one CUDA graph each), hybrid (the eval pass eager, captured
by hand), noat (no autotuning of pointwise Triton kernels), manual (the masked-softmax attention
path instead of SDPA, compiled by Inductor like the rest), a leading 124m (GPT-2 124M at batch
12 x 1024, or GPT2_BATCH x 1024, instead of the shakespeare_char model); or sdpa (attention
backends alone); or overlap (could compilation hide behind training? see compile_overlap; with
idle: the compilation alone, with fastswitch: a 0.5 ms GIL switch interval instead of 5 ms).
Prints one JSON line: seconds to import and to compile, median ms per train step and per eval
pass (25 batches of 64 x 256, as train.py's grouped eval). Run each variant with a fresh
TORCHINDUCTOR_CACHE_DIR to see cold compilation. Random tokens: speed does not depend on them.
"""

import copy
import importlib
import json
import os
import statistics
import sys
import threading
import time

T0 = time.perf_counter()
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import CapturedCall  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

T_IMPORT = time.perf_counter() - T0
GPT2 = sys.argv[1].startswith("124m")  # GPT-2 124M, one micro-batch of 12 x 1024
if GPT2:
    B, T, V, GROUP = int(os.environ.get("GPT2_BATCH", 12)), 1024, 50304, 1
else:
    B, T, V, GROUP = 64, 256, 65, int(os.environ.get("EVAL_GROUP", 25))


def make_model(attention="auto"):
    torch.manual_seed(1337)
    if GPT2:
        shape = dict(n_layer=12, n_head=12, n_embd=768, dropout=0.0)
    else:
        shape = dict(n_layer=6, n_head=6, n_embd=384, dropout=0.2)
    cfg = GPTConfig(**shape, block_size=T, vocab_size=V, bias=False, attention=attention)
    model = GPT(cfg).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), fused=True, capturable=True)
    return model, opt


def batches(n, rows):
    g = torch.Generator(device="cuda").manual_seed(0)
    return [(torch.randint(0, V, (rows, T), device="cuda", generator=g),) * 2 for _ in range(n)]


def autocast(cache=True):
    return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)


def eager_step(model, opt, x, y, cache=True):
    with autocast(cache):
        _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def timed_ms(fn, n, repeats=3):
    out = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i in range(n):
            fn(i)
        torch.cuda.synchronize()
        out.append((time.perf_counter() - t) / n * 1000)
    return statistics.median(out), out


def sdpa_backends():
    """Attention alone at the training shape (dropout 0.2, causal), forward + backward, per backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(B, 6, T, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
        for p in (0.2, 0.0):
            try:
                with sdpa_kernel(getattr(SDPBackend, name)):

                    def f(i, p=p):
                        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
                        y.sum().backward()

                    ms, _ = timed_ms(f, 50)
                print(json.dumps({"sdpa": name, "dropout": p, "fwd_bwd_ms": round(ms, 4)}))
            except RuntimeError as e:
                print(json.dumps({"sdpa": name, "dropout": p, "error": str(e).splitlines()[0][:120]}))


def compile_one_block(model, result):
    """Import dynamo and Inductor, then compile a copy of one block as train.py's regional mode does
    (train forward + backward, eval forward); seconds in result."""
    t = time.perf_counter()
    importlib.import_module("torch._inductor.compile_fx")
    result["import_s"] = round(time.perf_counter() - t, 2)
    block = copy.deepcopy(model.transformer.h[0])
    block.compile(dynamic=False, options={"triton.autotune_pointwise": False})
    h = torch.randn(B, T, model.config.n_embd, device="cuda", requires_grad=True)
    with autocast():
        out = block(h)
    out.float().sum().backward()
    block.eval()
    with torch.no_grad(), autocast():
        block(h)
    torch.cuda.synchronize()
    result["compile_total_s"] = round(time.perf_counter() - t, 2)


def compile_overlap(parts):
    """Could torch.compile hide behind training? A background thread compiles (compile_one_block)
    while this one trains the uncompiled model as train.py's regional mode would (forward + backward
    replayed from a CUDA graph, clipping and AdamW eager, a sync every 10 steps as log_interval=10);
    both share Python's lock. Prints ms per step alone, during the compilation and after it."""
    switch = 0.0005 if "fastswitch" in parts else 0.005
    sys.setswitchinterval(switch)
    model, opt = make_model()
    x, y = batches(1, B)[0]

    def forward_backward(x, y):
        with autocast(cache=False):
            _, loss = model(x, y)
        loss.backward()
        return loss.detach()

    graph = CapturedCall(forward_backward, (x, y), before_each=lambda: opt.zero_grad(set_to_none=True))

    def train_fn(i):
        loss = graph(x, y)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i % 10 == 9:
            loss.item()

    res = {"variant": "-".join(parts), "switch_interval_s": switch, "import_torch_s": round(T_IMPORT, 2)}
    res["ms_alone"], _ = timed_ms(train_fn, 200)
    during, thread = [], threading.Thread(target=compile_one_block, args=(model, res))
    t = time.perf_counter()
    thread.start()
    while thread.is_alive() and "idle" not in parts:
        during.append(timed_ms(train_fn, 10, repeats=1)[0])
    thread.join()
    res["overlap_s"] = round(time.perf_counter() - t, 2)
    res["ms_during"] = round(statistics.mean(during), 3) if during else None
    res["steps_during"] = 10 * len(during)
    res["ms_after"], _ = timed_ms(train_fn, 200)
    print(json.dumps(res), flush=True)


def build(variant):
    """The train and eval functions for a variant; compilation or capture happens in here."""
    parts = set(variant.split("-"))
    model, opt = make_model("manual" if "manual" in parts else "auto")
    train, evals = batches(8, B), batches(2, B * GROUP)
    if parts & {"inductor", "regional", "cudagraphs"}:
        importlib.import_module("torch._inductor.compile_fx")
    if "noat" in parts:
        torch._inductor.config.triton.autotune_pointwise = False
    if "regional" in parts:
        if "blocksonly" in parts:
            for block in model.transformer.h:
                block.compile(dynamic=False)
        else:
            importlib.import_module("train").compile_blocks(model)  # the blocks and the head
    train_model = eval_model = model
    if "inductor" in parts:
        mode = "reduce-overhead" if "ro" in parts else "default"
        train_model = torch.compile(model, mode=mode, dynamic=False)
        eval_model = model if "hybrid" in parts else train_model
    if "cudagraphs" in parts:
        train_model = eval_model = torch.compile(model, backend="cudagraphs", dynamic=False)
    manual_train = "graph" in parts
    manual_eval = "graph" in parts or "hybrid" in parts
    t = time.perf_counter()
    if manual_train:
        step_graph = CapturedCall(lambda x, y: eager_step(model, opt, x, y, cache=False), train[0])

        def train_fn(i):
            return step_graph(*train[i % len(train)])
    else:

        def train_fn(i):
            x, y = train[i % len(train)]
            return eager_step(train_model, opt, x, y)

        for i in range(3):
            train_fn(i)
    torch.cuda.synchronize()
    t_train = time.perf_counter() - t
    model.eval()
    t = time.perf_counter()

    def fwd(x, y):
        with torch.no_grad(), autocast(not manual_eval):
            return eval_model(x, y)[1]

    if manual_eval:
        eval_graph = CapturedCall(fwd, evals[0])

        def eval_fn(i):
            return eval_graph(*evals[i % len(evals)])
    else:

        def eval_fn(i):
            return fwd(*evals[i % len(evals)])

        eval_fn(0)
    torch.cuda.synchronize()
    t_eval = time.perf_counter() - t
    model.train()
    return model, train_fn, eval_fn, {"prepare_train_s": round(t_train, 2), "prepare_eval_s": round(t_eval, 2)}


def run(variant, profile):
    if variant == "sdpa":
        return sdpa_backends()
    if variant.startswith("overlap"):
        return compile_overlap(variant.split("-"))
    res = {"variant": variant, "import_torch_s": round(T_IMPORT, 2)}
    model, train_fn, eval_fn, prep = build(variant)
    res.update(prep)
    n = 30 if GPT2 else 300
    res["step_ms"], res["step_ms_all"] = timed_ms(train_fn, n)
    model.eval()
    res["eval_pass_ms"], _ = timed_ms(eval_fn, max(16, 400 // GROUP))
    res["eval_ms_per_25_batches"] = round(res["eval_pass_ms"] * 25 / GROUP, 2)
    model.train()
    res["step_ms_after_eval"], _ = timed_ms(train_fn, n)
    res["total_s"] = round(time.perf_counter() - T0, 1)
    print(json.dumps(res), flush=True)
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as prof

        with prof(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as p:
            for i in range(10):
                train_fn(i)
            torch.cuda.synchronize()
        print(p.key_averages().table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=70))
        print(kernel_breakdown(p.events(), 10, matmul_flops_per_step(model), res["step_ms"]))


# kernel name fragments per kind, attention first (cuDNN's attention kernels are also "sm90_")
KERNEL_KINDS = (
    ("attention", ("flash", "fmha", "sdpa", "attention")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "cublas")),
    ("optimizer", ("multi_tensor", "adam")),
    ("inductor (Triton)", ("triton",)),
)


def kernel_kind(name: str) -> str:
    name = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in name for k in keys)), "other")


def matmul_flops_per_step(model) -> float:
    """Forward + backward FLOPs of the Linear layers (the tied head included) for one B x T batch."""
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    return 6 * weights * B * T


def kernel_breakdown(events, steps: int, matmul_flops: float, step_ms: float) -> str:
    """GPU kernel time per step by kind, and the rate the matmuls ran at."""
    ms = {}
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kind = kernel_kind(e.name)
            ms[kind] = ms.get(kind, 0.0) + e.time_range.elapsed_us() / 1000 / steps
    lines = [f"step {step_ms:.2f} ms (timed), kernels {sum(ms.values()):.2f} ms per step:"]
    lines += [f"  {kind:<18} {t:7.2f} ms" for kind, t in sorted(ms.items(), key=lambda kv: -kv[1])]
    if ms.get("matmul"):
        lines.append(f"  matmuls at {matmul_flops / (ms['matmul'] / 1000) / 1e12:.0f} TFLOP/s")
    return "\n".join(lines)


if __name__ == "__main__":
    run(sys.argv[1], "--profile" in sys.argv)
