"""train.py end to end on tiny synthetic data, on the CPU: learning, exact resume, DDP (gloo)
against gradient accumulation, eval_only, checkpoints, user errors, the LR schedule."""

import ast
import csv
import math
import os
import pickle
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from model import GPT, GPTConfig
from nanogpt_plus import checkpoint, dataloader, progress
from nanogpt_plus.plan import make_plan
from nanogpt_plus.progress import TimeLeft, TimeSplit

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "train.py"
VOCAB = 32

# A 2-layer model that trains in milliseconds per step (4 micro-steps, not nanoGPT's default 40).
TINY = [
    "--device=cpu",
    "--compile=False",
    "--gradient_accumulation_steps=4",
    "--dataset=tiny",
    "--n_layer=2",
    "--n_head=2",
    "--n_embd=32",
    "--block_size=16",
    "--batch_size=4",
    "--eval_iters=4",
    "--log_interval=1",
    "--learning_rate=1e-2",
    "--min_lr=1e-3",
    "--warmup_iters=2",
    "--lr_decay_iters=20",
    "--wandb_log=False",
]


def make_dataset(root: Path, name="tiny", vocab=VOCAB, n_train=6000, n_val=1200, meta=True) -> Path:
    """data/<name>/ under root: a fixed cycle through a permutation of the vocabulary with 10%
    random tokens mixed in, so the next token is mostly predictable and the loss can fall."""
    rng = np.random.default_rng(0)
    cycle = rng.permutation(vocab)
    folder = root / "data" / name
    folder.mkdir(parents=True)
    for split, n in (("train", n_train), ("val", n_val)):
        tokens = np.tile(cycle, n // vocab + 1)[:n]
        noisy = rng.random(n) < 0.1
        tokens[noisy] = rng.integers(0, vocab, noisy.sum())
        tokens.astype(np.uint16).tofile(folder / f"{split}.bin")
    if meta:
        itos = {i: chr(48 + i) for i in range(vocab)}
        with open(folder / "meta.pkl", "wb") as f:
            pickle.dump({"vocab_size": vocab, "itos": itos, "stoi": {c: i for i, c in itos.items()}}, f)
    return folder


def run_train(cwd: Path, *args, nproc=1, check=True) -> subprocess.CompletedProcess:
    """`python train.py *args` in cwd, or torchrun's nproc processes of it. One process on the CPU, not compiled,
    runs in this one (user_errors.run_here: the same output, exit status and files, without starting Python and
    torch again)."""
    from user_errors import cpu_and_eager, run_here

    if nproc == 1 and cpu_and_eager(args):
        proc = run_here("train", cwd, args, fixed=False)
    else:
        cmd = [sys.executable, str(TRAIN), *args]
        if nproc > 1:
            cmd[1:2] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(TRAIN)]
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=clean_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}


def train_function(name, **module_globals):
    """A function of train.py (a script, not importable) with the globals it reads set as given."""
    tree = ast.parse(TRAIN.read_text())
    nodes = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name]
    assert len(nodes) == 1, name
    scope = {"math": math, **module_globals}
    exec(compile(ast.Module(nodes, type_ignores=[]), str(TRAIN), "exec"), scope)
    return scope[name]


def read_log(out_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training rows, eval rows) of train_log.csv."""
    with open(out_dir / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if r["val_loss"] == ""], [r for r in rows if r["val_loss"] != ""]


def printed_eval(stdout: str) -> tuple[int, float, float]:
    """(iter, train loss, val loss) of the last `step N: train loss A, val loss B` line a run printed."""
    it, train, val = re.findall(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)$", stdout, re.M)[-1]
    return int(it), float(train), float(val)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 20-step run shared by several tests: its folder and out_dir (always_save_checkpoint)."""
    root = tmp_path_factory.mktemp("trained")
    make_dataset(root)
    proc = run_train(root, *TINY, "--out_dir=out", "--max_iters=20", "--eval_interval=10")
    (root / "stdout.txt").write_text(proc.stdout)
    return root, root / "out"


# ---------------------------------------------------------------------------- learning, log and LR


def test_time_left_is_printed_and_sane(tmp_path):
    """After the first steps every log line ends with an estimate of the time left (steps and evals);
    it is within 2x of the time the run then really took, read off as the lines arrive."""
    make_dataset(tmp_path)
    args = [*TINY, "--max_iters=60", "--log_interval=10", "--eval_interval=20", "--eval_iters=20"]
    args += ["--gradient_accumulation_steps=40"]  # steps long enough for the estimates to be measured
    cmd = [sys.executable, str(TRAIN), *args, "--out_dir=eta"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, text=True, env=clean_env())
    seen = [(time.monotonic(), line) for line in proc.stdout]
    assert proc.wait() == 0
    end = next(t for t, line in seen if line.startswith("iters 0..60 in"))
    estimates = [(t, line) for t, line in seen if ", eta " in line]
    assert [line.split(":")[0] for _, line in estimates] == [f"iter {i}" for i in range(10, 60, 10)]
    assert not any(", eta " in line for _, line in seen if line.startswith("iter 0:"))  # not from the first step
    sane = []
    for t, line in estimates[:4]:  # early enough for the time left to be measurable
        h, m, s = map(int, re.search(r"eta (\d+):(\d\d):(\d\d)", line).groups())
        left, took = 3600 * h + 60 * m + s, end - t
        sane.append((took / 2 - 1 <= left <= 2 * took + 1, line, round(took, 1)))
    # one estimate may be thrown by a stall of the machine (the log line's steps took seconds each)
    assert sum(ok for ok, _, _ in sane) >= 3, sane


def test_time_split_counts_the_first_steps_and_eval_over_the_later_ones_as_compilation(monkeypatch):
    """train.py's last line, worked by hand: the process started at 100, the loop at 103, the end at 120.
    The first stretch (1 step in 5 s) at the later pace (0.1 s a step) leaves 4.9 s of compiling, the
    first eval (2 s against a median of 0.5 s) 1.5 s; the steps get what the loop's 17 s leave."""
    monkeypatch.setattr(time, "time", lambda: 103.0)
    split = TimeSplit(100.0)
    for seconds, steps in ((5.0, 1), (1.0, 10), (1.0, 10)):
        split.add_steps(seconds, steps)
    for seconds in (2.0, 0.5, 0.5):
        split.add("evaluations", seconds)
    split.add("checkpoints", 0.2)
    split.add("checkpoints", 0.3)  # (never compilation: the first checkpoint compiles nothing)
    monkeypatch.setattr(time, "time", lambda: 120.0)
    # 17 s of loop - 6.4 compiling - 1.5 evaluating - 0.5 saving = 8.6 s of steps; no HellaSwag, no HellaSwag part
    assert split.line(21) == (
        "time 20.0 s: start-up 3.0 s, compilation 6.4 s, 21 training steps 8.6 s, 3 evaluations 1.5 s, "
        "checkpoints 0.5 s"
    )


def test_time_left_follows_the_recent_pace_and_counts_the_evals():
    """The time left at a log line: the steps left at the recent time per step, an average of the log
    lines' step times in which a line's weight halves with every 20 steps logged after it (the first
    line, whose steps compile, left out), and the evals left at the last one's duration or, before one
    has run (a resumed run), at 2 * eval_iters forwards of a third of a micro-step each. Worked by hand."""
    said = []
    eta = TimeLeft(max_iters=1000, eval_interval=100, eval_iters=30, micro_steps=2, hellaswag_interval=0, on_cpu=True,
                   say=said.append)  # fmt: skip
    assert eta.estimate(500, 30.0, 1) == ""  # the first line: its step compiled
    # 479 steps at 0.1 s, and 5 evals (600 ... 1000) of 60 forwards at 0.1 / 6 s each: 47.9 + 5 = 52.9 s
    assert eta.estimate(520, 0.1, 20) == ", eta 0:00:52"
    eta.eval_seconds = 2.0
    # 20 steps later the 0.1 s count for half: 0.5 * 0.1 + 0.5 * 0.5 = 0.3 s a step;
    # 459 steps at 0.3 s and 5 evals at the last one's 2 s: 137.7 + 10 s
    assert eta.estimate(540, 0.5, 20) == ", eta 0:02:27"
    # the machine got faster: after 40 steps at 0.05 s the earlier 0.3 s count for a quarter:
    # 0.25 * 0.3 + 0.75 * 0.05 = 0.1125 s a step (the mean of every step, 0.175 s, would say 1:23);
    # 419 steps at 0.1125 s and 5 evals at 2 s: 47.1375 + 10 s
    assert eta.estimate(580, 0.05, 40) == ", eta 0:00:57"
    assert said == []  # minutes, not hours: no note
    eta.max_iters = 100000  # 99419 steps at 0.1125 s and 995 evals at 2 s: 11184.6 + 1990 = 13174.6 s
    assert eta.estimate(580, 0.1125, 20) == ", eta 3:39:34"
    assert eta.estimate(580, 0.1125, 20) == ", eta 3:39:34"
    assert said == [
        "note: this run needs about 3.7 hours on this CPU; without a GPU, python train.py "
        "config/train_shakespeare_char.py trains a small model in minutes"
    ]  # once


def test_a_run_too_long_for_the_cpu_says_so_before_its_first_step_and_only_once():
    said, probes = [], []
    eta = TimeLeft(max_iters=1000, eval_interval=100, eval_iters=30, micro_steps=2, hellaswag_interval=0, on_cpu=True,
                   say=said.append)  # fmt: skip
    # 1000 steps and 10 evals of 60 forwards (100 steps' worth) at 1e6 FLOPs a step: within the hour at any speed
    eta.note_before_start(0, 1e6, lambda: probes.append(1) or 1e9)
    assert probes == [] and said == []  # (not even probed)
    eta.note_before_start(0, 1e10, lambda: 1e9)  # 1.1e13 FLOPs at 1e9 FLOP/s: 11,000 s
    eta.note_long_run(7200)
    assert said == [
        "note: this run needs about 3.1 hours on this CPU; without a GPU, python train.py "
        "config/train_shakespeare_char.py trains a small model in minutes"
    ]  # once
    on_gpu = TimeLeft(1000, 100, 30, 2, 0, on_cpu=False, say=said.append)
    on_gpu.note_long_run(7200)
    assert len(said) == 1


@pytest.mark.parametrize(
    "seconds, said",
    [(3000, "50 minutes"), (5.2 * 3600, "5.2 hours"), (47 * 3600, "47.0 hours"), (12 * 86400, "12 days"),
     (729 * 86400, "729 days"), (3053491.2 * 3600, "348 years"), (2e12 * 86400 * 365.25, "2,000,000,000,000 years")],
)  # fmt: skip
def test_long_durations_are_said_in_the_unit_a_person_reads(seconds, said):
    assert progress.duration(seconds) == said


def test_a_run_hopeless_on_a_cpu_says_so_plainly():
    said = []
    eta = TimeLeft(1000, 100, 30, 2, 0, on_cpu=True, say=said.append)
    eta.note_long_run(3053491.2 * 3600)  # the "about 3053491.2 hours"
    assert said == [
        "note: this run needs about 348 years on this CPU, far too long to train here: it needs a GPU. Without one, "
        "python train.py config/train_shakespeare_char.py trains a small model in minutes"
    ]


def test_train_py_says_a_run_is_hopeless_on_a_cpu_before_its_first_eval(tmp_path):
    """10**13 iterations of the tiny model: over 10**20 FLOPs, years at any CPU's speed."""
    make_dataset(tmp_path)
    cmd = [sys.executable, str(TRAIN), *TINY, "--max_iters=10000000000000", "--lr_decay_iters=10000000000000"]
    proc = subprocess.Popen([*cmd, "--out_dir=out"], cwd=tmp_path, stdout=subprocess.PIPE, text=True, env=clean_env())
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("step 0:"):
                break
    finally:
        proc.kill()
        proc.wait()
    notes = [n for n, line in enumerate(lines) if line.startswith("note: this run needs about ")]
    assert len(notes) == 1 and notes[0] < len(lines) - 1, lines
    assert re.fullmatch(r"note: this run needs about [\d,]+ years on this CPU, far too long to train here: it needs a "
                        r"GPU\. Without one, .*", lines[notes[0]])  # fmt: skip


def test_the_cpu_speed_probe_behind_the_long_run_note_leaves_the_rng_alone():
    """It runs before the first step: a draw from the RNG would change the dropout of a resumed run."""
    state = torch.get_rng_state()
    assert progress.cpu_matmul_flops(64) > 1e6
    assert torch.equal(torch.get_rng_state(), state)


def test_loss_falls_and_log_has_every_row(trained):
    _, out = trained
    train_rows, eval_rows = read_log(out)
    assert [int(r["iter"]) for r in train_rows] == list(range(20))
    assert [int(r["iter"]) for r in eval_rows] == [0, 10, 20]  # every eval_interval and at max_iters
    first, last = float(eval_rows[0]["val_loss"]), float(eval_rows[-1]["val_loss"])
    assert first > math.log(VOCAB) - 0.3  # starts near chance
    assert last < first - 1.0, (first, last)
    losses = [float(r["loss"]) for r in train_rows]
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0, losses  # the logged training loss falls too
    assert all(r["time_ms"] and float(r["time_ms"]) > 0 for r in train_rows)
    assert all(r["mfu"] == "" for r in train_rows)  # no reference peak on CPU


def test_logged_lr_follows_the_schedule(trained):
    # learning_rate=1e-2, warmup_iters=2, lr_decay_iters=20, min_lr=1e-3, worked by hand
    expected = {0: 1e-2 / 3, 1: 2e-2 / 3, 2: 1e-2, 11: 1e-3 + 0.5 * 9e-3, 19: None}
    expected[19] = 1e-3 + 0.5 * (1 + math.cos(math.pi * 17 / 18)) * 9e-3
    train_rows, eval_rows = read_log(trained[1])
    lrs = {int(r["iter"]): float(r["lr"]) for r in train_rows}
    for it, lr in expected.items():
        assert lrs[it] == pytest.approx(lr, rel=1e-12), it
    assert float(eval_rows[-1]["lr"]) == pytest.approx(1e-3, rel=1e-12)  # iter 20 = lr_decay_iters


@pytest.mark.parametrize(
    "it, lr",
    [
        (0, 6e-4 * 1 / 101),  # first warmup step is not zero
        (99, 6e-4 * 100 / 101),  # last warmup step
        (100, 6e-4),  # cosine starts at the top
        (550, 6e-5 + 0.5 * (6e-4 - 6e-5)),  # half way down
        (1000, 6e-5),  # the bottom, at lr_decay_iters
        (1001, 6e-5),  # and after it
        (10**9, 6e-5),
    ],
)
def test_get_lr_edges(it, lr):
    get_lr = train_function("get_lr", learning_rate=6e-4, warmup_iters=100, lr_decay_iters=1000, min_lr=6e-5)
    assert get_lr(it) == pytest.approx(lr, rel=1e-12, abs=1e-18)


def test_get_lr_without_warmup_or_decay_room():
    schedule = lambda warmup, decay: train_function(  # noqa: E731
        "get_lr", learning_rate=1e-3, warmup_iters=warmup, lr_decay_iters=decay, min_lr=1e-4
    )
    assert schedule(0, 10)(0) == pytest.approx(1e-3)  # no warmup: starts at the top
    assert schedule(5, 5)(5) == pytest.approx(1e-4)  # no division by zero
    assert schedule(5, 5)(4) == pytest.approx(1e-3 * 5 / 6)


# ---------------------------------------------------------------------------- exact resume


@pytest.mark.slow
def test_resume_is_bit_identical(tmp_path):
    make_dataset(tmp_path)
    # dropout on, so the restored RNG state matters; 2 micro-steps, so accumulation does too
    args = [*TINY, "--dropout=0.1", "--gradient_accumulation_steps=2", "--eval_interval=6"]
    run_train(tmp_path, *args, "--out_dir=a", "--max_iters=12")
    run_train(tmp_path, *args, "--out_dir=b", "--max_iters=6")
    resumed = run_train(tmp_path, *args, "--out_dir=b", "--max_iters=12", "--init_from=resume")
    assert "step 6:" not in resumed.stdout  # the eval at the resume point is not run twice
    a_train, a_eval = read_log(tmp_path / "a")
    b_train, b_eval = read_log(tmp_path / "b")
    assert [(r["iter"], r["loss"], r["lr"]) for r in b_train] == [(r["iter"], r["loss"], r["lr"]) for r in a_train]
    assert [(r["iter"], r["loss"], r["val_loss"]) for r in b_eval] == [
        (r["iter"], r["loss"], r["val_loss"]) for r in a_eval
    ]
    a, b = load(tmp_path / "a" / "ckpt.pt"), load(tmp_path / "b" / "ckpt.pt")
    assert a["iter_num"] == b["iter_num"] == 12
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        for k in pa:
            assert torch.equal(pa[k], pb[k]), k
    assert torch.equal(a["rng_state"][0]["torch"], b["rng_state"][0]["torch"])


def test_optimizer_settings_given_on_resume_apply(tmp_path):
    """--weight_decay and --beta2 given on resume (printed as changed) are what the optimizer steps with, not the
    checkpoint's: the run trains as one resumed from a checkpoint that had held them all along."""
    make_dataset(tmp_path)
    run_train(tmp_path, *TINY, "--out_dir=given", "--max_iters=3", "--eval_interval=3")
    shutil.copytree(tmp_path / "given", tmp_path / "held")
    ckpt = load(tmp_path / "held" / "ckpt.pt")  # the other path: the new values in the checkpoint itself
    ckpt["optimizer"]["param_groups"][0] |= {"weight_decay": 0.0, "betas": (0.9, 0.5)}
    ckpt["optimizer"]["param_groups"][1]["betas"] = (0.9, 0.5)
    ckpt["config"] |= {"weight_decay": 0.0, "beta2": 0.5}
    torch.save(ckpt, tmp_path / "held" / "ckpt.pt")
    flags = ["--weight_decay=0.0", "--beta2=0.5"]
    proc = run_train(tmp_path, "--out_dir=given", "--init_from=resume", "--max_iters=5", *flags)
    assert "note: weight_decay 0.0 (checkpoint had 0.1)" in proc.stdout
    run_train(tmp_path, "--out_dir=held", "--init_from=resume", "--max_iters=5")
    given, held = load(tmp_path / "given" / "ckpt.pt"), load(tmp_path / "held" / "ckpt.pt")
    assert [(g["weight_decay"], tuple(g["betas"])) for g in given["optimizer"]["param_groups"]] == [
        (0.0, (0.9, 0.5)),
        (0.0, (0.9, 0.5)),
    ]
    for k in held["model"]:
        assert torch.equal(given["model"][k], held["model"][k]), k


# ---------------------------------------------------------------------------- DDP


@pytest.mark.slow
@pytest.mark.parametrize("nproc,micro_steps", [(2, 4), (4, 4)])
def test_ddp_gloo_equals_single_process_accumulation(tmp_path, nproc, micro_steps):
    make_dataset(tmp_path)
    args = [*TINY, f"--gradient_accumulation_steps={micro_steps}", "--max_iters=6", "--eval_interval=3"]
    args += ["--backend=nccl"]
    ddp = run_train(tmp_path, *args, "--out_dir=ddp", nproc=nproc)
    run_train(tmp_path, *args, "--out_dir=single")
    assert "using gloo" in ddp.stdout  # nccl asked for on CPU
    assert ddp.stdout.count("step 6:") == 1  # rank 0 alone prints
    d, s = load(tmp_path / "ddp" / "ckpt.pt"), load(tmp_path / "single" / "ckpt.pt")
    assert d["model"].keys() == s["model"].keys()
    # the gradients are the same sums in another order; their rounding grows with the processes
    # (largest differences measured: 1.8e-7 on 2, 4.3e-6 on 8; 1.3e-5 on 8 on another CPU, the code unchanged)
    atol = {2: 1e-6, 4: 4e-6, 8: 3e-5}[nproc]
    for k in s["model"]:
        torch.testing.assert_close(d["model"][k], s["model"][k], rtol=1e-4, atol=atol, msg=k)
    _, d_eval = read_log(tmp_path / "ddp")
    _, s_eval = read_log(tmp_path / "single")
    for rd, rs in zip(d_eval, s_eval, strict=True):  # the ranks split the eval batches and all-reduce
        assert float(rd["val_loss"]) == pytest.approx(float(rs["val_loss"]), abs=1e-5)
    assert len(d["rng_state"]) == nproc  # each rank's RNG, seeded differently
    assert not torch.equal(d["rng_state"][0]["torch"], d["rng_state"][-1]["torch"])


@pytest.mark.slow
@pytest.mark.longest
def test_a_checkpoint_of_8_processes_resumes_on_1_and_on_2(tmp_path):
    """Saved by 8 DDP processes, a checkpoint holds the very weights, and resumes on 1 process and
    on 2 to the same training as the 8 would have gone on with (up to float summation order)."""
    make_dataset(tmp_path)
    args = [*TINY, "--gradient_accumulation_steps=8", "--eval_interval=4", "--always_save_checkpoint=True"]
    run_train(tmp_path, *args, "--out_dir=eight", "--max_iters=8", nproc=8)
    run_train(tmp_path, *args, "--out_dir=half", "--max_iters=4", nproc=8)
    saved = load(tmp_path / "half" / "ckpt.pt")
    assert saved["iter_num"] == 4 and len(saved["rng_state"]) == 8
    for nproc in (1, 2):
        out = tmp_path / f"on{nproc}"
        shutil.copytree(tmp_path / "half", out)
        proc = run_train(tmp_path, *args, f"--out_dir={out}", "--init_from=resume", "--eval_only=True", nproc=nproc)
        _, evals = read_log(out)
        it, _, val = printed_eval(proc.stdout)
        assert it == int(evals[-1]["iter"]) == 4
        assert val == pytest.approx(float(evals[-1]["val_loss"]), abs=6e-5)  # same weights (printed to 4 places)
        run_train(tmp_path, *args, f"--out_dir={out}", "--init_from=resume", "--max_iters=8", nproc=nproc)
        resumed, straight = load(out / "ckpt.pt"), load(tmp_path / "eight" / "ckpt.pt")
        assert resumed["iter_num"] == 8 and list(resumed["model"]) == list(straight["model"])
        for k in straight["model"]:
            torch.testing.assert_close(resumed["model"][k], straight["model"][k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.slow
def test_fsdp_gloo_equals_single_process_and_saves_a_classic_checkpoint(tmp_path):
    nproc = 2  # (4 shards the same tensors, all of them divisible by 2 and 4, at about 1.3x the time)
    make_dataset(tmp_path)
    args = [*TINY, "--gradient_accumulation_steps=4", "--max_iters=6", "--eval_interval=3"]
    run_train(tmp_path, *args, "--out_dir=fsdp", "--fsdp=True", nproc=nproc)
    run_train(tmp_path, *args, "--out_dir=single")
    f, s = load(tmp_path / "fsdp" / "ckpt.pt"), load(tmp_path / "single" / "ckpt.pt")
    # gathered into the classic format: full tensors under the usual names, numbered optimizer state
    assert f["model"].keys() == s["model"].keys()
    for k in s["model"]:
        assert f["model"][k].shape == s["model"][k].shape, k
        torch.testing.assert_close(f["model"][k], s["model"][k], rtol=1e-4, atol=1e-6, msg=k)
    assert f["optimizer"]["state"].keys() == s["optimizer"]["state"].keys()
    assert [g["params"] for g in f["optimizer"]["param_groups"]] == [
        g["params"] for g in s["optimizer"]["param_groups"]
    ]
    for i in s["optimizer"]["state"]:
        torch.testing.assert_close(f["optimizer"]["state"][i]["exp_avg"], s["optimizer"]["state"][i]["exp_avg"])
    # and a plain single process resumes from it (and so does sample.py, which reads the same dict)
    resumed = run_train(tmp_path, *args, "--out_dir=fsdp", "--init_from=resume", "--max_iters=9")
    assert "step 9:" in resumed.stdout
    # a sharded run resumes from a single-process checkpoint too
    resumed = run_train(
        tmp_path, *args, "--out_dir=single", "--init_from=resume", "--max_iters=9", "--fsdp=True", nproc=nproc
    )
    assert "step 9:" in resumed.stdout


KILL_RANK_1 = """
import os, runpy, signal, sys, threading, time
sys.path.insert(0, {repo!r})
if os.environ["RANK"] == "1" and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":  # the first attempt's rank 1
    def kill_after_the_first_checkpoint():
        while not os.path.exists({ckpt!r}):
            time.sleep(0.002)
        os.kill(os.getpid(), signal.SIGKILL)
    threading.Thread(target=kill_after_the_first_checkpoint, daemon=True).start()
sys.argv[0] = {train!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_torchrun_restarts_a_killed_rank_and_the_run_ends_as_an_uninterrupted_one(tmp_path):
    """torchrun --max-restarts=1 with --init_from=auto: rank 1 of 2 is SIGKILLed after the first checkpoint;
    torchrun restarts both, they resume from that checkpoint by themselves (rank 0's lock on out_dir went
    with its process) and the run ends with the weights and the log of an uninterrupted one: the single
    process drawing the same micro-batches, as in test_ddp_gloo_equals_single_process_accumulation."""
    make_dataset(tmp_path)
    args = [*TINY, "--gradient_accumulation_steps=2", "--max_iters=8", "--eval_interval=4", "--init_from=auto"]
    wrapper = tmp_path / "kill_rank_1.py"
    wrapper.write_text(KILL_RANK_1.format(repo=str(REPO), ckpt=str(tmp_path / "ddp" / "ckpt.pt"), train=str(TRAIN)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1"]
    cmd += ["--monitor-interval=0.1", str(wrapper), *args, "--out_dir=ddp"]
    ddp = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=clean_env())
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("Initializing a new model from scratch") == 1  # the first attempt
    assert ddp.stdout.count("Resuming training from ddp") == 1  # the restarted one, from the checkpoint at 4
    run_train(tmp_path, *args, "--out_dir=single")
    d, s = load(tmp_path / "ddp" / "ckpt.pt"), load(tmp_path / "single" / "ckpt.pt")
    assert d["iter_num"] == s["iter_num"] == 8
    for k in s["model"]:
        torch.testing.assert_close(d["model"][k], s["model"][k], rtol=1e-4, atol=1e-6, msg=k)
    for got, want in zip(read_log(tmp_path / "ddp"), read_log(tmp_path / "single"), strict=True):
        assert [r["iter"] for r in got] == [r["iter"] for r in want]  # each iteration logged once
    for rg, rw in zip(read_log(tmp_path / "ddp")[1], read_log(tmp_path / "single")[1], strict=True):
        assert float(rg["val_loss"]) == pytest.approx(float(rw["val_loss"]), abs=1e-5)  # the evals at 0, 4 and 8


def test_grad_accum_must_divide_among_processes():
    from nanogpt_plus import parallel
    from nanogpt_plus.errors import UserError

    assert parallel.split_grad_accum(40, 8) == 5
    with pytest.raises(UserError, match="gradient_accumulation_steps=3 does not divide among 2"):
        parallel.split_grad_accum(3, 2)


# ---------------------------------------------------------------------------- eval_only and checkpoints


def test_eval_only_scratch_evaluates_once_and_saves_nothing(tmp_path):
    """It does not even create out_dir: it may be one that cannot be (here, below a file)."""
    make_dataset(tmp_path)
    (tmp_path / "afile").write_text("x")
    proc = run_train(tmp_path, *TINY, "--out_dir=afile/ev", "--eval_only=True")
    assert proc.stdout.count("step 0: train loss") == 1
    assert "iter 0:" not in proc.stdout  # no training step
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "data"]


def test_eval_only_leaves_the_run_in_out_dir_as_it_was(trained, tmp_path):
    """Evaluating another model (eval_gpt2.py uses train_gpt2.py's out_dir) writes nothing there."""
    root, out = trained
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    copy.chmod(0o555)  # it need not be writable (where the tests run as root, this changes nothing)
    try:
        proc = run_train(root, *TINY, f"--out_dir={copy}", "--eval_only=True")
    finally:
        copy.chmod(0o755)
    assert "step 0: train loss" in proc.stdout
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before


def test_eval_only_resume_repeats_the_recorded_eval(trained, tmp_path):
    root, out = trained
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    proc = run_train(root, *TINY, f"--out_dir={copy}", "--init_from=resume", "--eval_only=True")
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before  # nothing saved or logged
    _, eval_rows = read_log(copy)
    it, train, val = printed_eval(proc.stdout)
    assert it == int(eval_rows[-1]["iter"]) == 20
    assert (train, val) == (round(float(eval_rows[-1]["loss"]), 4), round(float(eval_rows[-1]["val_loss"]), 4))


def test_a_run_resumed_from_an_earlier_checkpoint_logs_each_iteration_once(tmp_path):
    """Killed after its checkpoint at 3 but past it, a run resumed from that checkpoint redoes
    iterations 3-5: its log then holds the rows of one uninterrupted run, each once."""
    make_dataset(tmp_path)
    args = [*TINY, "--eval_interval=3", "--max_iters=6"]
    run_train(tmp_path, *args, "--out_dir=straight")
    run_train(tmp_path, *args, "--out_dir=cut", "--max_iters=3")
    at_3 = (tmp_path / "cut" / "ckpt.pt").read_bytes()
    run_train(tmp_path, *args, "--out_dir=cut", "--init_from=resume")  # on to 6, as the stopped run went
    (tmp_path / "cut" / "ckpt.pt").write_bytes(at_3)  # ... but it died before saving at 6
    run_train(tmp_path, *args, "--out_dir=cut", "--init_from=resume")
    for got, want in zip(read_log(tmp_path / "cut"), read_log(tmp_path / "straight"), strict=True):
        assert [r["iter"] for r in got] == [r["iter"] for r in want]
    assert [r["iter"] for r in read_log(tmp_path / "cut")[1]] == ["0", "3", "6"]


@pytest.mark.parametrize(
    "dtype, advice",
    [
        ("float32", ""),
        ("bfloat16", " or use --dtype=float32"),
        ("float16", " or use --dtype=bfloat16 instead of float16"),
    ],
)
def test_divergence_advice_fits_the_dtype(dtype, advice):
    from nanogpt_plus.errors import UserError

    diverged = train_function(
        "diverged", UserError=UserError, checkpoint=checkpoint, learning_rate=0.01, dtype=dtype, out_dir="out"
    )
    assert str(diverged("training loss", 7)) == (
        f"training loss is not finite at iter 7: training diverged; lower --learning_rate (now 0.01){advice}; "
        "out/ckpt.pt, if any, was left as it was"
    )


def test_checkpoint_file_is_as_readable_as_any_file_the_user_writes(trained):
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE((trained[1] / "ckpt.pt").stat().st_mode) == 0o666 & ~umask


def test_checkpoint_is_classic_and_plain(trained):
    ckpt = load(trained[1] / "ckpt.pt")  # weights_only: nothing but tensors and plain values
    assert {"model", "optimizer", "model_args", "iter_num", "best_val_loss", "config"} <= set(ckpt)
    assert list(ckpt["model_args"]) == ["n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout"]
    assert ckpt["model_args"]["vocab_size"] == VOCAB  # from meta.pkl
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    assert ckpt["iter_num"] == 20 and ckpt["config"]["max_iters"] == 20 and ckpt["config"]["dataset"] == "tiny"
    _, eval_rows = read_log(trained[1])
    assert ckpt["best_val_loss"] == pytest.approx(min(float(r["val_loss"]) for r in eval_rows))
    # what classic sample.py does: GPTConfig(**model_args), then a strict load
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    # and the shared loader rebuilds the same weights
    rebuilt = checkpoint.model_from(checkpoint.load(str(trained[1] / "ckpt.pt")))
    for k, v in rebuilt.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_resume_from_orig_mod_prefixed_checkpoint(trained, tmp_path):
    root, out = trained
    ckpt = load(out / "ckpt.pt")
    ckpt["model"] = {"_orig_mod." + k: v for k, v in ckpt["model"].items()}  # as torch.compile'd nanoGPT saved
    (tmp_path / "pref").mkdir()
    torch.save(ckpt, tmp_path / "pref" / "ckpt.pt")
    proc = run_train(root, *TINY, f"--out_dir={tmp_path / 'pref'}", "--init_from=resume", "--eval_only=True")
    _, eval_rows = read_log(out)
    assert printed_eval(proc.stdout)[2] == round(float(eval_rows[-1]["val_loss"]), 4)  # the very weights were loaded
    run_train(root, *TINY, f"--out_dir={tmp_path / 'pref'}", "--init_from=resume", "--max_iters=22")
    saved = load(tmp_path / "pref" / "ckpt.pt")
    assert saved["iter_num"] == 22
    assert not any(k.startswith("_orig_mod.") for k in saved["model"])  # saved from the raw module


# ---------------------------------------------------------------------------- user errors


def test_data_with_tokens_beyond_the_model(tmp_path, trained):
    # meta.pkl says 64 tokens; the checkpoint's model has 32
    make_dataset(tmp_path)
    make_dataset(tmp_path, name="wide", vocab=64)
    make_dataset(tmp_path, name="wide_nometa", vocab=64, meta=False)
    shutil.copytree(trained[1], tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    resume = [*TINY, "--init_from=resume", "--out_dir=out"]
    for args, message in [
        (["--dataset=wide"], "--dataset=wide now has 64 characters .* but the checkpoint's model has 32 tokens"),
        (["--dataset=wide_nometa"], "--dataset=wide_nometa now has GPT-2's tokens .* but the checkpoint's model has "),
        (["--block_size=32"], "block_size=32 does not fit the checkpoint, whose block_size is 16"),
    ]:
        proc = run_train(tmp_path, *resume, *args, check=False)
        assert proc.returncode == 1 and re.fullmatch(f"error: {message}.*\n", proc.stderr), proc.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before  # nothing was touched


def test_error_is_one_line_without_traceback(tmp_path):
    """A dataset with a prepare.py of its own (here data/mine/'s) is made by it; one without (a misspelled name,
    your own text) by data/prepare_text.py."""
    (tmp_path / "data" / "mine").mkdir(parents=True)
    (tmp_path / "data" / "mine" / "prepare.py").write_text("")
    for dataset, fix in [
        ("mine", "run python data/mine/prepare.py first"),
        ("missing", "check --dataset, or make it from your text: python data/prepare_text.py FILE --name missing "
                    "(there is no data/missing/prepare.py)"),
    ]:  # fmt: skip
        proc = run_train(tmp_path, *TINY, f"--dataset={dataset}", check=False)
        assert proc.returncode == 1
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines() == [f"error: no training data for dataset {dataset!r}: {fix}"]


# ---------------------------------------------------------------------------- data


def test_batches_are_windows_of_the_data_and_repeat_by_key(tmp_path, monkeypatch):
    folder = make_dataset(tmp_path)
    data = np.fromfile(folder / "train.bin", dtype=np.uint16).astype(np.int64)
    monkeypatch.chdir(tmp_path)
    src = dataloader.Batches("tiny", 16, 5, "cpu", in_memory_bytes=0)  # memory-mapped path
    mem = dataloader.Batches("tiny", 16, 5, "cpu")  # in-memory path
    x, y = src.get("train", 3)
    assert x.shape == y.shape == (5, 16) and x.dtype == torch.int64
    for row_x, row_y, start in zip(x, y, src.starts("train", 3).tolist(), strict=True):
        assert row_x.tolist() == data[start : start + 16].tolist()
        assert row_y.tolist() == data[start + 1 : start + 17].tolist()
    x2, y2 = mem.get("train", 3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, mem.get("train", 4)[0])
    assert not torch.equal(mem.get("val", 3)[0], mem.get("val", ("eval", 0, "val", 3))[0])


def test_data_dir_falls_back_to_the_script_folder(tmp_path, monkeypatch):
    make_dataset(tmp_path / "repo")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    monkeypatch.setattr(dataloader, "ROOT", str(tmp_path / "repo"))
    found = dataloader.find_data_file("tiny", "train.bin")
    assert Path(found).resolve() == (tmp_path / "repo" / "data" / "tiny" / "train.bin").resolve()
    make_dataset(tmp_path / "elsewhere")  # the working directory wins, as in nanoGPT
    assert dataloader.find_data_file("tiny", "train.bin") == os.path.join("data", "tiny", "train.bin")
    assert dataloader.find_data_file("tiny", "nope.bin") is None


def test_regional_compile_keeps_the_module_and_its_checkpoint_names():
    """compile_mode='regional' compiles each block in place, as train.py's plan does: the model stays
    the same module with the same parameters, and its state dict has the classic names (no `_orig_mod.`)."""
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=32))
    names, params = list(model.state_dict()), list(model.parameters())
    make_plan("cpu", "float32", compile=True, compile_mode="regional").apply(model)  # (compiles at the first call)
    assert list(model.state_dict()) == names
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    assert all(block._compiled_call_impl is not None for block in model.transformer.h)
    assert model._compiled_call_impl is None  # the blocks alone


def test_loss_png_draws_the_logged_values(trained):
    """out_dir/loss.png is drawn from train_log.csv: its lines hold exactly the logged losses."""
    pytest.importorskip("matplotlib")
    from nanogpt_plus import training_log

    _, out = trained
    assert (out / "loss.png").read_bytes().startswith(b"\x89PNG")  # kept up to date by train.py
    train_rows, eval_rows = read_log(out)
    fig = training_log.draw([str(out)], str(out / "again.png"))
    steps, train, val = (line.get_xydata().tolist() for line in fig.axes[0].lines)
    assert steps == [[int(r["iter"]), float(r["loss"])] for r in train_rows]
    assert train == [[int(r["iter"]), float(r["loss"])] for r in eval_rows]
    assert val == [[int(r["iter"]), float(r["val_loss"])] for r in eval_rows]


def test_plot_py_draws_several_runs_side_by_side(trained, tmp_path):
    pytest.importorskip("matplotlib")
    _, out = trained
    other = tmp_path / "other"
    shutil.copytree(out, other)
    proc = subprocess.run(
        [sys.executable, str(REPO / "plot.py"), str(out), str(other), "--out", str(tmp_path / "both.png")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0 and (tmp_path / "both.png").read_bytes().startswith(b"\x89PNG")
    proc = subprocess.run(
        [sys.executable, str(REPO / "plot.py"), str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert proc.returncode == 1 and proc.stderr.strip().endswith(
        "train_log.csv not found: give the out_dir of a training run"
    )
    proc = subprocess.run(
        [sys.executable, str(REPO / "plot.py"), str(out), "--out", str(tmp_path / "nodir" / "x.png")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.startswith("error: cannot write ") and "create it" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "nodir").exists()


def test_without_matplotlib_training_says_how_to_get_the_plot(tmp_path):
    """No matplotlib: nothing breaks, no loss.png, and one note says how to get it."""
    make_dataset(tmp_path)
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None\n")
    env = dict(clean_env(), PYTHONPATH=str(tmp_path))
    cmd = [sys.executable, str(TRAIN), *TINY, "--max_iters=4", "--eval_interval=2", "--out_dir=nomp"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("note: pip install matplotlib to get nomp/loss.png") == 1
    assert not (tmp_path / "nomp" / "loss.png").exists() and (tmp_path / "nomp" / "ckpt.pt").exists()


@pytest.mark.slow
@pytest.mark.longest
def test_readme_first_command_trains_the_quick_recipe_without_a_gpu(tmp_path, shakespeare_input):
    """The README's first command, run as written (but the install, done already) in a fresh copy of
    the repository, with the local Tiny Shakespeare: without a GPU it trains the quick recipe, says
    so, reaches a val loss around 2 and samples Shakespeare-like text."""
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the command trains the classic recipe")
    readme = (REPO / "README.md").read_text()
    command = re.search(r"^pip install -e \. && (python data/shakespeare_char/prepare\.py.*)$", readme, re.M).group(1)
    repo = tmp_path / "repo"
    shutil.copytree(REPO, repo, ignore=shutil.ignore_patterns(".git", ".venv*", "out*", "*.bin", "*.pkl", "input.txt"))
    env = dict(clean_env(), NANOGPT_INPUT_FILE=str(shakespeare_input))
    proc = subprocess.run(command, shell=True, cwd=repo, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "so the quick recipe" in proc.stdout
    best = float(re.search(r"best val loss ([0-9.]+)", proc.stdout).group(1))
    assert best < 2.05
    samples = proc.stdout.split("Loading meta from data/shakespeare_char/meta.pkl...\n")[1].split("---------------\n")
    assert len(samples) == 11 and samples[-1] == ""  # 10 samples, each closed by its line of dashes
    words = re.findall(r"[a-z]+", " ".join(samples).lower())
    assert sum(w in ("the", "and", "to", "of", "i", "you", "my", "that", "is", "not") for w in words) > 0.1 * len(words)


@pytest.mark.parametrize("threads", ["1", "2"])
def test_a_cpu_run_says_once_how_many_threads_torch_uses_and_what_sets_it(tmp_path, threads):
    make_dataset(tmp_path)
    env = clean_env() | {"OMP_NUM_THREADS": threads}
    cmd = [sys.executable, str(TRAIN), *TINY, "--max_iters=1", "--eval_interval=1", "--out_dir=out"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stdout.splitlines() if "thread" in line]
    plural = "" if threads == "1" else "s"
    assert said == [
        f"threads: torch uses {threads} thread{plural} on this CPU; OMP_NUM_THREADS=N sets it (on a machine busy with "
        "other work, fewer threads can be much faster)"
    ]
