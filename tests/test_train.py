"""train.py end to end on tiny synthetic data, on the CPU: learning, exact resume, DDP (gloo)
against gradient accumulation, eval_only, checkpoints, user errors, the LR schedule."""

import csv
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import common
from common import UserError

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "train.py"
VOCAB = 32

# A 2-layer model that trains in milliseconds per step.
TINY = [
    "--device=cpu",
    "--compile=False",
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
    if nproc == 1:
        cmd = [sys.executable, str(TRAIN), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        cmd += [str(TRAIN), *args]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def read_log(out_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training rows, eval rows) of train_log.csv."""
    with open(out_dir / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if r["val_loss"] == ""], [r for r in rows if r["val_loss"] != ""]


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


def test_run_ends_with_where_the_time_went(trained):
    """The closing `time:` line counts the evals and steps the run made, and its parts add up to
    no more than the loop's own wall time."""
    root, _ = trained
    out = (root / "stdout.txt").read_text()
    loop = float(re.search(r"iters 0\.\.20 in ([0-9.]+)s", out).group(1))
    line = re.search(r"^time: (.*)$", out, re.M).group(1)
    assert "2 more evals" in line and "19 more steps" in line  # evals at 0, 10, 20; steps 0..19
    parts = [float(x) for x in re.findall(r"([0-9.]+)s", line)]
    assert len(parts) == 6 and all(p >= 0 for p in parts)
    assert sum(parts[1:]) <= loop + 0.2  # all but setup happen inside the loop (0.1 s rounding each)


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
    assert common.get_lr(it, 6e-4, 100, 1000, 6e-5) == pytest.approx(lr, rel=1e-12, abs=1e-18)


def test_get_lr_without_warmup_or_decay_room():
    assert common.get_lr(0, 1e-3, 0, 10, 1e-4) == pytest.approx(1e-3)  # no warmup: starts at the top
    assert common.get_lr(5, 1e-3, 5, 5, 1e-4) == pytest.approx(1e-4)  # no division by zero
    assert common.get_lr(4, 1e-3, 5, 5, 1e-4) == pytest.approx(1e-3 * 5 / 6)


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


# ---------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_ddp_gloo_equals_single_process_accumulation(tmp_path):
    make_dataset(tmp_path)
    args = [*TINY, "--gradient_accumulation_steps=4", "--max_iters=6", "--eval_interval=3", "--backend=nccl"]
    ddp = run_train(tmp_path, *args, "--out_dir=ddp", nproc=2)
    run_train(tmp_path, *args, "--out_dir=single")
    assert "using gloo" in ddp.stdout  # nccl asked for on CPU
    assert ddp.stdout.count("step 6:") == 1  # rank 0 alone prints
    d, s = load(tmp_path / "ddp" / "ckpt.pt"), load(tmp_path / "single" / "ckpt.pt")
    assert d["model"].keys() == s["model"].keys()
    for k in s["model"]:
        torch.testing.assert_close(d["model"][k], s["model"][k], rtol=1e-4, atol=1e-6, msg=k)
    _, d_eval = read_log(tmp_path / "ddp")
    _, s_eval = read_log(tmp_path / "single")
    for rd, rs in zip(d_eval, s_eval, strict=True):  # the ranks split the eval batches and all-reduce
        assert float(rd["val_loss"]) == pytest.approx(float(rs["val_loss"]), abs=1e-5)
    assert len(d["rng_state"]) == 2  # each rank's RNG, seeded differently
    assert not torch.equal(d["rng_state"][0]["torch"], d["rng_state"][1]["torch"])


@pytest.mark.slow
def test_fsdp_gloo_equals_single_process_and_saves_a_classic_checkpoint(tmp_path):
    make_dataset(tmp_path)
    args = [*TINY, "--gradient_accumulation_steps=4", "--max_iters=6", "--eval_interval=3"]
    run_train(tmp_path, *args, "--out_dir=fsdp", "--fsdp=True", nproc=2)
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
        tmp_path, *args, "--out_dir=single", "--init_from=resume", "--max_iters=9", "--fsdp=True", nproc=2
    )
    assert "step 9:" in resumed.stdout


def test_grad_accum_must_divide_among_processes():
    assert common.split_grad_accum(40, 8) == 5
    with pytest.raises(UserError, match="gradient_accumulation_steps=3 does not divide among 2"):
        common.split_grad_accum(3, 2)


# ---------------------------------------------------------------------------- eval_only and checkpoints


def test_eval_only_scratch_evaluates_once_and_saves_nothing(tmp_path):
    make_dataset(tmp_path)
    proc = run_train(tmp_path, *TINY, "--out_dir=ev", "--eval_only=True")
    assert proc.stdout.count("step 0: train loss") == 1
    assert "iter 0:" not in proc.stdout  # no training step
    assert not (tmp_path / "ev" / "ckpt.pt").exists()
    train_rows, eval_rows = read_log(tmp_path / "ev")
    assert train_rows == [] and len(eval_rows) == 1


def test_eval_only_resume_repeats_the_recorded_eval(trained, tmp_path):
    root, out = trained
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = (copy / "ckpt.pt").read_bytes()
    run_train(root, *TINY, f"--out_dir={copy}", "--init_from=resume", "--eval_only=True")
    assert (copy / "ckpt.pt").read_bytes() == before  # nothing saved
    _, eval_rows = read_log(copy)
    assert eval_rows[-1]["iter"] == eval_rows[-2]["iter"] == "20"  # appended, same iteration
    assert eval_rows[-1]["val_loss"] == eval_rows[-2]["val_loss"]  # same weights, same eval batches


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
    from model import GPT, GPTConfig

    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    # and the shared loader rebuilds the same weights
    rebuilt = common.model_from_checkpoint(common.load_checkpoint(str(trained[1] / "ckpt.pt")))
    for k, v in rebuilt.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_resume_from_orig_mod_prefixed_checkpoint(trained, tmp_path):
    root, out = trained
    ckpt = load(out / "ckpt.pt")
    ckpt["model"] = {"_orig_mod." + k: v for k, v in ckpt["model"].items()}  # as torch.compile'd nanoGPT saved
    (tmp_path / "pref").mkdir()
    torch.save(ckpt, tmp_path / "pref" / "ckpt.pt")
    shutil.copy(out / "train_log.csv", tmp_path / "pref")
    run_train(root, *TINY, f"--out_dir={tmp_path / 'pref'}", "--init_from=resume", "--eval_only=True")
    _, eval_rows = read_log(tmp_path / "pref")
    assert eval_rows[-1]["val_loss"] == eval_rows[-2]["val_loss"]  # the very weights were loaded
    run_train(root, *TINY, f"--out_dir={tmp_path / 'pref'}", "--init_from=resume", "--max_iters=22")
    saved = load(tmp_path / "pref" / "ckpt.pt")
    assert saved["iter_num"] == 22
    assert not any(k.startswith("_orig_mod.") for k in saved["model"])  # saved from the raw module


# ---------------------------------------------------------------------------- user errors


@pytest.fixture
def in_data_dir(tmp_path, monkeypatch):
    make_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    return tmp_path


def main(*args):
    import train

    train.main([*TINY, *args])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset=nope"], r"no training data for dataset 'nope'.*python data/nope/prepare\.py"),
        (["--init_from=resume", "--out_dir=empty"], r"no checkpoint at empty.ckpt\.pt"),
        (["--init_from=gpt3"], r"unknown init_from='gpt3'"),
        (["--n_head=3"], r"n_embd=32 is not divisible by n_head=3"),
        (["--block_size=2000"], r"fewer than block_size \+ 1 = 2001"),
        (["--gradient_accumulation_steps=0"], r"gradient_accumulation_steps=0 must be at least 1"),
        (["--batch_size=2.5"], r"batch_size expects int"),
        (["--learning_rat=1"], r"did you mean 'learning_rate'"),
        (["--device=tpu"], r"unknown device|unsupported device"),
        (["--dtype=float8"], r"unknown dtype"),
    ],
)
def test_user_errors(in_data_dir, args, message):
    with pytest.raises(UserError, match=message):
        main(*args)


def test_unwritable_out_dir(in_data_dir):
    (in_data_dir / "afile").write_text("x")
    with pytest.raises(UserError, match="cannot create out_dir"):
        main("--out_dir=afile/sub")


def test_data_with_tokens_beyond_the_model(in_data_dir, trained):
    # meta.pkl says 64 tokens; the checkpoint's model has 32
    make_dataset(in_data_dir, name="wide", vocab=64)
    out = in_data_dir / "out"
    shutil.copytree(trained[1], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(UserError, match="meta.pkl has vocab_size=64 but the model has 32"):
        main("--init_from=resume", "--dataset=wide", "--out_dir=out")
    make_dataset(in_data_dir, name="wide_nometa", vocab=64, meta=False)
    with pytest.raises(UserError, match="token id 6[0-3] but the model's vocab_size is 32"):
        main("--init_from=resume", "--dataset=wide_nometa", "--out_dir=out")
    with pytest.raises(UserError, match="block_size=32 does not fit the resume model, whose block_size is 16"):
        main("--init_from=resume", "--out_dir=out", "--block_size=32")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing the user had was touched


def test_error_is_one_line_without_traceback(tmp_path):
    proc = run_train(tmp_path, *TINY, "--dataset=missing", check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: no training data for dataset 'missing': data/missing/train.bin is missing; "
        "run python data/missing/prepare.py first"
    ]


def test_non_finite_loss_names_the_step(tmp_path):
    import train

    run = type("Run", (), {"config": {"out_dir": str(tmp_path), "learning_rate": 1.0}})()
    watch = train.NonFiniteWatch("cpu")
    watch.update(torch.tensor(2.0), 0)
    watch.check(run)  # finite: fine
    watch.update(torch.tensor(float("nan")), 7)
    watch.update(torch.tensor(float("inf")), 8)
    with pytest.raises(UserError, match=r"not finite at iter 7: .*lower --learning_rate \(now 1.0\).*bfloat16"):
        watch.check(run)


# ---------------------------------------------------------------------------- data


def test_batches_are_windows_of_the_data_and_repeat_by_key(tmp_path):
    folder = make_dataset(tmp_path)
    data = np.fromfile(folder / "train.bin", dtype=np.uint16).astype(np.int64)
    src = common.BatchSource(str(folder), 16, 5, "cpu", in_memory_bytes=0)  # memory-mapped path
    mem = common.BatchSource(str(folder), 16, 5, "cpu")  # in-memory path
    x, y = src.get_batch("train", 3)
    assert x.shape == y.shape == (5, 16) and x.dtype == torch.int64
    for row_x, row_y, start in zip(x, y, src.starts("train", 3).tolist(), strict=True):
        assert row_x.tolist() == data[start : start + 16].tolist()
        assert row_y.tolist() == data[start + 1 : start + 17].tolist()
    x2, y2 = mem.get_batch("train", 3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, mem.get_batch("train", 4)[0])
    assert not torch.equal(mem.get_batch("val", 3)[0], mem.get_batch("val", ("eval", 0, "val", 3))[0])


def test_data_dir_falls_back_to_the_script_folder(tmp_path, monkeypatch):
    make_dataset(tmp_path / "repo")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    found = common.find_data_dir("tiny", str(tmp_path / "repo"))
    assert Path(found).resolve() == (tmp_path / "repo" / "data" / "tiny").resolve()
    make_dataset(tmp_path / "elsewhere")  # the working directory wins, as in nanoGPT
    assert common.find_data_dir("tiny", str(tmp_path / "repo")) == os.path.join("data", "tiny")


def test_regional_compile_keeps_the_module_and_its_checkpoint_names():
    """compile_mode='regional' compiles the blocks in place: the model stays the same module with
    the same parameters, and its state dict has the classic names (no `_orig_mod.` anywhere)."""
    import train
    from model import GPT, GPTConfig

    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=32))
    names, params = list(model.state_dict()), list(model.parameters())
    assert train.compile_model(model, lambda *a: None, "regional") is model
    assert list(model.state_dict()) == names
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    assert all(block._compiled_call_impl is not None for block in model.transformer.h)
    assert "head_with_loss" not in vars(model)  # a small vocabulary's head stays eager
    big = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=train._COMPILED_HEAD_VOCAB))
    train.compile_model(big, lambda *a: None, "regional")
    assert "head_with_loss" in vars(big)  # a large one's head and loss are compiled as well


def test_compile_mode_auto_picks_cuda_graphs_only_where_they_work():
    import train

    assert train.resolve_compile_mode("auto", "cuda", False, 1, "bfloat16") == "regional"
    assert train.resolve_compile_mode("auto", "cuda", False, 1, "float16") == "reduce-overhead"
    assert train.resolve_compile_mode("auto", "cuda", True, 1, "bfloat16") == "default"  # DDP / FSDP
    assert train.resolve_compile_mode("auto", "cuda", False, 4, "bfloat16") == "default"  # accumulation
    assert train.resolve_compile_mode("auto", "cpu", False, 1, "float32") == "default"
    mode = "max-autotune-no-cudagraphs"
    assert train.resolve_compile_mode(mode, "cuda", False, 4, "bfloat16") == mode
    assert train.resolve_compile_mode("reduce-overhead", "cpu", False, 4, "float32") == "reduce-overhead"
    # train.py records its own graphs only in regional mode, where they can work
    assert train.records_graphs("regional", "cuda", False, 1, "bfloat16")
    assert train.records_graphs("regional", "cuda", False, 1, "float32")
    for where in (("cpu", False, 1, "float32"), ("cuda", True, 1, "bfloat16"), ("cuda", False, 2, "bfloat16")):
        assert not train.records_graphs("regional", *where)
    assert not train.records_graphs("regional", "cuda", False, 1, "float16")
    assert not train.records_graphs("default", "cuda", False, 1, "bfloat16")
    with pytest.raises(UserError, match="cannot accumulate gradients over 4 micro-steps"):
        train.resolve_compile_mode("reduce-overhead", "cuda", False, 4, "bfloat16")
