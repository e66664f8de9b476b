"""CUDA-only checks: the flash SDPA path against the masked-softmax path, GPU training against CPU
training, bf16 against float32, generation under autocast and torch.compile, and train.py's recorded
CUDA graphs (fresh dropout per replay, eager-equal gradients with accumulation, exact resume).
Skipped without a GPU (see conftest.py); run them on one with `python -m pytest -m gpu`."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model import GPT, GPTConfig
from nanogpt_plus import engine
from nanogpt_plus.plan import make_plan

pytestmark = pytest.mark.gpu


def tiny(**kw):
    base = dict(block_size=64, vocab_size=128, n_layer=2, n_head=4, n_embd=64, dropout=0.0, bias=True)
    base.update(kw)
    return GPTConfig(**base)


@pytest.fixture(autouse=True)
def no_tf32():
    """Plain float32 matmuls, so float32 comparisons with the CPU are meaningful."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_auto_attention_uses_sdpa_on_cuda(monkeypatch):
    model = GPT(tiny()).cuda()
    model.set_attention("manual")
    make_plan("cuda", "float32", task="sample").apply(model)  # 'auto': SDPA on CUDA
    idx = torch.randint(0, 128, (2, 64), device="cuda")
    model(idx, idx)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", None)  # any call now fails
    with pytest.raises(TypeError):
        model(idx, idx)
    model.set_attention("manual")
    model(idx, idx)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_sdpa_matches_masked_softmax_forward_and_backward(dtype, tol):
    torch.manual_seed(0)
    model = GPT(tiny()).cuda()
    idx = torch.randint(0, 128, (4, 64), device="cuda")
    results = {}
    for kind in ("manual", "sdpa"):
        model.zero_grad()
        model.set_attention(kind)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            logits, loss = model(idx, idx)
        loss.backward()
        results[kind] = (logits.float(), [p.grad.clone() for p in model.parameters()])
    ref_logits, ref_grads = results["manual"]
    logits, grads = results["sdpa"]
    assert ((logits - ref_logits).norm() / ref_logits.norm()).item() < tol
    for g, r in zip(grads, ref_grads):
        assert ((g - r).norm() / r.norm()).item() < tol * 10


def train_losses(device, steps=8, autocast_dtype=None, seed=0):
    torch.manual_seed(seed)
    model = GPT(tiny()).to(device)
    plan = make_plan(device, "float32")
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), plan.device_type, fused=plan.fused_optimizer)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, 128, (8, 65), generator=gen)
        # a learnable pattern: every even position repeats the token before it
        idx[:, 1::2] = idx[:, 0:-1:2]
        x, y = idx[:, :-1].to(device), idx[:, 1:].to(device)
        with torch.autocast("cuda", dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_float32_training_on_gpu_matches_cpu():
    cpu = train_losses("cpu")
    gpu = train_losses("cuda")
    assert gpu == pytest.approx(cpu, rel=1e-4, abs=1e-5)


def test_bf16_training_tracks_float32():
    fp32 = train_losses("cuda", steps=60)
    bf16 = train_losses("cuda", steps=60, autocast_dtype=torch.bfloat16)
    assert fp32[-1] < fp32[0] - 0.5  # it learned something, so the comparison means something
    assert bf16[-1] == pytest.approx(fp32[-1], rel=0.05)
    assert max(abs(a - b) for a, b in zip(fp32, bf16)) < 0.1


def test_cached_logits_track_recompute_under_bf16_autocast():
    torch.manual_seed(1)
    model = GPT(tiny()).cuda().eval()
    idx = torch.randint(0, 128, (2, 40), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        cache = engine.kv_cache(model, 2)
        model(idx[:, :10], cache=cache)
        for t in range(10, 40):
            cached, _ = model(idx[:, t : t + 1], cache=cache)
            full, _ = model(idx[:, : t + 1])
            torch.testing.assert_close(cached.float(), full.float(), atol=3e-2, rtol=3e-2)


def test_greedy_generation_is_the_same_cached_and_recomputed_on_cuda():
    from test_generate import sample

    torch.manual_seed(2)
    model = GPT(tiny()).cuda().eval()
    idx = torch.randint(0, 128, (3, 5), device="cuda")
    with torch.no_grad():
        a = sample(model, idx, 100, top_k=1, cuda_graph=True)  # runs past block_size 64
        b = sample(model, idx, 100, top_k=1, use_cache=False, cuda_graph=True)
    assert torch.equal(a, b)
    assert torch.equal(model.generate(idx, 100, top_k=1), a)  # nanoGPT's loop


def test_generate_under_torch_compile():
    from test_generate import sample

    torch.manual_seed(3)
    model = GPT(tiny()).cuda().eval()
    idx = torch.randint(0, 128, (2, 5), device="cuda")
    with torch.no_grad():
        eager = sample(model, idx, 30, top_k=1, cuda_graph=True)
        model.compile()  # in place: the Sampler's calls to model(...) now run the compiled forward
        out = sample(model, idx, 30, top_k=1, cuda_graph=True)
    assert torch.equal(out, eager)


def test_fused_adamw_on_cuda():
    model = GPT(tiny()).cuda()
    plan = make_plan("cuda", "bfloat16")
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), plan.device_type, fused=plan.fused_optimizer)
    assert opt.defaults.get("fused") is True


@pytest.mark.parametrize("accumulate,mode", [(1, "auto"), (2, "auto"), (2, "regional")])
def test_train_py_compiled_matches_eager(tmp_path, accumulate, mode):
    """train.py on CUDA with compile_mode 'auto' logs the same losses as the eager run, in float32:
    compiled blocks and recorded CUDA graphs (train and eval graphs alternating) without
    accumulation, plain compile with it."""
    from test_train import TINY, make_dataset, read_log, run_train

    make_dataset(tmp_path)
    base = [a for a in TINY if a not in ("--device=cpu", "--compile=False")]
    base += ["--device=cuda", "--dtype=float32", "--max_iters=12", "--eval_interval=4", "--always_save_checkpoint=True"]
    base += [f"--gradient_accumulation_steps={accumulate}"]
    logs = {}
    for name, flags in (("eager", ["--compile=False"]), ("compiled", ["--compile=True", f"--compile_mode={mode}"])):
        proc = run_train(tmp_path, *base, *flags, f"--out_dir=out-{name}")
        if name == "compiled":  # auto: regional (with recorded graphs) without accumulation, default with it
            how = "each block compiled" if accumulate == 1 or mode == "regional" else "model compiled (mode default)"
            graph = ", micro-step replayed as a CUDA graph" if accumulate == 1 and mode == "auto" else ""
            assert f"plan: cuda float32, {how}{graph}, " in proc.stdout
            assert "skipping cudagraphs" not in proc.stdout + proc.stderr  # Inductor's silent fallback
        logs[name] = read_log(tmp_path / f"out-{name}")
    (train_a, eval_a), (train_b, eval_b) = logs["eager"], logs["compiled"]
    assert [r["iter"] for r in train_a] == [r["iter"] for r in train_b] and len(eval_a) == len(eval_b) == 4
    for a, b in zip(train_a + eval_a, train_b + eval_b):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-3)
    for a, b in zip(eval_a, eval_b):
        assert float(b["val_loss"]) == pytest.approx(float(a["val_loss"]), rel=1e-3)


def test_cuda_graph_replays_fresh_dropout_and_follows_the_rng_state():
    """A recorded forward with dropout draws new masks at every replay, as eager calls do, and
    replays from a restored RNG state repeat exactly (what an exact resume needs)."""
    from nanogpt_plus.cuda_graph import CUDAGraph

    drop = torch.nn.Dropout(0.5)
    x = torch.ones(4096, device="cuda")
    torch.manual_seed(0)
    call = CUDAGraph(lambda t: drop(t) * 3.0, x)
    state = torch.cuda.get_rng_state()
    first = call(x).clone()
    second = call(x).clone()
    assert not torch.equal(first, second)  # a fresh mask at each replay
    for out in (first, second):
        kept = out != 0
        assert 0.4 < kept.float().mean().item() < 0.6
        assert torch.equal(out[kept], torch.full_like(out[kept], 6.0))  # x / (1 - p) * 3
    torch.cuda.set_rng_state(state)
    assert torch.equal(call(x), first)  # the same RNG state, the same mask
    assert torch.equal(call(x), second)
    y = torch.arange(4096.0, device="cuda")
    out = call(y)  # new inputs are copied in: the result follows them
    assert torch.equal(out[out != 0], (y * 6.0)[out != 0])
    with pytest.raises(ValueError, match="recorded for"):
        call(torch.ones(1, device="cuda"))  # would broadcast into the recorded input


@pytest.mark.parametrize("micro_steps", [1, 3])
def test_recorded_micro_step_accumulates_the_gradients_of_eager_autograd(micro_steps):
    """train.py's recorded micro-step (forward + backward, as CUDAGraph records it) adds the same
    gradients into .grad as eager autograd, over one micro-step or several, once the gradients of
    the warm-up runs are zeroed, and again after zeroing them in place."""
    from nanogpt_plus.cuda_graph import CUDAGraph

    torch.manual_seed(0)
    model = GPT(tiny()).cuda()
    reference = GPT(tiny()).cuda()
    batches = [torch.randint(0, 128, (2, 4, 64), device="cuda") for _ in range(2 * micro_steps)]

    def micro_step(x, y):
        _, loss = model(x, y)
        (loss / micro_steps).backward()
        return loss.detach()

    call = CUDAGraph(micro_step, *batches[0])
    model.zero_grad(set_to_none=False)
    for step in range(2):
        reference.load_state_dict(model.state_dict())
        reference.zero_grad(set_to_none=True)
        for x, y in batches[step * micro_steps : (step + 1) * micro_steps]:
            loss = call(x, y).clone()
            _, ref_loss = reference(x, y)
            (ref_loss / micro_steps).backward()
            assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
        for (n, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=n)
        with torch.no_grad():  # an optimizer step, so that the next step's gradients differ
            for p in model.parameters():
                p -= 1e-3 * p.grad
        model.zero_grad(set_to_none=False)


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 2e-3)])
def test_train_py_recorded_graphs_resume_exactly(tmp_path, dtype, tol):
    """With dropout, the regional mode's recorded graphs continue a resumed run exactly as the
    run that never stopped: the RNG state saved and restored drives the replays."""
    from test_train import TINY, make_dataset, read_log, run_train

    make_dataset(tmp_path)
    args = [a for a in TINY if a not in ("--device=cpu", "--compile=False")]
    # kernels that add with atomics (attention backward) make runs differ by rounding only (~1e-7
    # in float32), while another dropout mask moves the loss by far more than the tolerance
    args += ["--device=cuda", f"--dtype={dtype}", "--compile=True", "--dropout=0.1", "--eval_interval=6"]
    args += ["--gradient_accumulation_steps=1"]  # one micro-step: the mode with recorded graphs
    run_train(tmp_path, *args, "--out_dir=a", "--max_iters=12")
    run_train(tmp_path, *args, "--out_dir=b", "--max_iters=6")
    resumed = run_train(tmp_path, *args, "--out_dir=b", "--max_iters=12", "--init_from=resume")
    assert "each block compiled, micro-step replayed as a CUDA graph" in resumed.stdout
    (a_train, a_eval), (b_train, b_eval) = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["iter"] for r in b_train] == [r["iter"] for r in a_train] and len(a_eval) == len(b_eval) == 3
    for a, b in zip(a_train + a_eval, b_train + b_eval):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=tol), a["iter"]


def test_torch_cuda_graph_modes_refuse_gradient_accumulation(tmp_path):
    from test_train import TINY, make_dataset, run_train

    make_dataset(tmp_path)
    args = [a for a in TINY if a not in ("--device=cpu", "--compile=False")] + ["--device=cuda"]
    proc = run_train(tmp_path, *args, "--compile_mode=reduce-overhead", "--gradient_accumulation_steps=4", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: compile_mode='reduce-overhead' records CUDA graphs, which cannot accumulate")


@pytest.mark.parametrize("where", ["Block", "GPT"])
def test_an_edited_forward_changes_what_the_cuda_graphs_draw(monkeypatch, where):
    """The recorded decode and window steps replay the model's own forward: an edit to it shows in
    every token they draw, as in the classic loop (greedy, so both paths compare token for token)."""
    from test_generate import edited_forwards, make_model, prompt, sample

    model = make_model(seed=12, std=0.1).cuda()
    idx = prompt(2, 3, seed=13).cuda()
    before = sample(model, idx, 30, temperature=0, cuda_graph=True)
    edited_forwards(monkeypatch, where, device="cuda")
    after = sample(model, idx, 30, temperature=0, cuda_graph=True)
    expected = sample(model, idx, 30, temperature=0, use_cache=False, cuda_graph=False)
    assert torch.equal(after, expected)
    assert not torch.equal(after[:, 3:], before[:, 3:])


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_chunked_head_loss_on_cuda_tracks_the_full_one(dtype, tol):
    """The chunked head and loss on CUDA (the plan's choice for a large vocabulary): the same loss and
    gradients as the full logits, in float32 and under bf16 autocast, eager and inside a compiled model."""
    from nanogpt_plus import chunked_loss

    torch.manual_seed(4)
    cfg = dict(block_size=64, vocab_size=10000, n_layer=2, n_head=4, n_embd=64)
    full = GPT(GPTConfig(**cfg)).cuda()
    chunked = GPT(GPTConfig(**cfg)).cuda()
    plan = make_plan("cuda", "bfloat16", vocab_size=cfg["vocab_size"])
    assert plan.head_loss == "chunked" and plan.chunk_step_compiled
    plan.apply(chunked)  # its head and loss, the chunk step compiled (and SDPA attention, as full's default)
    chunked.load_state_dict(full.state_dict())
    idx = torch.randint(0, 10000, (4, 64), device="cuda")
    targets = torch.randint(0, 10000, (4, 64), device="cuda")
    targets[:, :5] = -1
    old_chunk, chunked_loss.CHUNK_TOKENS = chunked_loss.CHUNK_TOKENS, 100  # several uneven chunks
    try:
        results = {}
        for name, model in (("full", full), ("chunked", chunked), ("compiled", torch.compile(chunked))):
            model.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
                logits, loss = model(idx, targets)
            loss.backward()
            assert (logits is None) == (name != "full")
            results[name] = (loss.item(), [p.grad.float().clone() for p in chunked.parameters()] if name != "full"
                             else [p.grad.float().clone() for p in full.parameters()])  # fmt: skip
    finally:
        chunked_loss.CHUNK_TOKENS = old_chunk
    ref_loss, ref_grads = results["full"]
    for name in ("chunked", "compiled"):
        loss, grads = results[name]
        assert loss == pytest.approx(ref_loss, rel=tol)
        for g, r in zip(grads, ref_grads, strict=True):
            assert ((g - r).norm() / r.norm()).item() < tol * 10, name


def test_a_batch_too_big_for_the_gpu_is_one_line():
    big = ["--real_data=False", "--compile=False", "--n_layer=2", "--batch_size=16384", "--num_steps=1", "--repeats=1"]
    bench = Path(__file__).resolve().parent.parent / "bench.py"
    proc = subprocess.run([sys.executable, str(bench), *big], capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[-1].startswith("error: out of GPU memory (CUDA out of memory. Tried to allocate "), lines[-1]
