"""--optimizer=muon: which parameters Muon trains, its step against a float64 reference and against
torch.optim.Muon, the stacked step against a matrix at a time, the float16 gradient scaler, exact
resume, DDP and FSDP (gloo) against one process, and a torch without torch.optim.Muon."""

import math
import shutil

import pytest
import torch
from test_train import TINY, load, make_dataset, read_log, run_train

from model import GPT, GPTConfig
from nanogpt_plus import checkpoint
from nanogpt_plus.muon import Muon, muon_and_adamw, orthogonalise

needs_torch_muon = pytest.mark.skipif(
    not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon, the comparison, is new in PyTorch 2.9"
)

MUON = dict(lr=0.02, momentum=0.95, weight_decay=0.01)
BLOCK_MATRICES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# wide, square and tall, each shape twice (a stack of 2) or once
SHAPES = [(16, 64), (16, 16), (48, 16), (16, 64), (48, 16), (24, 40)]


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=32, bias=True))


def matrices(seed=0, shapes=SHAPES):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=generator)) for shape in shapes]


def group_names(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return [{names[id(p)] for p in g["params"]} for g in optimizer.param_groups]


def newton_schulz64(G, steps=5, a=3.4445, b=-4.7750, c=2.0315):
    """Muon's quintic Newton-Schulz iteration in float64, from its formula: X = G / |G|_F, then
    X <- a X + (b A + c A^2) X with A = X X^T (coefficients from Keller Jordan's Muon post), tall
    matrices included (no transposing)."""
    X = G / G.norm()
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X


def muon64(w, g, buf, lr, momentum, wd, nesterov=True, ratio=None):
    """One Muon step of a matrix in float64, from torch.optim.Muon's formulas: the momentum buffer
    as a running average (buf.lerp_(g, 1 - momentum)), Nesterov's look-ahead (g.lerp(buf, momentum)),
    the update scaled by sqrt(max(1, rows / cols)), decoupled weight decay. Returns (w, buf)."""
    buf = momentum * buf + (1 - momentum) * g
    update = (1 - momentum) * g + momentum * buf if nesterov else buf
    rows, cols = w.shape
    ratio = math.sqrt(max(1, rows / cols)) if ratio is None else ratio
    return w * (1 - lr * wd) - lr * ratio * newton_schulz64(update), buf


def off(got, want, start):
    """How far got is from want, relative to how far want moved from start."""
    return ((got.double() - want.double()).norm() / (want.double() - start.double()).norm()).item()


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
    assert type(both.muon) is Muon and both.muon.param_groups[0]["nesterov"] is True
    assert both.adamw.defaults["fused"] is True  # as told (the plan's fused_optimizer, in train.py)
    assert [g["weight_decay"] for g in both.param_groups] == [0.1, 0.0, 0.01]


def test_one_step_is_muon_on_the_matrices_and_adamw_elsewhere():
    """Three steps on random gradients, at a learning rate that changes at each: the block matrices
    (wide, square and tall) move as a float64 Muon written from its formulas, their momentum buffers
    hold its running averages; every other parameter moves as a torch.optim.AdamW of its own on a
    copy of the model."""
    model, twin = tiny_model(), tiny_model()
    momentum, wd = 0.95, 0.5  # a large weight decay, so that it shows next to the update
    optimizer = muon_and_adamw(model, 0.1, 1e-3, (0.9, 0.95), True, dict(MUON, weight_decay=wd))
    params = optimizer.muon.param_groups[0]["params"]
    with torch.no_grad():  # weights of size 1, so that the decay is as large as the update
        for p in params:
            p.copy_(torch.randn_like(p))
    names = {id(p): n for n, p in model.named_parameters()}
    adamw_names = [[names[id(p)] for p in g["params"]] for g in optimizer.adamw.param_groups]
    reference = torch.optim.AdamW(
        [{"params": [twin.get_parameter(n) for n in adamw_names[0]], "weight_decay": 0.1},
         {"params": [twin.get_parameter(n) for n in adamw_names[1]], "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.95), foreach=False,
    )  # fmt: skip
    buffers = [torch.zeros(p.shape, dtype=torch.float64) for p in params]
    generator = torch.Generator().manual_seed(1)
    for lr in (0.02, 0.01, 0.03):
        optimizer.muon.param_groups[0]["lr"] = lr
        before = [p.detach().double().clone() for p in params]
        for name, p in model.named_parameters():
            p.grad = torch.randn(p.shape, generator=generator)
            twin.get_parameter(name).grad = p.grad.clone()
        optimizer.step()
        reference.step()
        for i, (p, w) in enumerate(zip(params, before, strict=True)):
            want, buffers[i] = muon64(w, p.grad.double(), buffers[i], lr, momentum, wd)
            # orthogonalised in bfloat16: off the float64 step by 0.3-0.9% (measured); a step without
            # Nesterov, without the shape's scale or without the decay is 21-98% off
            assert off(p, want, w) < 0.04, names[id(p)]
            got_buffer = optimizer.muon.state[p]["momentum_buffer"]
            torch.testing.assert_close(got_buffer.double(), buffers[i], rtol=1e-5, atol=1e-6)
        for group in adamw_names:
            for name in group:
                torch.testing.assert_close(model.get_parameter(name), twin.get_parameter(name), msg=name)


def test_orthogonalise_a_stack_is_each_matrix_alone_and_near_float64():
    """One batched Newton-Schulz on a stack of matrices of very different sizes gives each matrix
    what it gets alone (each normalised by its own norm: one norm for the stack would be 100% off
    for most), and near the float64 iteration, tall matrices (taken through X^T X) as the rest."""
    generator = torch.Generator().manual_seed(2)
    for shape in ((16, 64), (16, 16), (48, 16)):
        scales = torch.tensor([1.0, 100.0, 0.01, 3.0, 1e-3]).view(5, 1, 1)
        G = torch.randn(5, *shape, generator=generator) * scales
        stacked = orthogonalise(G)
        assert stacked.dtype == torch.bfloat16 and stacked.shape == G.shape
        for g, got in zip(G, stacked, strict=True):
            alone = orthogonalise(g)  # (the 2-D path, FSDP's)
            # the same to the bit on the CPUs measured; bfloat16 kernels that add in another order
            # could differ by its rounding
            assert off(got, alone, torch.zeros_like(g)) < 0.02, shape
            assert off(got, newton_schulz64(g.double()), torch.zeros_like(g)) < 0.04, shape  # measured: 1.2-1.9%
    assert not orthogonalise(torch.zeros(2, 8, 4)).any()  # (eps: no division by zero)


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("adjust_lr_fn", [None, "match_rms_adamw"])
@needs_torch_muon
def test_same_steps_as_torch_optim_muon(nesterov, adjust_lr_fn):
    """Matrices of several shapes, four steps on the same random gradients: ours moves them as
    torch.optim.Muon does, within the rounding of their bfloat16 matmuls (one batched, one not), and
    keeps the same momentum buffers."""
    ours, theirs = matrices(), matrices()
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn)
    mine, reference = Muon(ours, **kw), torch.optim.Muon(theirs, **kw)
    generator = torch.Generator().manual_seed(3)
    for _ in range(4):
        before = [p.detach().clone() for p in theirs]
        for p, q in zip(ours, theirs, strict=True):
            p.grad = torch.randn(p.shape, generator=generator)
            q.grad = p.grad.clone()
        mine.step()
        reference.step()
        for p, q, w in zip(ours, theirs, before, strict=True):
            assert off(p, q, w) < 0.02, p.shape  # measured: 0-0.5%; without the shape's scale, 97-133%
            torch.testing.assert_close(mine.state[p]["momentum_buffer"], reference.state[q]["momentum_buffer"])


@needs_torch_muon
def test_torch_optim_muon_state_loads_into_ours_and_back():
    """The state_dict layouts are one: torch.optim.Muon's after two steps, loaded into ours, goes on
    as torch's own does; ours loaded into torch.optim.Muon goes on as ours does."""
    for first, then in ((torch.optim.Muon, Muon), (Muon, torch.optim.Muon)):
        params, copies = matrices(), matrices()
        opt = first(params, **MUON)
        generator = torch.Generator().manual_seed(4)
        grads = [[torch.randn(p.shape, generator=generator) for p in params] for _ in range(4)]
        for step in grads[:2]:
            for p, g in zip(params, step, strict=True):
                p.grad = g.clone()
            opt.step()
        with torch.no_grad():
            for p, c in zip(params, copies, strict=True):
                c.copy_(p)
        resumed = then(copies, **MUON)
        resumed.load_state_dict(checkpoint.cpu_copy(opt.state_dict()))  # (copies, as a checkpoint holds)
        assert resumed.state_dict()["param_groups"] == opt.state_dict()["param_groups"]
        at_2 = [p.detach().clone() for p in params]
        for step in grads[2:]:
            for p, c, g in zip(params, copies, step, strict=True):
                p.grad, c.grad = g.clone(), g.clone()
            opt.step()
            resumed.step()
        for p, c, w in zip(params, copies, at_2, strict=True):
            assert off(c, p, w) < 0.02, (first.__module__, p.shape)
            torch.testing.assert_close(resumed.state[c]["momentum_buffer"], opt.state[p]["momentum_buffer"])


def test_stacked_step_is_the_step_of_each_matrix_alone():
    """The stacked step (plain tensors) against the step a matrix at a time (FSDP's DTensors), on
    matrices of several shapes whose gradients differ in size by up to 1e5: the same within float32's
    rounding of the learning rate and decay, which the stacked step takes as a tensor."""
    ours, alone = matrices(), matrices()
    stacked, each = Muon(ours, lr=0.02, weight_decay=0.5), Muon(alone, lr=0.02, weight_decay=0.5)
    each.step_stacked = lambda group, params, grads, buffers, lr: Muon.step_one_by_one(group, params, grads, buffers)
    generator = torch.Generator().manual_seed(5)
    for lr in (0.02, 0.005, 0.01):
        for opt in (stacked, each):
            opt.param_groups[0]["lr"] = lr
        before = [p.detach().clone() for p in alone]
        for i, (p, q) in enumerate(zip(ours, alone, strict=True)):
            p.grad = torch.randn(p.shape, generator=generator) * 10.0 ** (i - 3)
            q.grad = p.grad.clone()
        stacked.step()
        each.step()
        for p, q, w in zip(ours, alone, before, strict=True):
            assert off(p, q, w) < 1e-5, p.shape  # measured: under 1e-6


def test_weight_decay_is_decoupled():
    """Zero gradients: the weights only shrink, by lr * weight_decay; without decay, a step moves any
    weights by the same amount (the update does not depend on them)."""
    params = matrices()
    opt = Muon(params, lr=0.1, weight_decay=0.5)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, w in zip(params, before, strict=True):
        torch.testing.assert_close(p.detach(), w * (1 - 0.1 * 0.5))
    a, b = matrices(seed=6), matrices(seed=7)
    moves = []
    for params in (a, b):
        opt = Muon(params, lr=0.1, weight_decay=0.0)
        before = [p.detach().clone() for p in params]
        for p, g in zip(params, matrices(seed=8), strict=True):
            p.grad = g.detach()
        opt.step()
        moves.append([p.detach() - w for p, w in zip(params, before, strict=True)])
    for x, y in zip(*moves, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)  # (the same update, added to other weights)


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


@pytest.mark.slow
def test_muon_ddp_on_2_processes_goes_on_as_1_process(muon_runs):
    """Resumed at 6 on 2 gloo processes (one micro-step each), the run ends where the single
    process did: the same gradients summed in another order, so within rounding."""
    root = muon_runs
    shutil.copytree(root / "cut", root / "ddp")
    run_train(root, *ARGS, "--out_dir=ddp", "--max_iters=12", "--init_from=resume", nproc=2)
    same_training(root, "ddp", within=0.05)  # measured: 0.7% off; with wrong gradients, 84%


@pytest.mark.slow
def test_muon_fsdp_on_2_processes_goes_on_as_1_process(muon_runs):
    """Resumed at 6 on 2 gloo processes under FSDP (the single-process optimizer state scattered
    to the shards, Muon orthogonalising the sharded matrices whole, the state gathered back into
    the classic layout at 12), the run ends where the single process did, within the rounding of
    bfloat16 matmuls split over the shards. Muon on each shard alone would miss by far more."""
    root = muon_runs
    shutil.copytree(root / "cut", root / "fsdp")
    run_train(root, *ARGS, "--out_dir=fsdp", "--max_iters=12", "--init_from=resume", "--fsdp=True", nproc=2)
    same_training(root, "fsdp", within=0.1)  # measured: 2.4% off; orthogonalising each shard alone, 100%


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


def test_muon_needs_no_torch_optim_muon(tmp_path, monkeypatch):
    """Our Muon is our own: on a torch without torch.optim.Muon (before 2.9), train.py trains with it."""
    monkeypatch.delattr(torch.optim, "Muon", raising=False)
    make_dataset(tmp_path)
    proc = run_train(tmp_path, *ARGS, "--out_dir=out", "--max_iters=2", "--eval_interval=2", check=False)
    assert proc.returncode == 0, proc.stderr
    ckpt = load(tmp_path / "out" / "ckpt.pt")
    state = ckpt["optimizer"]["state"]
    assert ckpt["config"]["optimizer"] == "muon" and "momentum_buffer" in state[len(state) - 1]


@pytest.mark.gpu
def test_a_step_recorded_as_a_cuda_graph_replays_as_eager_steps():
    """The step reads nothing back to the host and takes the learning rate as a tensor: recorded
    once as a CUDA graph (after a first step, eagerly, on the recording's stream), its replays on new
    gradients at new learning rates (written into the tensor) move the matrices as eager steps do."""
    graphed = [torch.nn.Parameter(p.detach().cuda()) for p in matrices()]
    eager = [torch.nn.Parameter(p.detach().cuda()) for p in matrices()]
    lr = torch.tensor(0.02, device="cuda")
    recorded, reference = Muon(graphed, lr=lr, weight_decay=0.1), Muon(eager, lr=0.02, weight_decay=0.1)
    for p in graphed:
        p.grad = torch.randn_like(p)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        recorded.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        recorded.step()  # recorded, not run
    for p, q in zip(eager, graphed, strict=True):
        p.grad = q.grad.clone()
    reference.step()
    for new_lr in (0.01, 0.03, 0.005):
        for p, q in zip(eager, graphed, strict=True):
            q.grad.copy_(torch.randn_like(q))
            p.grad = q.grad.clone()
        lr.fill_(new_lr)
        graph.replay()
        reference.param_groups[0]["lr"] = new_lr
        reference.step()
        for p, q in zip(eager, graphed, strict=True):
            torch.testing.assert_close(q.detach(), p.detach(), rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(recorded.state[q]["momentum_buffer"], reference.state[p]["momentum_buffer"])


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
