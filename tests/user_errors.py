"""What the tests of one-line errors share (test_*_errors.py, test_checkpoint.py, test_errors.py, ...): running a
script as a user would, in a subprocess or in this process, and the checks that it ended with one `error:` line
and left what was there as it was. The fixtures of a small run (base, work, run_dirs, exported) are in conftest.py."""

import atexit
import contextlib
import hashlib
import io
import os
import random
import re
import runpy
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from test_train import TINY

from nanogpt_plus import checkpoint, errors
from nanogpt_plus.errors import UserError

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = {
    "train": REPO / "train.py",
    "sample": REPO / "sample.py",
    "bench": REPO / "bench.py",
    "prepare": REPO / "data" / "shakespeare_char" / "prepare.py",
}
BENCH_ARGS = [
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


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NANOGPT_INPUT_FILE")}
    env["PYTHONUNBUFFERED"] = "1"
    return env | extra


FIXED_ARGS = {"train": TRAIN, "sample": ["--device=cpu"], "bench": BENCH_ARGS, "prepare": []}


def run_script(script: str, cwd: Path, args, env=None) -> subprocess.CompletedProcess:
    """`python script *args` in cwd (env: variables set besides clean_env's), in a new process: for what only a
    process shows (its end at a signal, what it leaves at exit, its environment from the start). Else run_here
    does the same at a fraction of the cost."""
    cmd = [sys.executable, str(SCRIPTS[script]), *FIXED_ARGS[script], *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, env=clean_env(**(env or {})))


def cpu_and_eager(args) -> bool:
    """Whether these flags (the last of each key counts) run on the CPU without torch.compile: what run_here is
    for. A GPU's or a compiler's state (CUDA graphs, memory, compiled code and its recompile limits) would carry
    over from one run to the next in one process, where a user's runs each start afresh."""
    last = dict(a[2:].split("=", 1) for a in map(str, args) if a.startswith("--") and "=" in a)
    return last.get("device") == "cpu" and last.get("compile", "False") == "False"


def run_here(script: str | Path, cwd: Path, args, env=None, fixed=True) -> subprocess.CompletedProcess:
    """run_script(script, cwd, args), in this process: no interpreter and torch to start. What the process would
    print, its exit status and what it leaves at exit are the same: the script runs as __main__ with the same
    argv, working directory and environment; what it prints is caught; an exception it ends with is written by
    the sys.excepthook it set (its one `error:` line) with status 1; at its end the threads it started are waited
    for, and its atexit functions run (the lock on out_dir released, a new empty out_dir removed, ...), as
    the interpreter would at exit. What it changes in this process (signal handlers, torch's seed and TF32
    switches, the hook) is put back. script: a name in SCRIPTS (its FIXED_ARGS first, unless fixed=False) or a path."""
    path = Path(SCRIPTS.get(script, script))
    argv = [str(path), *map(str, FIXED_ARGS.get(script, []) if fixed else []), *map(str, args)]
    out, err, at_exit = io.StringIO(), io.StringIO(), []
    threads = set(threading.enumerate())
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    sigint, sigterm = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.MonkeyPatch.context() as mp, torch.random.fork_rng(devices=[]):
        for name in [k for k in os.environ if k not in clean_env()]:
            mp.delenv(name)
        for name, value in (env or {}).items():
            mp.setenv(name, value)
        mp.chdir(cwd)
        mp.setattr(sys, "argv", argv)
        mp.setattr(sys, "path", [str(path.parent), *sys.path])
        mp.setattr(sys, "excepthook", sys.excepthook)  # report_user_errors() replaces it
        mp.setattr(atexit, "register", lambda f, *a, **k: at_exit.append((f, a, k)) or f)
        mp.setattr(checkpoint, "_made_folders", [])  # (this run's, for its unlock_all at exit)
        mp.setattr(errors, "interrupt_note", None)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    runpy.run_path(argv[0], run_name="__main__")
                    code = 0
                except SystemExit as e:
                    code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
                    if isinstance(e.code, str):
                        print(e.code, file=sys.stderr)
                except Exception as e:
                    sys.excepthook(type(e), e, e.__traceback__)
                    code = 1
                finally:  # the interpreter's exit: non-daemon threads are joined, then the atexit functions run
                    for thread in set(threading.enumerate()) - threads:
                        if not thread.daemon:
                            thread.join()
                    for f, a, k in reversed(at_exit):
                        f(*a, **k)
                    checkpoint.unlock_all()
        finally:
            signal.signal(signal.SIGINT, sigint)
            signal.signal(signal.SIGTERM, sigterm)
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


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


def assert_one_line(message: str | None, *phrases: str):
    """An `error:` line that says what and how, briefly: one line, under 200 characters, no library text."""
    assert message is not None, "no error"
    assert "\n" not in message and len(f"error: {message}") < 200, message
    assert "Traceback" not in message and "Errno" not in message, message
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in {message!r}"


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


def small_files_in_child(limit):
    """A preexec_fn: no file may grow past limit bytes in the child, as on a full disk (a write fails)."""
    import resource

    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_files


def small_text(path: Path) -> Path:
    path.write_text("To be, or not to be, that is the question.\n" * 300)  # 13 KB
    return path


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------------------- a table of bad inputs, per script


def write_file(rel, data):
    def setup(root: Path):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())

    return setup


def remove_file(rel):
    return lambda root: (root / rel).unlink()


def truncate_file(rel):
    def setup(root: Path):
        data = (root / rel).read_bytes()
        (root / rel).write_bytes(data[: len(data) // 2])

    return setup


def model_only(rel):
    """The checkpoint as a model-only file: its weights and model_args, no training state."""

    def setup(root: Path):
        ckpt = torch.load(root / rel, weights_only=True)
        torch.save({"model": ckpt["model"], "model_args": ckpt["model_args"]}, root / rel)

    return setup


GARBAGE = bytes(random.Random(0).randrange(256) for _ in range(4096))


def case_id(case):
    return case.id if hasattr(case, "id") else case[0]


def check_bad_input(work, script, args, setup, phrase, env, run=run_here):
    """`python script *args` in work, set up first: one clear `error:` line, and nothing modified or deleted
    (nor, by a prepare script, anything half-written left behind)."""
    if setup is not None:
        setup(work)
    before = snapshot(work)
    proc = run(script, work, args, env=env)
    assert_one_line_error(proc, phrase)
    after = snapshot(work)
    changed = [p for p in before if after.get(p) != before[p]]
    assert not changed, f"modified or deleted: {changed}"
    if script == "prepare":  # nothing half-written is left behind
        assert not [p for p in after if p not in before], sorted(set(after) - set(before))
