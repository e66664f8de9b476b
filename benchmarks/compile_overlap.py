"""Could torch.compile hide behind training? Measures how a compiling thread and a training thread slow
each other down in one process (Python's GIL), on the shakespeare_char model.

    python benchmarks/compile_overlap.py [SWITCH_INTERVAL_S] [idle]

Main thread: train steps of the char model with forward + backward replayed from a CUDA graph recorded
from the eager model (no compile), gradient clipping and fused AdamW eager, a sync every 10 steps (as
log_interval=10). Background thread: import dynamo + Inductor, then compile a copy of one Block as
train.py's regional mode does (train forward + backward, eval forward). With `idle` the main thread
only waits, which times the background work alone. Run with a fresh TORCHINDUCTOR_CACHE_DIR.
Prints one JSON line: ms per step alone, during the compilation and after it; the compilation's seconds.
"""

import copy
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
CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
B, T, C = (64, 256, 384) if CUDA else (4, 32, 384)  # CPU: a smoke test of the script only


def make_training():
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=6, n_head=6, n_embd=C, block_size=256, vocab_size=65, dropout=0.2, bias=False)
    model = GPT(cfg).to(DEV)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=CUDA)
    x, y = (torch.randint(0, 65, (B, T), device=DEV) for _ in range(2))

    def forward_backward(x, y):
        with torch.autocast(DEV, dtype=torch.bfloat16, cache_enabled=False):
            _, loss = model(x, y)
        loss.backward()
        return loss.detach()

    for p in model.parameters():  # the graph writes gradients into these, as train.py's
        p.grad = torch.zeros_like(p)
    graph = CapturedCall(forward_backward, (x, y)) if CUDA else forward_backward

    def step():
        loss = graph(x, y)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    return model, step


def ms_per_step(step, n):
    t = time.perf_counter()
    for i in range(n):
        loss = step()
        if i % 10 == 9:
            loss.item()
    if CUDA:
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / n * 1000


def compile_one_block(model, result):
    t = time.perf_counter()
    import torch._dynamo  # noqa: F401
    import torch._inductor.compile_fx  # noqa: F401

    result["import_s"] = time.perf_counter() - t
    block = copy.deepcopy(model.transformer.h[0])
    block.compile(dynamic=False, options={"triton.autotune_pointwise": False})
    h = torch.randn(B, T, C, device=DEV, requires_grad=True)
    with torch.autocast(DEV, dtype=torch.bfloat16):
        out = block(h)
    out.float().sum().backward()
    block.eval()
    with torch.no_grad(), torch.autocast(DEV, dtype=torch.bfloat16):
        block(h)
    if CUDA:
        torch.cuda.synchronize()
    result["total_s"] = time.perf_counter() - t


def main(argv):
    switch = float(argv[0]) if argv and argv[0] != "idle" else sys.getswitchinterval()
    sys.setswitchinterval(switch)
    idle = "idle" in argv
    model, step = make_training()
    alone = statistics.median(ms_per_step(step, 200) for _ in range(3))
    result, during = {}, []
    thread = threading.Thread(target=compile_one_block, args=(model, result))
    t = time.perf_counter()
    thread.start()
    while thread.is_alive() and not idle:
        during.append(ms_per_step(step, 10))
    thread.join()
    row = {
        "switch_interval_s": switch,
        "idle": idle,
        "import_torch_s": round(T_IMPORT, 2),
        "ms_alone": round(alone, 3),
        "ms_during": round(statistics.mean(during), 3) if during else None,
        "steps_during": 10 * len(during),
        "compile_import_s": round(result["import_s"], 2),
        "compile_total_s": round(result["total_s"], 2),
        "overlap_s": round(time.perf_counter() - t, 2),
        "ms_after": round(ms_per_step(step, 200), 3),
    }
    print(json.dumps(row))


if __name__ == "__main__":
    main(sys.argv[1:])
