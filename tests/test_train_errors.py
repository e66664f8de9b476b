"""train.py: every mistake a user can make is one `error:` line that names the problem and the fix, exits
non-zero and leaves what the user had untouched; a SIGKILL at any moment leaves a loadable checkpoint; a
second run into a live run's out_dir and Ctrl-C say how to go on; crafted and classic files."""

import importlib.util
import os
import pickle
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import make_dataset, read_log, run_train
from user_errors import (
    GARBAGE,
    RESUME,
    SCRIPTS,
    TEMP_NAME,
    TRAIN,
    Payload,
    assert_one_line,
    assert_one_line_error,
    case_id,
    check_bad_input,
    clean_env,
    model_only,
    remove_file,
    run_here,
    run_script,
    small_files_in_child,
    snapshot,
    truncate_file,
    write_file,
)

from nanogpt_plus import checkpoint, dataloader, tokenizer, training_log
from nanogpt_plus.errors import UserError

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")

# (id, args, setup, phrase in the message, extra env)
CASES = [
    ("unknown-key", ["--learning_rat=1"], None, "unknown config key 'learning_rat': did you mean", None),
    ("wrong-type", ["--batch_size=2.5"], None, "batch_size expects int, got 2.5 (float)", None),
    ("config-missing", ["nope_config.py"], None, "config file nope_config.py not found", None),
    (
        "config-syntax",
        ["bad_config.py"],
        write_file("bad_config.py", "n_layer = (\n"),
        "syntax error in config file bad_config.py, line 1",
        None,
    ),
    (
        "config-sys-exit",
        ["exit_config.py"],
        write_file("exit_config.py", "import sys\nsys.exit()\n"),
        "config file exit_config.py called sys.exit(None): a config file only sets keys",
        None,
    ),
    (
        "config-tuple-out_dir",
        ["tuple_config.py"],
        write_file("tuple_config.py", "out_dir = ('runs', 'a')\n"),
        "out_dir expects str, got ('runs', 'a') (tuple) in config file tuple_config.py",
        None,
    ),
    (
        "log-not-utf8",
        RESUME,
        write_file("out/train_log.csv", b"iter,loss,val_loss,lr,time_ms,mfu\n0,3.5,,0.001,12.0,\n\xff\xfe\n"),
        "out/train_log.csv is not a training log: it is not text (byte 53 is no UTF-8): move it away, or choose",
        None,
    ),
    (
        "log-enormous-line",
        RESUME,
        write_file("out/train_log.csv", "iter,loss,val_loss,lr,time_ms,mfu\n" + "1" * 200_000 + "\n"),
        "out/train_log.csv is not a training log: line 2 is no CSV row: move it away, or choose another --out_dir",
        None,
    ),
    (
        "dataset-missing",
        ["--dataset=nope"],
        None,
        "no training data for dataset 'nope': check --dataset, or make it "
        "from your text: python data/prepare_text.py FILE --name nope (there is no data/nope/prepare.py)",
        None,
    ),
    ("init_from-unknown", ["--init_from=gpt3"], None, "unknown init_from='gpt3'", None),
    ("grad-accum-zero", ["--gradient_accumulation_steps=0"], None, "must be at least 1", None),
    (
        "scratch-over-a-checkpoint",
        ["--out_dir=out"],
        None,
        "out already holds a checkpoint: go on from it with --init_from=resume, start this run elsewhere "
        "with --out_dir=NEW_DIR, or replace it with --overwrite=True",
        None,
    ),
    (
        "val-bin-missing",
        [],
        remove_file("data/tiny/val.bin"),
        "no val data for dataset 'tiny': data/tiny/val.bin is missing; check --dataset, or make it from your text: "
        "python data/prepare_text.py FILE --name tiny (there is no data/tiny/prepare.py)",
        None,
    ),
    ("bins-too-short", ["--block_size=2000"], None, "fewer than block_size + 1 = 2001", None),
    (
        "meta-vocab-too-big",
        [*RESUME, "--dataset=wide"],
        None,
        "--dataset=wide now has 64 characters (data/wide/meta.pkl) but the checkpoint's model has 32 tokens",
        None,
    ),
    (
        "dataset-prepared-again-with-fewer-characters",
        RESUME,
        lambda root: shutil.rmtree(root / "data" / "tiny") or make_dataset(root, vocab=16),
        "--dataset=tiny now has 16 characters (data/tiny/meta.pkl) but the checkpoint's model has 32 tokens: it is "
        "not the data the model was trained on (prepared again?); prepare it as before, or start anew with "
        "--out_dir=NEW_DIR",
        None,
    ),
    (  # a prepare cut short between its files, as before they were replaced together: bins and meta.pkl disagree
        "bins-of-other-text-than-meta-pkl",
        [],
        lambda root: shutil.copy(make_dataset(root, "t16", vocab=16) / "meta.pkl", root / "data/tiny/meta.pkl"),
        "--dataset=tiny holds token id 31 but its meta.pkl has 16 characters: the bins and meta.pkl come from "
        "different texts; prepare the dataset again",
        None,
    ),
    (
        "dataset-prepared-again-as-gpt2",
        RESUME,
        remove_file("data/tiny/meta.pkl"),
        "--dataset=tiny now has GPT-2's tokens (no meta.pkl) but the checkpoint's model has 32 tokens",
        None,
    ),
    ("meta-corrupt", [], write_file("data/tiny/meta.pkl", GARBAGE), "meta.pkl is corrupt", None),
    ("resume-no-ckpt", ["--init_from=resume", "--out_dir=empty"], None, "no checkpoint at empty", None),
    ("ckpt-truncated", RESUME, truncate_file("out/ckpt.pt"), "is truncated or corrupt", None),
    ("ckpt-garbage", RESUME, write_file("out/ckpt.pt", GARBAGE), "corrupt", None),
    (
        "ckpt-model-only",
        RESUME,
        model_only("out/ckpt.pt"),
        "out/ckpt.pt cannot be resumed: it holds a model but no training state (no optimizer, iter_num, best_val_loss)",
        None,
    ),
    (
        "auto-another-run",
        ["--init_from=auto", "--out_dir=out", "--n_layer=3"],
        None,
        "out/ckpt.pt is another run's checkpoint (n_layer 2, this run's 3): go on from it with --init_from=resume",
        None,
    ),
    (
        "arch-contradicts-ckpt",
        [*RESUME, "--n_layer=4"],
        None,
        "n_layer=4 contradicts the checkpoint, which has n_layer=2",
        None,
    ),
    ("n_embd-vs-n_head", ["--n_head=3"], None, "n_embd=32 is not divisible by n_head=3", None),
    (
        "block_size-beyond-ckpt",
        [*RESUME, "--block_size=32"],
        None,
        "block_size=32 does not fit the checkpoint, whose block_size is 16",
        None,
    ),
    (
        "grad-accum-vs-world",
        ["--gradient_accumulation_steps=3"],
        None,
        "gradient_accumulation_steps=3 does not divide among 2 processes",
        {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"},
    ),
    ("unknown-device", ["--device=tpu"], None, "unknown device 'tpu'", None),
    pytest.param("no-cuda", ["--device=cuda"], None, "no CUDA GPU is available", None, marks=NO_CUDA, id="no-cuda"),
    ("unknown-dtype", ["--dtype=float8"], None, "unknown dtype 'float8'", None),
    ("out_dir-unwritable", ["--out_dir=afile/sub"], write_file("afile", "x"), "cannot create out_dir", None),
    ("negative-max_iters", ["--max_iters=-1"], None, "max_iters=-1 must not be negative", None),
    ("negative-weight_decay", ["--weight_decay=-0.1"], None, "weight_decay=-0.1 must not be negative", None),
    ("beta2-out-of-range", ["--beta2=1.0"], None, "beta2=1.0 must be in [0, 1)", None),
    ("unknown-optimizer", ["--optimizer=sgd"], None, "unknown optimizer='sgd': use adamw", None),
    ("dropout-out-of-range", [*RESUME, "--dropout=1.5"], None, "dropout=1.5 must be in [0, 1)", None),
    ("unknown-compile_mode", ["--compile=True", "--compile_mode=fast"], None, "compile_mode='fast'", None),
    pytest.param(
        "wandb-missing",
        ["--overwrite=True", "--out_dir=out", "--wandb_log=True"],
        None,
        "wandb_log=True needs wandb: pip install wandb",
        None,
        marks=pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed"),
        id="wandb-missing",
    ),
    (
        "loss-not-finite",
        [*RESUME, "--learning_rate=1e30", "--decay_lr=False", "--max_iters=12"],
        None,
        "is not finite at iter",
        None,
    ),
]


@pytest.mark.parametrize("name, args, setup, phrase, env", CASES, ids=[case_id(c) for c in CASES])
def test_bad_input_is_one_clear_line_and_harmless(work, name, args, setup, phrase, env):
    check_bad_input(work, "train", args, setup, phrase, env)


def test_matching_architecture_keys_still_resume(work):
    """Classic configs restate the architecture on resume: equal values are fine."""
    proc = run_here("train", work, [*RESUME, "--n_layer=2", "--n_head=2", "--n_embd=32", "--max_iters=3"])
    assert proc.returncode == 0, proc.stderr
    assert checkpoint.load(str(work / "out" / "ckpt.pt"))["iter_num"] == 3


def _kill_when(proc, out: Path, rng: random.Random, while_saving: bool) -> bool:
    """SIGKILL proc after a random delay, or in the middle of its 2nd..5th checkpoint write
    (as soon as its temp file shows up); True if it was still running when killed."""
    deadline = time.monotonic() + (60 if while_saving else rng.uniform(2.0, 5.0))
    writes, seen = rng.randint(2, 5), set()
    while time.monotonic() < deadline and proc.poll() is None:
        if while_saving and out.is_dir():
            seen.update(n for n in os.listdir(out) if TEMP_NAME.match(n))
            if len(seen) >= writes:
                break
        time.sleep(0.0002 if while_saving else 0.01)
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return alive


@pytest.mark.slow
def test_sigkill_at_any_moment_leaves_a_loadable_checkpoint(tmp_path):
    make_dataset(tmp_path)
    out = tmp_path / "out"
    args = [*TRAIN, "--out_dir=out", "--eval_interval=1", "--eval_iters=1", "--always_save_checkpoint=True"]
    args += ["--n_embd=64", "--log_interval=50"]
    rng = random.Random(20240607)
    last_iter, temps_seen = 0, 0
    for attempt in range(5):
        init = "resume" if (out / "ckpt.pt").exists() else "scratch"
        cmd = [sys.executable, str(SCRIPTS["train"]), *args, "--max_iters=100000", f"--init_from={init}"]
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=clean_env())
        killed = _kill_when(proc, out, rng, while_saving=attempt % 2 == 0)
        assert killed, f"training stopped before it was killed:\n{proc.stderr.read().decode()[-2000:]}"
        proc.stderr.close()
        names = os.listdir(out) if out.is_dir() else []
        kept = ("ckpt.pt", "train_log.csv", "loss.png", checkpoint.LOCK_NAME)  # (the lock file, no lock)
        kept += (training_log.PENDING_NAME,)  # (a try killed before its first checkpoint, after one that had a log)
        assert all(n in kept or TEMP_NAME.match(n) for n in names), names
        temps_seen += sum(bool(TEMP_NAME.match(n)) for n in names)
        if "ckpt.pt" in names:
            ckpt = checkpoint.load(str(out / "ckpt.pt"))
            checkpoint.model_from(ckpt)
            assert ckpt["iter_num"] >= last_iter  # never back to an older state
            last_iter = ckpt["iter_num"]
    assert last_iter > 0, "no checkpoint was ever written"
    assert temps_seen >= 1, "no kill landed during a checkpoint write"
    max_iters = last_iter + 3
    done = run_train(tmp_path, *args, f"--max_iters={max_iters}", "--init_from=resume")
    if any(TEMP_NAME.match(n) for n in names):  # the last kill landed mid-write, so its temp file is gone now
        assert "partial checkpoint of a killed run" in done.stdout
    assert checkpoint.load(str(out / "ckpt.pt"))["iter_num"] == max_iters
    assert not [n for n in os.listdir(out) if TEMP_NAME.match(n)]  # the leftovers were cleaned up


def test_a_second_run_is_refused_and_ctrl_c_says_how_the_run_goes_on_as_it_was(tmp_path):
    """A run into out/ (which, on a CPU, said before its first step that it takes hours) holds it: a second
    run into it, even one told to replace it, stops with one line naming the first's pid. Ctrl-C then ends
    the first with the iteration its checkpoint holds and the command that resumes: that command alone
    goes on with the run's own config (dataset, model, schedule), saying which key given now differs."""
    make_dataset(tmp_path)
    args = [*TRAIN, "--out_dir=out", "--max_iters=10000000000", "--eval_interval=2", "--log_interval=1000"]
    cmd = [sys.executable, str(SCRIPTS["train"]), *args]
    with_ctrl_c = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731 (a shell's `&` ignores it)
    first = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=clean_env(), preexec_fn=with_ctrl_c)  # fmt: skip
    said = []
    while not said or not said[-1].startswith("saving checkpoint"):
        said.append(first.stdout.readline())
        assert said[-1], first.stderr.read()  # (it ended)
    while not (tmp_path / "out" / "ckpt.pt").exists():  # (written in the background)
        time.sleep(0.01)
    note = next(i for i, line in enumerate(said) if line.startswith("note: this run needs about"))
    assert note < next(i for i, line in enumerate(said) if line.startswith("step 0:"))  # before the first step
    first.send_signal(signal.SIGSTOP)  # (paused, it holds out/ still, and leaves the CPU to the second run)
    second = run_script("train", tmp_path, ["--out_dir=out", "--overwrite=True", "--max_iters=2"])
    assert_one_line_error(second, f"out is in use by another training run (pid {first.pid}): let it finish or stop it")
    first.send_signal(signal.SIGCONT)
    first.send_signal(signal.SIGINT)
    _, stderr = first.communicate(timeout=60)
    assert first.returncode != 0 and "Traceback" not in stderr, stderr
    stopped, held, command = re.fullmatch(
        r"interrupted at iter (\d+); out/ckpt.pt holds iter (\d+): resume with (python .* --out_dir=out)\n", stderr
    ).groups()
    held = int(held)
    assert checkpoint.load(str(tmp_path / "out" / "ckpt.pt"))["iter_num"] == held and held % 2 == 0
    assert 0 < held <= int(stopped) and not (tmp_path / "out" / checkpoint.LOCK_NAME).exists()
    assert command == f"python {SCRIPTS['train']} --init_from=resume --out_dir=out"
    resume = [sys.executable, *shlex.split(command)[1:], f"--max_iters={held + 2}"]
    proc = subprocess.run(resume, cwd=tmp_path, capture_output=True, text=True, timeout=120, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout.count("note: ") == 1 and f"note: max_iters {held + 2} (checkpoint had 10000000000)\n" in proc.stdout
    )
    ckpt = checkpoint.load(str(tmp_path / "out" / "ckpt.pt"))
    assert ckpt["iter_num"] == held + 2 and ckpt["model_args"]["n_embd"] == 32
    assert {k: ckpt["config"][k] for k in ("dataset", "batch_size", "eval_interval", "learning_rate", "max_iters")} == {
        "dataset": "tiny", "batch_size": 4, "eval_interval": 2, "learning_rate": 1e-2, "max_iters": held + 2
    }  # fmt: skip


def test_full_disk_on_resume_is_one_line_and_keeps_the_old_checkpoint(work):
    """Resumed onto a full disk (here: a file-size limit, which fails writes as a full disk does) the run
    ends with one line: the checkpoint could not be written, the previous ckpt.pt is untouched; the plot,
    which could not be drawn either, is a note (not a thread's traceback); no temp file is left behind."""
    pytest.importorskip("matplotlib")
    before = snapshot(work)
    cmd = [sys.executable, str(SCRIPTS["train"]), *TRAIN, *RESUME, "--max_iters=4", "--eval_interval=2"]
    proc = subprocess.run(
        cmd,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
        preexec_fn=small_files_in_child(20000),
    )
    said = "could not write the checkpoint out/ckpt.pt (File too large); the file there, if any, is the checkpoint"
    assert_one_line_error(proc, said + " of iter 2: free some disk space")
    assert "note: could not draw out/loss.png (File too large); training goes on without it" in proc.stdout
    after = snapshot(work)
    assert after["out/ckpt.pt"] == before["out/ckpt.pt"]
    assert not [name for name in os.listdir(work / "out") if TEMP_NAME.match(name)]


def test_resuming_a_finished_run_says_how_to_go_on(work):
    """out/ holds a run that reached its max_iters=2: resumed as it was, it has nothing to train and says so."""
    proc = run_here("train", work, RESUME, fixed=False)
    assert proc.returncode == 0, proc.stderr
    assert "note: the run in out is at iter 2, past max_iters=2: raise --max_iters to go on" in proc.stdout


def test_crafted_meta_pkl_is_refused_by_train(work):
    marker = work / "payload_ran"
    with open(work / "data" / "tiny" / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 32, "x": Payload(marker)}, f)
    proc = run_here("train", work, ["--max_iters=1"])
    assert_one_line_error(proc, "refusing to load data/tiny/meta.pkl: global posix.system is not allowed")
    assert not marker.exists()


def test_classic_checkpoint_resumes(work):
    """A checkpoint as classic nanoGPT wrote it: torch.compile's `_orig_mod.` prefixes, the
    `.attn.bias` mask buffers, and best_val_loss as a 0-dim tensor."""
    ckpt = torch.load(work / "out" / "ckpt.pt", weights_only=True)
    n = ckpt["model_args"]["block_size"]
    state = {f"_orig_mod.{k}": v for k, v in ckpt["model"].items()}
    for i in range(ckpt["model_args"]["n_layer"]):
        state[f"_orig_mod.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
    classic = {
        "model": state,
        "optimizer": ckpt["optimizer"],
        "model_args": ckpt["model_args"],
        "iter_num": ckpt["iter_num"],
        "best_val_loss": torch.tensor(ckpt["best_val_loss"]),
        "config": ckpt["config"],
    }
    torch.save(classic, work / "out" / "ckpt.pt")
    checkpoint.model_from(checkpoint.load(str(work / "out" / "ckpt.pt")))
    proc = run_here("train", work, [*RESUME, "--max_iters=4"])
    assert proc.returncode == 0, proc.stderr
    assert "holds no RNG state" in proc.stdout
    assert checkpoint.load(str(work / "out" / "ckpt.pt"))["iter_num"] == 4


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_classic_meta_pkl_loads_with_every_protocol(tmp_path, protocol):
    itos = {i: ch for i, ch in enumerate("\n !abc")}
    meta = {"vocab_size": len(itos), "itos": itos, "stoi": {c: i for i, c in itos.items()}}
    with open(tmp_path / "meta.pkl", "wb") as f:
        pickle.dump(meta, f, protocol=protocol)
    assert tokenizer.load_meta(str(tmp_path / "meta.pkl")) == meta


@pytest.mark.parametrize("in_memory_bytes", [1 << 30, 0])  # read whole, memory-mapped
def test_a_bin_of_an_odd_size_is_one_line(tmp_path, monkeypatch, in_memory_bytes):
    """A .bin cut in the middle of a token: read on, it would shift every token after the cut."""
    make_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    with open("data/tiny/train.bin", "ab") as f:
        f.write(b"\x07")
    with pytest.raises(UserError) as e:
        dataloader.Batches("tiny", 16, 4, "cpu", in_memory_bytes=in_memory_bytes)
    assert_one_line(
        str(e.value),
        "data/tiny/train.bin is 12,001 bytes, not a whole number of 2-byte token ids",
        "prepare it again: python data/prepare_text.py FILE --name tiny --overwrite",  # (tiny has no prepare.py)
    )


def test_token_ids_beyond_the_models_vocabulary_are_one_line(tmp_path, monkeypatch):
    """A model of fewer tokens than the bins hold (GPT-2 weights on other ids, say): its embedding would fail."""
    make_dataset(tmp_path, vocab=32)
    monkeypatch.chdir(tmp_path)
    batches = dataloader.Batches("tiny", 16, 4, "cpu")
    batches.check_vocabulary(32, 32)  # (and no error where they fit)
    with pytest.raises(UserError) as e:
        batches.check_vocabulary(None, 20)
    assert_one_line(str(e.value), "--dataset=tiny needs a vocabulary of 32 tokens but the model has vocab_size=20")


# ---------------------------------------------------------------------------- a new run and the old run's log

OLD_LOG = "iter,loss,val_loss,lr,time_ms,mfu,hellaswag\n" + "".join(f"{i},3.5,,0.001,12.0,,\n" for i in range(20))


def logged_iters(out_dir: Path) -> tuple[list[int], list[int]]:
    """(iterations of the log lines, iterations of the evals) in out_dir/train_log.csv."""
    steps, evals = read_log(out_dir)
    return [int(r["iter"]) for r in steps], [int(r["iter"]) for r in evals]


def test_overwrite_that_fails_before_its_first_checkpoint_leaves_the_old_run_whole(work):
    """--overwrite=True, then divergence at the first steps: the old checkpoint keeps its log and picture,
    and the new run's log does not stay behind."""
    (work / "out" / "train_log.csv").write_text(OLD_LOG)
    (work / "out" / "loss.png").write_bytes(b"the old run's picture")
    before = snapshot(work / "out")
    proc = run_script("train", work, ["--out_dir=out", "--overwrite=True", "--learning_rate=1e30", "--decay_lr=False"])
    assert_one_line_error(proc, "is not finite at iter")
    assert snapshot(work / "out") == before
    assert sorted(os.listdir(work / "out")) == ["ckpt.pt", "loss.png", "train_log.csv"]


def test_overwrite_replaces_the_old_log_with_the_new_runs_once_it_has_a_checkpoint(work):
    (work / "out" / "train_log.csv").write_text(OLD_LOG)
    (work / "out" / "loss.png").write_bytes(b"the old run's picture")
    proc = run_here("train", work, ["--out_dir=out", "--overwrite=True", "--max_iters=4", "--eval_interval=2"])
    assert proc.returncode == 0, proc.stderr
    assert logged_iters(work / "out") == ([0, 1, 2, 3], [0, 2, 4])  # an uninterrupted run's log, nothing older
    assert not (work / "out" / "train_log.new.csv").exists()
    if importlib.util.find_spec("matplotlib"):  # the picture followed the log
        assert (work / "out" / "loss.png").read_bytes().startswith(b"\x89PNG")


def test_auto_restarted_before_the_first_checkpoint_logs_each_iteration_once(work):
    """torchrun --max-restarts with --init_from=auto: the first try was killed at iter 20, before any checkpoint
    (its log ends with a cut-short line); the restart starts anew, and its log is an uninterrupted run's."""
    (work / "run").mkdir()
    (work / "run" / "train_log.csv").write_text(OLD_LOG + "20,3.4")
    proc = run_here("train", work, ["--out_dir=run", "--init_from=auto", "--max_iters=4", "--eval_interval=2"])
    assert proc.returncode == 0, proc.stderr
    assert logged_iters(work / "run") == ([0, 1, 2, 3], [0, 2, 4])


def test_sigterm_is_handled_as_ctrl_c(tmp_path):
    """kill (SIGTERM, as schedulers send): the checkpoint being written is finished, the lock is released, and
    the one line says which iteration ckpt.pt holds and the command that resumes."""
    make_dataset(tmp_path)
    args = [*TRAIN, "--out_dir=out", "--max_iters=1000000", "--eval_interval=2", "--log_interval=1000"]
    proc = subprocess.Popen([sys.executable, str(SCRIPTS["train"]), *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=clean_env())  # fmt: skip
    while not (tmp_path / "out" / "ckpt.pt").exists():
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.terminate()
    _, stderr = proc.communicate(timeout=60)
    said = re.fullmatch(
        rf"interrupted at iter (\d+); out/ckpt.pt holds iter (\d+): resume with python {SCRIPTS['train']} "
        r"--init_from=resume --out_dir=out\n",
        stderr,
    )
    assert said, stderr  # (what it said instead, if anything)
    stopped, held = said.groups()
    assert proc.returncode != 0 and 0 < int(held) <= int(stopped)
    assert checkpoint.load(str(tmp_path / "out" / "ckpt.pt"))["iter_num"] == int(held)
    assert not (tmp_path / "out" / checkpoint.LOCK_NAME).exists()


def test_a_run_that_fails_before_it_trains_leaves_no_new_out_dir(work):
    """n_head does not divide n_embd, found when the model is made, after out_dir was made and locked."""
    before = sorted(p.relative_to(work) for p in work.rglob("*"))
    proc = run_script("train", work, ["--out_dir=runs/new", "--n_head=3"])
    assert_one_line_error(proc, "n_embd=32 is not divisible by n_head=3")
    assert sorted(p.relative_to(work) for p in work.rglob("*")) == before
