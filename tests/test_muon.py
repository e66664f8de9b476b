"""--optimizer=muon: which parameters Muon trains, its step against a float64 reference, the float16
gradient scaler, exact resume, DDP and FSDP (gloo) against one process, and its one-line errors."""

import math
import shutil
import subprocess
import sys

import pytest
import torch
from test_train import TINY, TRAIN, clean_env, load, make_dataset, read_log, run_train

from model import GPT, GPTConfig
from nanogpt_plus import checkpoint
from nanogpt_plus.muon import muon_and_adamw

needs_muon = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon is new in PyTorch 2.9")

MUON = dict(lr=0.02, momentum=0.95, weight_decay=0.01)
BLOCK_MATRICES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32, bias=True))


def group_names(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return [{names[id(p)] for p in g["params"]} for g in optimizer.param_groups]


def newton_schulz64(G, steps=5, a=3.4445, b=-4.7750, c=2.0315):
    """Muon's quintic Newton-Schulz iteration in float64, from its formula: X = G / |G|_F, then
    X <- a X + (b A + c A^2) X with A = X X^T (coefficients from Keller Jordan's Muon post)."""
    X = G / G.norm()
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X


@needs_muon
def test_muon_trains_the_block_matrices_and_adamw_the_rest():
    model = tiny_model()
    adamw_only = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu", fused=True)
    assert type(adamw_only) is torch.optim.AdamW  # without Muon: nanoGPT's optimizer, its state dict classic
    decay, no_decay = group_names(model, adamw_only)
    both = muon_and_adamw(model, 0.1, 1e-3, (0.9, 0.95), True, MUON)
    adamw_decay, adamw_no_decay, muon = group_names(model, both)
    assert muon == {f"transformer.h.{i}.{m}" for i in range(2) for m in BLOCK_MATRICES}
    assert adamw_decay == decay - muon == {"transformer.wte.weight", "transformer.wpe.weight"}  # (lm_head: tied)
    assert adamw_no_decay == no_decay and all(model.get_parameter(n).dim() == 1 for n in no_decay)
    assert both.optimizers[1].param_groups[0]["nesterov"] is True
    assert both.adamw.defaults["fused"] is True  # as told (the plan's fused_optimizer, in train.py)
    assert [g["weight_decay"] for g in both.param_groups] == [0.1, 0.0, 0.01]


@needs_muon
def test_one_step_is_muon_on_the_matrices_and_adamw_elsewhere():
    """Three steps on random gradients: the block matrices move as a float64 Muon written from its
    formulas (Nesterov momentum, orthogonalised, scaled by sqrt(max(1, rows/cols)), decoupled weight
    decay); every other parameter as a torch.optim.AdamW of its own on a copy of the model."""
    model, twin = tiny_model(), tiny_model()
    lr, momentum, wd = 0.02, 0.95, 0.5  # a large weight decay, so that it shows next to the update
    optimizer = muon_and_adamw(model, 0.1, 1e-3, (0.9, 0.95), True, dict(MUON, weight_decay=wd))
    matrices = optimizer.muon.param_groups[0]["params"]
    with torch.no_grad():  # weights of size 1, so that the decay is as large as the update
        for p in matrices:
            p.copy_(torch.randn_like(p))
    names = {id(p): n for n, p in model.named_parameters()}
    adamw_names = [[names[id(p)] for p in g["params"]] for g in optimizer.adamw.param_groups]
    reference = torch.optim.AdamW(
        [{"params": [twin.get_parameter(n) for n in adamw_names[0]], "weight_decay": 0.1},
         {"params": [twin.get_parameter(n) for n in adamw_names[1]], "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.95), foreach=False,
    )  # fmt: skip
    buffers = [torch.zeros(p.shape, dtype=torch.float64) for p in matrices]
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        before = [p.detach().double().clone() for p in matrices]
        for name, p in model.named_parameters():
            p.grad = torch.randn(p.shape, generator=generator)
            twin.get_parameter(name).grad = p.grad.clone()
        optimizer.step()
        reference.step()
        for p, w, buf in zip(matrices, before, buffers, strict=True):
            buf.mul_(momentum).add_(p.grad.double())
            rows, cols = p.shape
            want = w * (1 - lr * wd) - lr * math.sqrt(max(1, rows / cols)) * newton_schulz64(p.grad + momentum * buf)
            # Muon orthogonalises in bfloat16: off the float64 step by 0.7-0.9% (measured); a step
            # without Nesterov, without the shape's scale or without the decay is 22-440% off
            assert (p.double() - want).norm() / (want - w).norm() < 0.04, names[id(p)]
        for group in adamw_names:
            for name in group:
                torch.testing.assert_close(model.get_parameter(name), twin.get_parameter(name), msg=name)


@needs_muon
def test_float16_gradient_scaler_unscales_and_skips_for_both_optimizers():
    """train.py's float16 path, scaler.unscale_, clipping and scaler.step, gives the very step of
    plain gradients (scaled by a power of two, exactly undone), and skips a step whose gradients
    overflowed, for Muon's parameters and AdamW's alike."""
    x = torch.randint(0, 32, (2, 8))
    results = []
    for scale in (None, 2.0**12):
        model = tiny_model()
        optimizer = muon_and_adamw(model, 0.1, 1e-3, (0.9, 0.95), True, MUON)
        scaler = torch.amp.GradScaler("cpu", init_scale=scale or 1.0, enabled=scale is not None)
        _, loss = model(x, x)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        results.append(model)
    for (name, plain), scaled in zip(results[0].named_parameters(), results[1].parameters(), strict=True):
        assert torch.equal(plain, scaled), name
    model = results[1]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.zero_grad(set_to_none=False)
    _, loss = model(x, x)
    scaler.scale(loss * float("inf")).backward()
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # skipped, Muon too
    assert scaler.get_scale() == 2.0**11


@needs_muon
def test_state_dict_numbers_every_parameter_in_group_order_and_resumes_exactly():
    """One torch.optim layout: AdamW's groups then Muon's, parameters numbered 0.. in that order
    (each state shaped as its parameter); loaded into a fresh model's optimizer, the next steps match."""
    x = torch.randint(0, 32, (2, 8))
    model, twin = tiny_model(), tiny_model(seed=1)
    optimizer = muon_and_adamw(model, 0.1, 1e-3, (0.9, 0.95), True, MUON)
    model(x, x)[1].backward()
    optimizer.step()
    saved = optimizer.state_dict()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert [i for g in saved["param_groups"] for i in g["params"]] == list(range(len(params)))
    assert [len(g["params"]) for g in saved["param_groups"]] == [len(g["params"]) for g in optimizer.param_groups]
    assert "nesterov" in saved["param_groups"][-1] and "betas" in saved["param_groups"][0]
    for i, p in enumerate(params):
        key = "momentum_buffer" if i >= len(params) - 8 else "exp_avg"
        assert saved["state"][i][key].shape == p.shape, i
    twin.load_state_dict(model.state_dict())
    resumed = muon_and_adamw(twin, 0.1, 1e-3, (0.9, 0.95), True, MUON)
    resumed.load_state_dict(checkpoint.cpu_copy(saved))
    for m, o in ((model, optimizer), (twin, resumed)):
        for _ in range(2):
            o.zero_grad()
            m(x, x)[1].backward()
            o.step()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters(), strict=True))
    with pytest.raises(ValueError, match="2 parameter groups saved, 3 expected"):  # AdamW's alone
        resumed.load_state_dict(twin.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu", fused=True).state_dict())


@needs_muon
def test_zero_grad_keeps_or_drops_every_gradient():
    """set_to_none=False (a recorded CUDA graph's gradients) zeroes them in place; True drops them."""
    model = tiny_model()
    optimizer = muon_and_adamw(model, 0.1, 1e-3, (0.9, 0.95), True, MUON)
    x = torch.randint(0, 32, (2, 8))
    model(x, x)[1].backward()
    grads = [p.grad for p in model.parameters()]
    optimizer.zero_grad(set_to_none=False)
    assert all(p.grad is g and not g.any() for p, g in zip(model.parameters(), grads, strict=True))
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------- train.py end to end

ARGS = [*TINY, "--optimizer=muon", "--gradient_accumulation_steps=2", "--eval_interval=6"]


@pytest.fixture(scope="module")
def muon_runs(tmp_path_factory):
    """A 12-iteration Muon run, and one stopped at its checkpoint at 6."""
    root = tmp_path_factory.mktemp("muon")
    make_dataset(root)
    run_train(root, *ARGS, "--out_dir=straight", "--max_iters=12")
    run_train(root, *ARGS, "--out_dir=cut", "--max_iters=6")
    return root


def same_training(root, out, within=0.0):
    """out, resumed from cut at 6, against the straight run: the same log and checkpoint to the bit,
    or, for each tensor, within `within` of how far the straight run moved it from 6 to 12."""
    got, want, cut = (load(root / d / "ckpt.pt") for d in (out, "straight", "cut"))
    (got_train, got_eval), (want_train, want_eval) = read_log(root / out), read_log(root / "straight")
    assert [r["iter"] for r in got_train] == [r["iter"] for r in want_train]
    assert got["model"].keys() == want["model"].keys() and got["iter_num"] == want["iter_num"] == 12
    assert [g["params"] for g in got["optimizer"]["param_groups"]] == [
        g["params"] for g in want["optimizer"]["param_groups"]
    ]
    assert got["optimizer"]["state"].keys() == want["optimizer"]["state"].keys()
    pairs = [(f"model {k}", got["model"][k], want["model"][k], cut["model"][k]) for k in want["model"]]
    for i, state in want["optimizer"]["state"].items():
        pairs += [(f"optimizer {i} {k}", got["optimizer"]["state"][i][k], v, cut["optimizer"]["state"][i][k])
                  for k, v in state.items()]  # fmt: skip
    for name, a, b, start in pairs:
        if within == 0:
            assert torch.equal(a, b), name
        else:
            off = (a - b).double().norm() / (b - start).double().norm()
            assert off < within, (name, off.item())
    logged = [(r["iter"], r["loss"], r["val_loss"]) for r in got_train + got_eval]
    if within == 0:
        assert logged == [(r["iter"], r["loss"], r["val_loss"]) for r in want_train + want_eval]
    return got


@needs_muon
@pytest.mark.slow
def test_muon_resume_is_bit_identical_and_muon_lr_follows_the_schedule(muon_runs):
    root = muon_runs
    shutil.copytree(root / "cut", root / "resumed")
    run_train(root, *ARGS, "--out_dir=resumed", "--max_iters=12", "--init_from=resume")
    ckpt = same_training(root, "resumed")
    assert "momentum_buffer" in ckpt["optimizer"]["state"][len(ckpt["optimizer"]["state"]) - 1]
    # the last step's learning rates: AdamW's as logged, Muon's scaled by muon_lr / learning_rate
    lr = float(read_log(root / "resumed")[0][-1]["lr"])
    assert [g["lr"] for g in ckpt["optimizer"]["param_groups"]] == pytest.approx([lr, lr, lr * 0.02 / 1e-2])
    # sample.py and export_hf.py load it as any checkpoint, and leave the optimizer alone
    model = checkpoint.model_from(checkpoint.load(str(root / "resumed" / "ckpt.pt")))
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())


@needs_muon
@pytest.mark.slow
def test_muon_ddp_on_2_processes_goes_on_as_1_process(muon_runs):
    """Resumed at 6 on 2 gloo processes (one micro-step each), the run ends where the single
    process did: the same gradients summed in another order, so within rounding."""
    root = muon_runs
    shutil.copytree(root / "cut", root / "ddp")
    run_train(root, *ARGS, "--out_dir=ddp", "--max_iters=12", "--init_from=resume", nproc=2)
    same_training(root, "ddp", within=0.05)  # measured: 0.7% off; with wrong gradients, 84%


@needs_muon
@pytest.mark.slow
def test_muon_fsdp_on_2_processes_goes_on_as_1_process(muon_runs):
    """Resumed at 6 on 2 gloo processes under FSDP (the single-process optimizer state scattered
    to the shards, Muon orthogonalising the sharded matrices whole, the state gathered back into
    the classic layout at 12), the run ends where the single process did, within the rounding of
    bfloat16 matmuls split over the shards. Muon on each shard alone would miss by far more."""
    root = muon_runs
    shutil.copytree(root / "cut", root / "fsdp")
    run_train(root, *ARGS, "--out_dir=fsdp", "--max_iters=12", "--init_from=resume", "--fsdp=True", nproc=2)
    same_training(root, "fsdp", within=0.1)  # measured: 2.3% off; orthogonalising each shard alone, 100%


@needs_muon
@pytest.mark.slow
def test_resuming_with_the_other_optimizer_is_one_line(muon_runs, tmp_path):
    """A Muon checkpoint resumed with --optimizer=adamw, and an AdamW one (nanoGPT's, which does not
    name its optimizer) resumed with --optimizer=muon: one line each, nothing touched."""
    make_dataset(tmp_path)
    shutil.copytree(muon_runs / "cut", tmp_path / "muon")
    shutil.copytree(muon_runs / "cut", tmp_path / "adamw")
    ckpt = load(tmp_path / "adamw" / "ckpt.pt")
    del ckpt["config"]["optimizer"]
    torch.save(ckpt, tmp_path / "adamw" / "ckpt.pt")
    for out, flag, saved in (("muon", "--optimizer=adamw", "muon"), ("adamw", "--optimizer=muon", "adamw")):
        before = {p.name: p.read_bytes() for p in (tmp_path / out).iterdir()}
        proc = run_train(tmp_path, *TINY, f"--out_dir={out}", "--init_from=resume", flag, check=False)
        assert proc.returncode == 1 and proc.stderr.startswith(
            f"error: the checkpoint in {out} was trained with optimizer={saved!r}"
        ), proc.stderr
        assert f"resume with --optimizer={saved}" in proc.stderr and len(proc.stderr.splitlines()) == 1
        assert {p.name: p.read_bytes() for p in (tmp_path / out).iterdir()} == before


def test_a_torch_without_muon_is_one_line(tmp_path):
    make_dataset(tmp_path)
    (tmp_path / "sitecustomize.py").write_text("import torch.optim\ntorch.optim.__dict__.pop('Muon', None)\n")
    env = dict(clean_env(), PYTHONPATH=str(tmp_path))
    cmd = [sys.executable, str(TRAIN), *TINY, "--optimizer=muon", "--out_dir=out"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1 and proc.stderr.splitlines() == [
        f"error: optimizer='muon' needs torch.optim.Muon, new in PyTorch 2.9 (this is {torch.__version__}): "
        "upgrade torch, or use --optimizer=adamw"
    ]
    assert not (tmp_path / "out").exists()


@needs_muon
@pytest.mark.gpu
def test_muon_under_recorded_cuda_graphs_trains_as_eager(tmp_path):
    """On one GPU, compile_mode=auto records the micro-step and zeroes the recorded gradients in
    place (zero_grad(set_to_none=False)); Muon, stepping eagerly on them, logs the losses of the
    eager run, within the rounding its bfloat16 orthogonalisation spreads (float32 otherwise)."""
    make_dataset(tmp_path)
    args = [a for a in ARGS if a not in ("--device=cpu", "--compile=False", "--gradient_accumulation_steps=2")]
    args += ["--device=cuda", "--dtype=float32", "--max_iters=12", "--gradient_accumulation_steps=1"]
    compiled = run_train(tmp_path, *args, "--compile=True", "--out_dir=compiled")
    assert "each block compiled, micro-step replayed as a CUDA graph" in compiled.stdout
    run_train(tmp_path, *args, "--compile=False", "--out_dir=eager")
    (train_a, eval_a), (train_b, eval_b) = read_log(tmp_path / "eager"), read_log(tmp_path / "compiled")
    assert [r["iter"] for r in train_a] == [r["iter"] for r in train_b] and len(eval_a) == len(eval_b) == 3
    for a, b in zip(train_a + eval_a, train_b + eval_b, strict=True):
        assert float(b["loss"]) == pytest.approx(float(a["loss"]), rel=1e-2), a["iter"]
    assert float(eval_b[-1]["val_loss"]) < float(eval_b[0]["val_loss"]) - 0.5
