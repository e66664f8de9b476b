"""CUDA-only checks: the flash SDPA path against the masked-softmax path, GPU training against CPU
training, bf16 against float32, generation under autocast and torch.compile, and train.py's recorded
CUDA graphs (fresh dropout per replay, eager-equal gradients, exact resume).
Skipped without a GPU (see conftest.py); run them on one with `python -m pytest -m gpu`."""

import pytest
import torch

from model import GPT, GPTConfig

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


def test_auto_attention_uses_sdpa_on_cuda():
    model = GPT(tiny()).cuda()
    assert model.transformer.h[0].attn.uses_sdpa(torch.zeros(1, device="cuda"))


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
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), torch.device(device).type)
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
        cache = model.new_cache(2)
        model(idx[:, :10], cache=cache)
        for t in range(10, 40):
            cached, _ = model(idx[:, t : t + 1], cache=cache)
            full, _ = model(idx[:, : t + 1])
            torch.testing.assert_close(cached.float(), full.float(), atol=3e-2, rtol=3e-2)


def test_greedy_generation_is_the_same_cached_and_recomputed_on_cuda():
    torch.manual_seed(2)
    model = GPT(tiny()).cuda().eval()
    idx = torch.randint(0, 128, (3, 5), device="cuda")
    with torch.no_grad():
        a = model.generate(idx, 100, top_k=1)  # runs past block_size 64
        b = model.generate(idx, 100, top_k=1, use_cache=False)
    assert torch.equal(a, b)


def test_generate_under_torch_compile():
    torch.manual_seed(3)
    model = GPT(tiny()).cuda().eval()
    idx = torch.randint(0, 128, (2, 5), device="cuda")
    with torch.no_grad():
        eager = model.generate(idx, 30, top_k=1)
        model.compile()  # in place: generate's calls to self(...) now run the compiled forward
        out = model.generate(idx, 30, top_k=1)
    assert torch.equal(out, eager)


def test_fused_adamw_on_cuda():
    model = GPT(tiny()).cuda()
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cuda")
    assert opt.defaults.get("fused") is True


@pytest.mark.parametrize("accumulate,mode", [(1, "regional"), (2, "default")])
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
    for name, flags in (("eager", ["--compile=False"]), ("compiled", ["--compile=True", "--compile_mode=auto"])):
        proc = run_train(tmp_path, *base, *flags, f"--out_dir=out-{name}")
        if name == "compiled":
            assert f"mode {mode})" in proc.stdout
            assert "skipping cudagraphs" not in proc.stdout + proc.stderr  # Inductor's silent fallback
        logs[name] = read_log(tmp_path / f"out-{name}")
    (train_a, eval_a), (train_b, eval_b) = logs["eager"], logs["compiled"]
    assert [r["iter"] for r in train_a] == [r["iter"] for r in train_b] and len(eval_a) == len(eval_b) == 4
    for a, b in zip(train_a + eval_a, train_b + eval_b):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-3)
    for a, b in zip(eval_a, eval_b):
        assert float(b["val_loss"]) == pytest.approx(float(a["val_loss"]), rel=1e-3)


def test_captured_call_replays_fresh_dropout_and_follows_the_rng_state():
    """A recorded forward with dropout draws new masks at every replay, as eager calls do, and
    replays from a restored RNG state repeat exactly (what an exact resume needs)."""
    import common

    drop = torch.nn.Dropout(0.5)
    x = torch.ones(4096, device="cuda")
    torch.manual_seed(0)
    call = common.CapturedCall(lambda t: drop(t) * 3.0, (x,))
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


def test_captured_forward_backward_matches_eager_gradients():
    """train.py's recorded forward + backward writes the same gradients as eager autograd, and
    overwrites them (not adds to them) at the next replay."""
    import common

    torch.manual_seed(0)
    model = GPT(tiny()).cuda()
    x = torch.randint(0, 128, (4, 64), device="cuda")
    y = torch.randint(0, 128, (4, 64), device="cuda")

    def forward_backward(a, b):
        _, loss = model(a, b)
        loss.backward()
        return loss.detach()

    call = common.CapturedCall(forward_backward, (x, y), before_each=lambda: model.zero_grad(set_to_none=True))
    for batch in ((x, y), (y, x), (x, y)):
        loss = call(*batch).clone()
        graphed = {n: p.grad.clone() for n, p in model.named_parameters()}
        reference = GPT(tiny()).cuda()
        reference.load_state_dict(model.state_dict())
        _, ref_loss = reference(*batch)
        ref_loss.backward()
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
        for n, p in reference.named_parameters():
            torch.testing.assert_close(graphed[n], p.grad, rtol=1e-5, atol=1e-6, msg=n)


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
    assert "mode regional" in resumed.stdout
    (a_train, a_eval), (b_train, b_eval) = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["iter"] for r in b_train] == [r["iter"] for r in a_train] and len(a_eval) == len(b_eval) == 3
    for a, b in zip(a_train + a_eval, b_train + b_eval):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=tol), a["iter"]
