"""Every failure a user can cause is one `error:` line that names the problem and the fix, exits
non-zero and leaves what the user had untouched; a SIGKILL at any moment leaves a loadable
checkpoint; crafted checkpoints and meta.pkl files are refused without running their code."""

import contextlib
import errno
import hashlib
import importlib.util
import os
import pickle
import random
import re
import runpy
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import TINY, make_dataset, run_train

import plot
from nanogpt_plus import atomic, checkpoint, dataloader, plan, tokenizer, training_log
from nanogpt_plus.errors import UserError

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = {
    "train": REPO / "train.py",
    "sample": REPO / "sample.py",
    "bench": REPO / "bench.py",
    "prepare": REPO / "data" / "shakespeare_char" / "prepare.py",
}
BENCH = [
    "--device=cpu",
    "--compile=False",
    "--n_layer=1",
    "--n_head=1",
    "--n_embd=16",
    "--block_size=16",
    "--batch_size=2",
    "--vocab_size=32",
    "--burn_in=0",
    "--num_steps=1",
    "--repeats=1",
]
# the default, 40 micro-steps, is slow on 2 cores; a new out_dir unless a case names one (out/ holds a run)
TRAIN = [*TINY, "--gradient_accumulation_steps=1", "--out_dir=fresh"]
RESUME = ["--init_from=resume", "--out_dir=out"]
TEMP_NAME = re.compile(r"^\.(ckpt\.pt|loss\.png|train_log\.csv)\.\d+\.\w+\.tmp$")  # atomic.py's temps
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NANOGPT_INPUT_FILE")}
    env["PYTHONUNBUFFERED"] = "1"
    return env | extra


def run_script(script: str, cwd: Path, args, env=None) -> subprocess.CompletedProcess:
    fixed = {"train": TRAIN, "sample": ["--device=cpu"], "bench": BENCH, "prepare": []}[script]
    cmd = [sys.executable, str(SCRIPTS[script]), *fixed, *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, env=env or clean_env())


def snapshot(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def assert_one_line_error(proc: subprocess.CompletedProcess, phrase: str):
    assert proc.returncode != 0, proc.stdout[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, f"no message on stderr; stdout:\n{proc.stdout[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert lines[-1].startswith("error: "), proc.stderr
    assert sum(line.startswith("error:") for line in lines) == 1, proc.stderr
    assert phrase in lines[-1], f"{phrase!r} not in {lines[-1]!r}"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """data/tiny (vocab 32), data/wide (vocab 64) and out/ckpt.pt of a 2-step run on data/tiny."""
    root = tmp_path_factory.mktemp("base")
    make_dataset(root)
    make_dataset(root, name="wide", vocab=64)
    run_train(root, *TRAIN, "--out_dir=out", "--max_iters=2", "--eval_interval=2")
    (root / "out" / "train_log.csv").unlink()  # so that a resumed run's log is a new file, not a change
    return root


@pytest.fixture
def work(base, tmp_path):
    folder = tmp_path / "w"
    shutil.copytree(base, folder)
    return folder


# ---------------------------------------------------------------------------- the table of bad inputs


def _write(rel, data):
    def setup(root: Path):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())

    return setup


def _remove(rel):
    return lambda root: (root / rel).unlink()


def _truncate(rel):
    def setup(root: Path):
        data = (root / rel).read_bytes()
        (root / rel).write_bytes(data[: len(data) // 2])

    return setup


def _model_only(rel):
    """The checkpoint as a model-only file: its weights and model_args, no training state."""

    def setup(root: Path):
        ckpt = torch.load(root / rel, weights_only=True)
        torch.save({"model": ckpt["model"], "model_args": ckpt["model_args"]}, root / rel)

    return setup


_GARBAGE = bytes(random.Random(0).randrange(256) for _ in range(4096))

# (id, script, args, setup, phrase in the message, extra env)
CASES = [
    ("unknown-key", "train", ["--learning_rat=1"], None, "unknown config key 'learning_rat': did you mean", None),
    ("wrong-type", "train", ["--batch_size=2.5"], None, "batch_size expects int, got 2.5 (float)", None),
    ("config-missing", "train", ["nope_config.py"], None, "config file nope_config.py not found", None),
    (
        "config-syntax",
        "train",
        ["bad_config.py"],
        _write("bad_config.py", "n_layer = (\n"),
        "syntax error in config file bad_config.py, line 1",
        None,
    ),
    ("dataset-missing", "train", ["--dataset=nope"], None, "run python data/nope/prepare.py", None),
    ("init_from-unknown", "train", ["--init_from=gpt3"], None, "unknown init_from='gpt3'", None),
    ("grad-accum-zero", "train", ["--gradient_accumulation_steps=0"], None, "must be at least 1", None),
    (
        "scratch-over-a-checkpoint",
        "train",
        ["--out_dir=out"],
        None,
        "out already holds a checkpoint: go on from it with --init_from=resume, start this run elsewhere "
        "with --out_dir=NEW_DIR, or replace it with --overwrite=True",
        None,
    ),
    (
        "val-bin-missing",
        "train",
        [],
        _remove("data/tiny/val.bin"),
        "no val data for dataset 'tiny': data/tiny/val.bin is missing; run python data/tiny/prepare.py first",
        None,
    ),
    ("bins-too-short", "train", ["--block_size=2000"], None, "fewer than block_size + 1 = 2001", None),
    (
        "meta-vocab-too-big",
        "train",
        [*RESUME, "--dataset=wide"],
        None,
        "--dataset=wide needs a vocabulary of 64 tokens but the model has vocab_size=32",
        None,
    ),
    ("meta-corrupt", "train", [], _write("data/tiny/meta.pkl", _GARBAGE), "meta.pkl is corrupt", None),
    ("resume-no-ckpt", "train", ["--init_from=resume", "--out_dir=empty"], None, "no checkpoint at empty", None),
    ("ckpt-truncated", "train", RESUME, _truncate("out/ckpt.pt"), "is truncated or corrupt", None),
    ("ckpt-garbage", "train", RESUME, _write("out/ckpt.pt", _GARBAGE), "corrupt", None),
    (
        "ckpt-model-only",
        "train",
        RESUME,
        _model_only("out/ckpt.pt"),
        "out/ckpt.pt cannot be resumed: it holds a model but no training state (no optimizer, iter_num, best_val_loss)",
        None,
    ),
    (
        "auto-another-run",
        "train",
        ["--init_from=auto", "--out_dir=out", "--n_layer=3"],
        None,
        "out/ckpt.pt is another run's checkpoint (n_layer 2, this run's 3): go on from it with --init_from=resume",
        None,
    ),
    (
        "arch-contradicts-ckpt",
        "train",
        [*RESUME, "--n_layer=4"],
        None,
        "n_layer=4 contradicts the checkpoint, which has n_layer=2",
        None,
    ),
    ("n_embd-vs-n_head", "train", ["--n_head=3"], None, "n_embd=32 is not divisible by n_head=3", None),
    (
        "block_size-beyond-ckpt",
        "train",
        [*RESUME, "--block_size=32"],
        None,
        "block_size=32 does not fit the checkpoint, whose block_size is 16",
        None,
    ),
    (
        "grad-accum-vs-world",
        "train",
        ["--gradient_accumulation_steps=3"],
        None,
        "gradient_accumulation_steps=3 does not divide among 2 processes",
        {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"},
    ),
    ("unknown-device", "train", ["--device=tpu"], None, "unknown device 'tpu'", None),
    pytest.param(
        "no-cuda", "train", ["--device=cuda"], None, "no CUDA GPU is available", None, marks=NO_CUDA, id="no-cuda"
    ),
    ("unknown-dtype", "train", ["--dtype=float8"], None, "unknown dtype 'float8'", None),
    ("out_dir-unwritable", "train", ["--out_dir=afile/sub"], _write("afile", "x"), "cannot create out_dir", None),
    ("negative-max_iters", "train", ["--max_iters=-1"], None, "max_iters=-1 must not be negative", None),
    ("negative-weight_decay", "train", ["--weight_decay=-0.1"], None, "weight_decay=-0.1 must not be negative", None),
    ("beta2-out-of-range", "train", ["--beta2=1.0"], None, "beta2=1.0 must be in [0, 1)", None),
    ("unknown-optimizer", "train", ["--optimizer=sgd"], None, "unknown optimizer='sgd': use adamw", None),
    ("dropout-out-of-range", "train", [*RESUME, "--dropout=1.5"], None, "dropout=1.5 must be in [0, 1)", None),
    ("unknown-compile_mode", "train", ["--compile=True", "--compile_mode=fast"], None, "compile_mode='fast'", None),
    pytest.param(
        "wandb-missing",
        "train",
        ["--overwrite=True", "--out_dir=out", "--wandb_log=True"],
        None,
        "wandb_log=True needs wandb: pip install wandb",
        None,
        marks=pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed"),
        id="wandb-missing",
    ),
    (
        "loss-not-finite",
        "train",
        [*RESUME, "--learning_rate=1e30", "--decay_lr=False", "--max_iters=12"],
        None,
        "is not finite at iter",
        None,
    ),
    ("sample-no-ckpt", "sample", ["--out_dir=empty"], None, "no checkpoint at empty", None),
    ("sample-ckpt-truncated", "sample", ["--out_dir=out"], _truncate("out/ckpt.pt"), "truncated or corrupt", None),
    ("sample-prompt-chars", "sample", ["--out_dir=out", "--start=zz~"], None, "vocabulary lacks: 'z', '~'", None),
    (
        "sample-prompt-file",
        "sample",
        ["--out_dir=out", "--start=FILE:nowhere.txt"],
        None,
        "prompt file nowhere.txt not found",
        None,
    ),
    ("sample-max_new_tokens", "sample", ["--max_new_tokens=-1"], None, "max_new_tokens=-1 must be 0 or more", None),
    ("sample-unknown-key", "sample", ["--temprature=0"], None, "did you mean 'temperature'", None),
    ("bench-dataset-missing", "bench", ["--dataset=nope"], None, "run python data/nope/prepare.py", None),
    ("bench-bins-too-short", "bench", ["--dataset=tiny", "--block_size=8000"], None, "fewer than block_size", None),
    ("bench-unknown-dtype", "bench", ["--dtype=half", "--real_data=False"], None, "unknown dtype 'half'", None),
    ("bench-vocab-too-small", "bench", ["--dataset=tiny", "--vocab_size=8"], None, "holds token id 31", None),
    ("bench-compile_mode", "bench", ["--compile=True", "--compile_mode=fast"], None, "compile_mode='fast'", None),
    (
        "prepare-download-fails",
        "prepare",
        ["--out-dir", "data/shakespeare_char"],
        None,
        "could not download",
        {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""},
    ),
    (
        "prepare-input-missing",
        "prepare",
        ["nowhere.txt", "--out-dir", "data/sc"],
        None,
        "input file not found: nowhere.txt",
        None,
    ),
]


def _case_id(case):
    return case.id if hasattr(case, "id") else case[0]


@pytest.mark.parametrize("name, script, args, setup, phrase, env", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_is_one_clear_line_and_harmless(work, name, script, args, setup, phrase, env):
    if setup is not None:
        setup(work)
    before = snapshot(work)
    proc = run_script(script, work, args, env=clean_env(**(env or {})))
    assert_one_line_error(proc, phrase)
    after = snapshot(work)
    changed = [p for p in before if after.get(p) != before[p]]
    assert not changed, f"modified or deleted: {changed}"
    if script == "prepare":  # nothing half-written is left behind
        assert not [p for p in after if p not in before], sorted(set(after) - set(before))


def test_gpu_out_of_memory_is_one_line_with_the_fix():
    """torch's OutOfMemoryError as a script meets it (the real one: test_gpu.py); any other exception
    keeps its traceback."""
    message = "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.19 GiB"
    code = "import torch\nfrom nanogpt_plus import errors\nerrors.report_user_errors()\n"
    code += "raise torch.OutOfMemoryError({!r})"
    proc = subprocess.run([sys.executable, "-c", code.format(message)], cwd=REPO, capture_output=True, text=True)
    assert_one_line_error(
        proc, "out of GPU memory (CUDA out of memory. Tried to allocate 20.00 GiB): lower --batch_size"
    )
    other = subprocess.run([sys.executable, "-c", code.replace("torch.OutOfMemoryError", "RuntimeError").format("x")],
                           cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert other.returncode != 0 and "Traceback" in other.stderr


def test_bf16_on_a_gpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match=r"does not support bfloat16: use --dtype=float16"):
        plan.check_device("cuda", "bfloat16")
    assert plan.check_device("cuda", "float16") == "cuda"
    assert plan.check_device("cpu", "bfloat16") == "cpu"  # the CPU emulates it
    assert plan.default_dtype("cuda") == "float16"


def test_matching_architecture_keys_still_resume(work):
    """Classic configs restate the architecture on resume: equal values are fine."""
    proc = run_script("train", work, [*RESUME, "--n_layer=2", "--n_head=2", "--n_embd=32", "--max_iters=3"])
    assert proc.returncode == 0, proc.stderr
    assert checkpoint.load(str(work / "out" / "ckpt.pt"))["iter_num"] == 3


# ---------------------------------------------------------------------------- SIGKILL at random moments


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


def small_files_in_child(limit):
    """A preexec_fn: no file may grow past limit bytes in the child, as on a full disk (a write fails)."""
    import resource

    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_files


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


def test_a_full_disk_when_taking_the_lock_is_one_line_and_leaves_no_lock_file(tmp_path):
    """The lock file takes no data block until the pid is written into it: on a full disk (a file-size
    limit of 0 here) that write fails, which is one line, and the empty lock file goes again."""
    code = (
        "import resource, signal, sys\nfrom nanogpt_plus import checkpoint, errors\n"
        "errors.report_user_errors()\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))\n"  # (after the imports, which write caches)
        "checkpoint.lock_out_dir(sys.argv[1])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60,
        env=clean_env(),
    )  # fmt: skip
    lock = tmp_path / ".train.lock"
    assert_one_line_error(proc, f"cannot write {lock} (File too large): free some disk space or choose another")
    assert os.listdir(tmp_path) == []


def test_resuming_a_finished_run_says_how_to_go_on(work):
    """out/ holds a run that reached its max_iters=2: resumed as it was, it has nothing to train and says so."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS["train"]), *RESUME], cwd=work, capture_output=True, text=True, timeout=120,
        env=clean_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "note: the run in out is at iter 2, past max_iters=2: raise --max_iters to go on" in proc.stdout


LOG_ROWS = ["0,3.4,3.5,0.001,,", "0,3.45,,0.001,5.00,", "", "1,3.3,,0.002,5.10,", "2,3.2,3.3,0.003,,",
            "2,3.1,,0.003,5.00,", "3,3"]  # fmt: skip


@pytest.mark.parametrize("resumed_at, kept", [(None, [0, 1, 3, 4, 5]), (2, [0, 1, 3, 4])])
def test_a_log_with_blank_and_cut_short_lines_is_read_as_its_rows_with_a_note(tmp_path, resumed_at, kept):
    """A killed run may leave half a line (here at the end, no newline) and an edited log a blank one:
    a run that appends to it or resumes (and drops the rows after its checkpoint) keeps the whole rows,
    with the column this version adds (hellaswag) empty."""
    path = tmp_path / "train_log.csv"
    path.write_text("\n".join(["iter,loss,val_loss,lr,time_ms,mfu", *LOG_ROWS]))
    said = []
    training_log.TrainingLog(str(tmp_path), truncate=False, say=said.append, resumed_at=resumed_at)
    want = ["iter,loss,val_loss,lr,time_ms,mfu,hellaswag"] + [LOG_ROWS[i] + "," for i in kept]
    assert path.read_text().splitlines() == want
    assert said == [f"note: dropped 2 blank or cut-short line(s) of {path}"]
    assert training_log.read_log(str(path))[1] == [(0, 3.4, 3.5)] + [(2, 3.2, 3.3)]


def test_a_log_that_is_not_ours_is_refused_and_kept(tmp_path):
    path = tmp_path / "train_log.csv"
    path.write_text("step,trainloss\n0,3.4\n")
    with pytest.raises(UserError) as e:
        training_log.TrainingLog(str(tmp_path), truncate=False, say=print, resumed_at=0)
    assert str(e.value) == (
        f"{path} is not a train.py log (its first line is 'step,trainloss'): move it away, or choose another --out_dir"
    )
    assert path.read_text() == "step,trainloss\n0,3.4\n"


def test_full_disk_while_logging_is_one_line_and_leaves_whole_rows(tmp_path):
    """train_log.csv on a full disk: the row that does not fit is one `error:` line, and the file is cut
    back to the rows before it, each whole (a resumed run then reads every row)."""
    code = (
        "import sys\nfrom nanogpt_plus import errors, training_log\n"
        "errors.report_user_errors()\n"
        "log = training_log.TrainingLog(sys.argv[1], truncate=False, say=print)\n"
        "for i in range(100):\n"
        "    log.step_row(i, 1.5 + i / 1000, 1e-3, 0.0123, -1)\n"
    )
    limit = 1000
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env=clean_env(), preexec_fn=small_files_in_child(limit))  # fmt: skip
    assert_one_line_error(proc, f"cannot write {tmp_path}/train_log.csv (File too large): free some disk space")
    text = (tmp_path / "train_log.csv").read_text()
    lines = text.splitlines()
    assert text.endswith("\n") and len(text) > limit - 60
    assert lines[0] == "iter,loss,val_loss,lr,time_ms,mfu,hellaswag"
    assert lines[1:] == [f"{i},{1.5 + i / 1000},,0.001,12.30,," for i in range(len(lines) - 1)]


def _bad(key, value, sub=None):
    def mutate(ckpt):
        (ckpt[sub] if sub else ckpt)[key] = value

    return mutate


@pytest.mark.parametrize(
    "mutate, resume, problem",
    [
        (_bad("model", torch.zeros(3)), False, "its 'model' is a Tensor, not a state dict of tensors"),
        (_bad("n_layer", "2", "model_args"), False, "its model_args['n_layer'] is '2', not int"),
        (_bad("bias", 0, "model_args"), False, "its model_args['bias'] is 0, not bool"),
        (_bad("dropout", "0.1", "model_args"), False, "its model_args['dropout'] is '0.1', not float or int"),
        (_bad("model_args", [2, 2]), False, "its 'model_args' is a list, not a dict"),
        (_bad("config", "tiny"), False, "its 'config' is a str, not a dict"),
        (_bad("iter_num", "2"), True, "its iter_num is '2', not a count of iterations"),
        (_bad("best_val_loss", "low"), True, "its best_val_loss is a str, not a number"),
        (_bad("optimizer", torch.zeros(2)), True, "its 'optimizer' is not an optimizer state dict (a Tensor)"),
        (_bad("scaler", [1]), True, "its 'scaler' is a list, not a gradient scaler's state dict"),
    ],
)
def test_checkpoint_of_plain_values_in_the_wrong_places_is_one_line(base, tmp_path, mutate, resume, problem):
    """checkpoint.load (train.py's resume, sample.py, export_hf.py) checks each entry's type: a crafted or
    foreign checkpoint is one line, not a TypeError deep in the model. The training state only to resume."""
    ckpt = torch.load(base / "out" / "ckpt.pt", weights_only=True)
    mutate(ckpt)
    torch.save(ckpt, tmp_path / "ckpt.pt")
    with pytest.raises(UserError) as e:
        checkpoint.load(str(tmp_path / "ckpt.pt"), resume=resume)
    assert str(e.value) == f"{tmp_path / 'ckpt.pt'} cannot be {'resumed' if resume else 'loaded'}: {problem}"
    if resume:  # sample.py and export_hf.py need no training state
        checkpoint.model_from(checkpoint.load(str(tmp_path / "ckpt.pt")))


def test_a_held_out_dir_is_refused_with_its_holders_pid_and_a_dead_runs_lock_is_not(tmp_path):
    """The lock on out_dir: a second holder is refused (the same process taking it again opens it anew, as
    another run would); a lock file a killed run left (its pid dead, no lock held) is no obstacle."""
    checkpoint.lock_out_dir(str(tmp_path))
    lock = tmp_path / checkpoint.LOCK_NAME
    assert lock.read_text() == f"{os.getpid()}\n"
    with pytest.raises(UserError) as e:
        checkpoint.lock_out_dir(str(tmp_path))
    assert str(e.value) == (
        f"{tmp_path} is in use by another training run (pid {os.getpid()}): let it finish or stop it, "
        "or choose another --out_dir"
    )
    checkpoint.unlock(str(lock))
    assert not lock.exists()  # a run that ends takes its lock file with it
    lock.write_text("999999999\n")  # as a SIGKILL leaves it
    checkpoint.lock_out_dir(str(tmp_path))
    assert lock.read_text() == f"{os.getpid()}\n"
    checkpoint.unlock(str(lock))


def test_checkpoint_writer_saves_the_state_of_the_moment_it_was_asked(tmp_path):
    weights = torch.arange(6.0)
    writer = checkpoint.BackgroundWriter()
    writer.submit({"model": {"w": weights}, "iter_num": 3}, str(tmp_path / "ckpt.pt"), label=3)
    weights.add_(100.0)  # training goes on while the file is written
    writer.wait()
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert torch.equal(saved["model"]["w"], torch.arange(6.0)) and saved["iter_num"] == 3
    writer.submit({"x": lambda: 1}, str(tmp_path / "ckpt.pt"), label=5)  # torch.save cannot write a function
    with pytest.raises(UserError) as e:
        writer.wait()
    assert str(e.value) == (
        f"could not write the checkpoint {tmp_path / 'ckpt.pt'} (torch.save failed); the file there, if any, is "
        "the checkpoint of iter 3: free some disk space or choose another --out_dir"
    )
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True)["iter_num"] == 3
    writer.submit({"x": 1}, str(tmp_path / "missing" / "ckpt.pt"))
    with pytest.raises(UserError, match=r"\(No such file or directory\); the file there, if any, is the checkpoint of"):
        writer.wait()
    writer.wait()  # the failure is reported once


def test_checkpoint_writer_keeps_tied_weights_one_tensor_and_state_dict_metadata(tmp_path):
    """The snapshot stores wte and lm_head (one Parameter) once, as torch.save of the live state
    dict would: the file is no bigger than a direct save."""
    from model import GPT, GPTConfig

    model = GPT(GPTConfig(block_size=8, vocab_size=512, n_layer=1, n_head=1, n_embd=32))
    state = model.state_dict()
    writer = checkpoint.BackgroundWriter()
    writer.submit({"model": state}, str(tmp_path / "bg.pt"))
    writer.wait()
    torch.save({"model": state}, tmp_path / "direct.pt")
    saved = torch.load(tmp_path / "bg.pt", weights_only=True)["model"]
    assert saved["lm_head.weight"].data_ptr() == saved["transformer.wte.weight"].data_ptr()
    assert type(saved) is type(state) and saved._metadata == state._metadata
    assert (tmp_path / "bg.pt").stat().st_size <= (tmp_path / "direct.pt").stat().st_size * 1.01


def test_checkpoint_writer_poll_reports_a_failed_write_without_a_new_save(tmp_path):
    writer = checkpoint.BackgroundWriter()
    writer.submit({"x": 1}, str(tmp_path / "missing" / "ckpt.pt"))
    writer.thread.join()  # the write has failed by now
    with pytest.raises(UserError, match="could not write the checkpoint"):
        writer.poll()


def test_stale_temp_cleanup_spares_live_processes_and_other_files(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    names = [f".ckpt.pt.{dead.pid}.abc_12.tmp", f".ckpt.pt.{os.getppid()}.xyz.tmp", "ckpt.pt", ".ckpt.abc.tmp", "x.tmp"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    assert atomic.remove_stale_temps(str(tmp_path)) == [names[0]]
    assert sorted(os.listdir(tmp_path)) == sorted(names[1:])


# ---------------------------------------------------------------------------- untrusted and classic files


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("script", ["sample", "train"])
def test_crafted_checkpoint_is_refused(work, script):
    marker = work / "payload_ran"
    ckpt = torch.load(work / "out" / "ckpt.pt", weights_only=True)
    ckpt["config"]["evil"] = _Payload(marker)
    torch.save(ckpt, work / "out" / "ckpt.pt")
    before = snapshot(work)
    args = ["--out_dir=out"] if script == "sample" else RESUME
    proc = run_script(script, work, args)
    assert_one_line_error(proc, "refusing to load out/ckpt.pt")
    assert not marker.exists()
    assert snapshot(work) == before


def test_crafted_meta_pkl_is_refused_by_train(work):
    marker = work / "payload_ran"
    with open(work / "data" / "tiny" / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 32, "x": _Payload(marker)}, f)
    proc = run_script("train", work, ["--max_iters=1"])
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
    proc = run_script("train", work, [*RESUME, "--max_iters=4"])
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


# ---------------------------------------------------------------------------- the other scripts, run in this process


def run_in_process(script: Path, cwd: Path, args, monkeypatch) -> str | None:
    """`python script *args` in cwd, run in this process (no interpreter start-up): the message of the
    one-line error it ends with (a UserError, or the exit of a script that prints its own), None if none."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [str(script), *map(str, args)])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # report_user_errors() replaces it
    monkeypatch.setattr(sys, "path", [str(script.parent), *sys.path])
    with torch.random.fork_rng(devices=[]):  # the scripts seed torch
        try:
            runpy.run_path(str(script), run_name="__main__")
        except UserError as e:
            return str(e)
        except SystemExit as e:
            if e.code in (None, 0):
                return None
            assert isinstance(e.code, str) and e.code.startswith("error: "), e.code
            return e.code.removeprefix("error: ")
    return None


def assert_one_line(message: str | None, *phrases: str):
    """An `error:` line that says what and how, briefly: one line, under 200 characters, no library text."""
    assert message is not None, "no error"
    assert "\n" not in message and len(f"error: {message}") < 200, message
    assert "Traceback" not in message and "Errno" not in message, message
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in {message!r}"


@pytest.fixture
def run_dirs(tmp_path):
    """runs/a/ckpt.pt (a character-level model on data/toy) beside runs/b, a folder of the user's."""
    from test_export_hf import save_checkpoint, small_model, write_meta

    write_meta(tmp_path)
    save_checkpoint(tmp_path, small_model(), dataset="toy")
    (tmp_path / "runs").mkdir()
    (tmp_path / "out").rename(tmp_path / "runs" / "a")
    (tmp_path / "runs" / "b").mkdir()
    (tmp_path / "runs" / "b" / "notes.txt").write_text("mine")
    return tmp_path


@pytest.mark.parametrize(
    "hf_dir, phrase",
    [
        ("runs", "hf_dir runs holds out_dir runs/a, the run being exported"),
        ("runs/a", "hf_dir runs/a is out_dir runs/a"),
        (".", "hf_dir . holds out_dir runs/a"),
        ("runs/b", "runs/b holds 'notes.txt' and is no earlier export"),
        ("data", "data holds 'toy' and is no earlier export"),
    ],
)
def test_export_overwrite_replaces_only_an_earlier_export(run_dirs, monkeypatch, hf_dir, phrase):
    before = snapshot(run_dirs)
    args = ["--out_dir=runs/a", f"--hf_dir={hf_dir}", "--overwrite=True"]
    assert_one_line(run_in_process(REPO / "export_hf.py", run_dirs, args, monkeypatch), phrase)
    assert snapshot(run_dirs) == before


def test_export_overwrite_replaces_an_earlier_export(run_dirs, monkeypatch, capsys):
    def export(*args):
        return run_in_process(REPO / "export_hf.py", run_dirs, ["--out_dir=runs/a", *args], monkeypatch)

    assert export("--hf_dir=hf") is None
    (run_dirs / "hf" / "config.json").write_text("{}")
    assert_one_line(export("--hf_dir=hf"), "hf holds an export: choose another --hf_dir, or replace it with")
    assert export("--hf_dir=hf", "--overwrite=True") is None
    assert sorted(os.listdir(run_dirs / "hf")) == ["chars.json", "config.json", "model.safetensors"]
    assert (run_dirs / "hf" / "config.json").read_text() != "{}"
    (run_dirs / "hf" / "README.md").write_text("my notes on this model")  # no longer an export alone
    assert_one_line(export("--hf_dir=hf", "--overwrite=True"), "hf holds 'README.md' and is no earlier export")
    os.symlink("hf", run_dirs / "link")
    assert_one_line(export("--hf_dir=link", "--overwrite=True"), "hf_dir link is a symbolic link")


def main_error(main, argv, capsys) -> str | None:
    """A script's main(argv), in this process: the message of the one `error:` line it exits with."""
    capsys.readouterr()
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        err = e.code if isinstance(e.code, str) else capsys.readouterr().err  # sys.exit(text) prints it later
        assert e.code != 0 and err.startswith("error: ") and err.rstrip("\n").count("\n") == 0, err
        return err.removeprefix("error: ").rstrip("\n")
    return None


@contextlib.contextmanager
def small_files(limit: int):
    """No file may grow past `limit` bytes: a write beyond it fails with EFBIG (File too large), the
    system's own refusal at the very write, as a full disk's ENOSPC would be."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write fails instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def small_text(path: Path) -> Path:
    path.write_text("To be, or not to be, that is the question.\n" * 300)  # 13 KB
    return path


@pytest.mark.parametrize("writer", ["export", "plot", "prepare_text", "shakespeare_char"])
def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(run_dirs, monkeypatch, capsys, writer):
    """Every writer, when the system refuses a write midway: one line naming the file, the reason and
    the fix; what was there before is as it was and no temp file is left."""
    from test_data import load_script
    from test_prepare_text import pt

    monkeypatch.chdir(run_dirs)
    training_log.TrainingLog("runs/a", truncate=True, say=print).row(iter=0, loss=3.5, lr=1e-3, time_ms=12.0)
    assert plot.main(["runs/a", "--out", "old.png"]) is None  # (matplotlib's caches are warm now)
    small_text(run_dirs / "in.txt")
    before = snapshot(run_dirs)
    with small_files(4096):
        if writer == "export":
            message = run_in_process(REPO / "export_hf.py", run_dirs, ["--out_dir=runs/a", "--hf_dir=hf"], monkeypatch)
            target = "hf"
        elif writer == "plot":
            message, target = main_error(plot.main, ["runs/a", "--out", "old.png"], capsys), "old.png"
        elif writer == "prepare_text":
            message = main_error(pt.main, ["in.txt", "--out_dir", "new", "--block_size=8"], capsys)
            target = "new"
        else:
            main = load_script("shakespeare_char").main
            message, target = main_error(main, ["in.txt", "--out-dir", "sc"], capsys), "sc/input.txt"
    assert_one_line(message, f"{target} (File too large): free some disk space or choose another --")
    after = snapshot(run_dirs)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))
    assert not [p for p in run_dirs.rglob(".*")], "a temp file was left"


LOG_HEADER = "iter,loss,val_loss,lr,time_ms,mfu\n"


def test_read_log_leaves_out_a_cut_short_last_row_and_blank_rows(tmp_path):
    """A run killed while writing a row leaves it without its newline: the rows before it are the log."""
    log = tmp_path / "train_log.csv"
    log.write_text(LOG_HEADER + "0,4.5,4.6,0.001,,\n\n1,4.25,,0.001,12.5,\n,,,,,\n2,4.0,,0.0")
    assert training_log.read_log(str(log)) == ([(1, 4.25)], [(0, 4.5, 4.6)], [])
    log.write_text(LOG_HEADER + "2")  # the first row, cut short
    assert training_log.read_log(str(log)) == ([], [], [])


@pytest.mark.parametrize(
    "log, phrase",
    [
        (LOG_HEADER + "0,4.5,,0.001,12.0,\n1\n", "line 3 of out/train_log.csv ('1') is no row of iter,loss"),
        (LOG_HEADER + "0,4.513,4.6,,0.001,12.0,\n", "line 2 of out/train_log.csv ('0,4.513,"),  # a row on a cut one
        ("x" * 200_000 + "\n", "out/train_log.csv is not a training log"),
        (b"\xff\xfe\x00", "out/train_log.csv is not a training log: it is not text"),
    ],
)
def test_plot_py_says_which_row_of_a_log_is_broken(tmp_path, monkeypatch, capsys, log, phrase):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "train_log.csv").write_bytes(log if isinstance(log, bytes) else log.encode())
    assert_one_line(main_error(plot.main, ["out"], capsys), phrase)
    assert os.listdir(tmp_path) == ["out"]


def test_plot_py_out_a_folder_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_log.csv").write_text(LOG_HEADER + "0,4.5,,0.001,12.0,\n")
    (tmp_path / "pictures").mkdir()
    message = main_error(plot.main, ["run", "--out", "pictures"], capsys)
    assert_one_line(message, "--out pictures is a folder: give the picture's file name, e.g. --out pictures/loss.png")
    assert sorted(os.listdir(tmp_path)) == ["pictures", "run"] and os.listdir(tmp_path / "pictures") == []


@pytest.mark.parametrize("script", ["prepare_text", "shakespeare_char"])
def test_prepare_on_a_read_only_filesystem_says_so(tmp_path, monkeypatch, capsys, script):
    """The folder cannot be made: the message is that, not what the cleanup met afterwards."""
    from test_data import load_script
    from test_prepare_text import pt

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.chdir(tmp_path)
    small_text(tmp_path / "in.txt")
    monkeypatch.setattr(Path, "mkdir", read_only)
    if script == "prepare_text":
        message = main_error(pt.main, ["in.txt", "--out_dir", "ro/new", "--block_size=8"], capsys)
    else:
        message = main_error(load_script("shakespeare_char").main, ["in.txt", "--out-dir", "ro/new"], capsys)
    assert_one_line(message, "cannot write ro/new (Read-only file system): choose another --out-dir")
    assert os.listdir(tmp_path) == ["in.txt"]


@pytest.mark.parametrize("in_memory_bytes", [1 << 30, 0])  # read whole, memory-mapped
def test_a_bin_of_an_odd_size_is_one_line(tmp_path, monkeypatch, in_memory_bytes):
    """A .bin cut in the middle of a token: read on, it would shift every token after the cut."""
    make_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    with open("data/tiny/train.bin", "ab") as f:
        f.write(b"\x07")
    with pytest.raises(UserError) as e:
        dataloader.Batches("tiny", 16, 4, "cpu", in_memory_bytes=in_memory_bytes)
    assert_one_line(str(e.value), "data/tiny/train.bin is 12,001 bytes, not a whole number of 2-byte token ids")


def write_toy_meta(root: Path, itos, vocab_size=None):
    meta = {"vocab_size": len(itos) if vocab_size is None else vocab_size, "itos": dict(enumerate(itos))}
    meta["stoi"] = {ch: i for i, ch in enumerate(itos)}
    with open(root / "data" / "toy" / "meta.pkl", "wb") as f:
        pickle.dump(meta, f)


@pytest.mark.parametrize(
    "seed, ok", [(2**64, False), (-(2**63) - 1, False), (2**64 - 1, True), (-1, True), (1337, True)]
)
def test_sample_seed_beyond_64_bits_is_one_line(run_dirs, monkeypatch, capsys, seed, ok):
    args = ["--out_dir=runs/a", "--device=cpu", f"--seed={seed}", "--start=0", "--num_samples=1", "--max_new_tokens=2"]
    message = run_in_process(REPO / "sample.py", run_dirs, args, monkeypatch)
    if ok:
        assert message is None
    else:
        assert_one_line(message, f"seed={seed} is out of range: give an integer from 0 to 2**64 - 1")


@pytest.mark.parametrize("script", ["sample.py", "export_hf.py"])
@pytest.mark.parametrize(
    "itos, phrase",
    [  # the model has 40 tokens
        ([chr(65 + i) for i in range(18)], "data/toy/meta.pkl has 18 characters but the model has 40 tokens"),
        ([bytes([48 + i]) for i in range(40)], "data/toy/meta.pkl is not a character vocabulary"),
    ],
    ids=["prepared-again", "bytes"],
)
def test_a_meta_pkl_that_does_not_fit_the_model_is_one_line(run_dirs, monkeypatch, script, itos, phrase):
    write_toy_meta(run_dirs, itos)
    before = snapshot(run_dirs)
    args = ["--out_dir=runs/a", "--device=cpu"] if script == "sample.py" else ["--out_dir=runs/a"]
    assert_one_line(run_in_process(REPO / script, run_dirs, args, monkeypatch), phrase)
    assert snapshot(run_dirs) == before


@pytest.fixture
def exported(run_dirs, monkeypatch):
    """run_dirs with hf/, the export of runs/a."""
    assert run_in_process(REPO / "export_hf.py", run_dirs, ["--out_dir=runs/a", "--hf_dir=hf"], monkeypatch) is None
    return run_dirs


def _cut(rel, keep):
    def setup(root: Path):
        data = (root / rel).read_bytes()
        (root / rel).write_bytes(data[: keep(len(data))])

    return setup


@pytest.mark.parametrize(
    "folder, setup, phrase",
    [
        ("hf", _cut("hf/model.safetensors", lambda n: n // 2), "hf/model.safetensors is cut short or corrupt"),
        ("hf", _cut("hf/model.safetensors", lambda n: 100), "hf/model.safetensors is cut short or corrupt"),
        ("hf", _cut("hf/config.json", lambda n: n // 2), "hf/config.json is cut short or corrupt"),
        ("runs/a", None, "runs/a holds a training checkpoint, not a Hugging Face model: use --init_from=resume"),
        ("runs/b", None, "runs/b has no config.json: give a Hugging Face model folder"),
    ],
)
def test_a_broken_model_folder_is_one_line(exported, monkeypatch, folder, setup, phrase):
    pytest.importorskip("transformers")
    from nanogpt_plus import huggingface

    monkeypatch.chdir(exported)
    if setup:
        setup(exported)
    with pytest.raises(UserError) as e:
        huggingface.load_pretrained(folder)
    assert_one_line(str(e.value), phrase)


def test_offline_errors_name_what_failed_without_the_library_text(tmp_path, monkeypatch):
    """Hugging Face's probe, the shakespeare download and tiktoken's files, with the network gone."""
    pytest.importorskip("transformers")
    import huggingface_hub
    import tiktoken.registry
    from test_data import load_script

    from nanogpt_plus import huggingface

    monkeypatch.chdir(tmp_path)
    for name in ("HF_HUB_OFFLINE", "NANOGPT_INPUT_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # as in a fresh process
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)
    with pytest.raises(UserError) as e:
        huggingface.load_pretrained("gpt2")
    assert_one_line(str(e.value), "http://127.0.0.1:9 cannot be reached (ConnectionError); connect once")
    with pytest.raises(UserError) as e:
        tokenizer.gpt2_tokenizer_files()
    assert_one_line(str(e.value), "cannot get GPT-2's tokenizer files (ProxyError): tiktoken downloads them once")
    with pytest.raises(UserError) as e:
        tokenizer.gpt2_encoding()
    assert_one_line(str(e.value), "cannot load tiktoken's gpt2 encoding (ProxyError): it is downloaded once")
    prepare = load_script("shakespeare_char")
    with pytest.raises(UserError) as e:
        prepare.prepare(out_dir=tmp_path / "sc")
    assert_one_line(str(e.value), "could not download input.txt from raw.githubusercontent.com (ProxyError)")
    from test_sample import MODEL_ARGS, build_model, write_checkpoint

    args = dict(MODEL_ARGS, vocab_size=50304, n_embd=16, n_layer=1)  # on GPT-2's tokens
    write_checkpoint(tmp_path, build_model(args), args, dataset="openwebtext")
    message = run_in_process(REPO / "sample.py", tmp_path, ["--device=cpu"], monkeypatch)
    assert_one_line(message, "cannot load tiktoken's gpt2 encoding (ProxyError): it is downloaded once")


@pytest.mark.parametrize(
    "args, phrase",
    [
        (["--repeats=0"], "repeats=0 must be at least 1"),
        (["--batch_size=0"], "batch_size=0 must be at least 1"),
        (["--num_steps=0"], "num_steps=0 must be at least 1"),
        (["--burn_in=-1"], "burn_in=-1 must not be negative"),
        (["--n_head=3"], "n_embd=16 is not divisible by n_head=3"),
        (["--block_size=0"], "block_size=0 must be at least 1"),
        (["--seed=-18446744073709551616"], "seed=-18446744073709551616 is out of range"),
        (["--burn_in=0"], None),  # (BENCH's own: a timed step without a burn-in)
    ],
)
def test_bench_keys_are_checked_before_it_runs(tmp_path, monkeypatch, capsys, args, phrase):
    message = run_in_process(REPO / "bench.py", tmp_path, [*BENCH, "--real_data=False", *args], monkeypatch)
    if phrase is None:
        assert message is None and "time per iteration" in capsys.readouterr().out
    else:
        assert_one_line(message, phrase)


def test_cpu_out_of_memory_is_one_line(monkeypatch, capsys):
    from nanogpt_plus import errors

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    errors.report_user_errors()
    try:
        torch.empty(2**62, dtype=torch.uint8)  # torch's CPU allocator refuses at once: nothing is allocated
    except RuntimeError as e:
        sys.excepthook(type(e), e, e.__traceback__)
    sys.excepthook(MemoryError, MemoryError(), None)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "error: out of memory (tried to allocate 4294967296.00 GiB): lower --batch_size or --block_size, or use a "
        "smaller model",
        "error: out of memory: lower --batch_size or --block_size, or use a smaller model",
    ]


def test_a_closed_pipe_on_stdout_ends_quietly():
    """`python sample.py | head`: the reader has gone, and so does the script, without a traceback."""
    code = "from nanogpt_plus import errors; errors.report_user_errors()\nwhile True: print('x' * 1000)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()
    assert proc.wait(timeout=30) != 0 and proc.stderr.read() == b""


def test_a_hub_dataset_offline_is_one_line_within_seconds(monkeypatch):
    """Not cached and the hub unreachable: the datasets library is not even asked (it retries for 30 s)."""
    import huggingface_hub
    from test_data import load_script

    class NoDatasets:
        def load_dataset(self, *args, **kwargs):
            raise AssertionError("load_dataset was called")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)
    start = time.monotonic()
    with pytest.raises(UserError) as e:
        load_script("openwebtext").pu.from_hub(NoDatasets(), "openwebtext", num_proc=1)
    assert time.monotonic() - start < 10
    assert_one_line(str(e.value), "could not get openwebtext: http://127.0.0.1:9 cannot be reached (ConnectionError)")


def test_prepare_text_refuses_an_output_folder_inside_its_input(tmp_path, monkeypatch, capsys):
    """It would read the bins of its last run (and everything else there) as text."""
    from test_prepare_text import pt

    monkeypatch.chdir(tmp_path)
    (tmp_path / "texts").mkdir()
    small_text(tmp_path / "texts" / "a.txt")
    message = main_error(pt.main, ["texts", "--out_dir", "texts/data", "--block_size=8"], capsys)
    assert_one_line(message, "the output folder texts/data is inside the input folder texts: write it elsewhere")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "texts"]


def test_shakespeare_input_a_folder_is_one_line(tmp_path, monkeypatch, capsys):
    from test_data import load_script

    monkeypatch.chdir(tmp_path)
    (tmp_path / "texts").mkdir()
    message = main_error(load_script("shakespeare_char").main, ["texts", "--out-dir", "sc"], capsys)
    assert_one_line(message, "texts is a folder: pass a text file (data/prepare_text.py takes a folder of them)")


def test_token_bins_shard_docs_below_one_is_one_line(tmp_path):
    from test_data import load_script

    with pytest.raises(UserError) as e:
        load_script("openwebtext").token_bins.write_bins({}, tmp_path / "out", {}, shard_docs=0)
    assert_one_line(str(e.value), "--shard-docs=0 must be at least 1")
    assert not (tmp_path / "out").exists()


def test_export_of_out_dir_dot_goes_beside_the_folder(run_dirs, monkeypatch, capsys):
    shutil.copytree(run_dirs / "data", run_dirs / "runs" / "a" / "data")  # its meta.pkl, found from runs/a
    assert run_in_process(REPO / "export_hf.py", run_dirs / "runs" / "a", ["--out_dir=."], monkeypatch) is None
    assert (run_dirs / "runs" / "a-hf" / "model.safetensors").is_file()
    assert sorted(os.listdir(run_dirs / "runs" / "a")) == ["ckpt.pt", "data"]


def test_plot_py_out_not_a_png_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "train_log.csv").write_text(LOG_HEADER)
    message = main_error(plot.main, ["run", "--out", "loss.pdf"], capsys)
    assert_one_line(message, "--out loss.pdf: plot.py draws PNG pictures; give a file name ending in .png")
    assert sorted(os.listdir(tmp_path)) == ["run"]


@pytest.mark.parametrize("source", ["checkpoint", "hf"])
def test_sample_a_character_model_without_its_meta_pkl_is_one_line(exported, monkeypatch, source):
    """GPT-2's tokenizer on a 40-token model would print other text than the model means."""
    shutil.rmtree(exported / "data")
    args = ["--out_dir=runs/a"] if source == "checkpoint" else ["--init_from=hf"]
    message = run_in_process(REPO / "sample.py", exported, [*args, "--device=cpu", "--start=!"], monkeypatch)
    missing = "no data/toy/meta.pkl was found" if source == "checkpoint" else "no meta.pkl says what they are"
    assert_one_line(message, f"the model has 40 tokens, too few for GPT-2's, and {missing}")


def test_export_of_a_character_model_whose_checkpoint_names_no_dataset(run_dirs, monkeypatch):
    ckpt = torch.load(run_dirs / "runs" / "a" / "ckpt.pt", weights_only=True)
    del ckpt["config"]["dataset"]
    torch.save(ckpt, run_dirs / "runs" / "a" / "ckpt.pt")
    message = run_in_process(REPO / "export_hf.py", run_dirs, ["--out_dir=runs/a"], monkeypatch)
    assert_one_line(message, "the model has 40 tokens, too few for GPT-2's, and its checkpoint names no dataset")
