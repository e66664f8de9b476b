"""Checkpoints (nanogpt_plus/checkpoint.py, atomic.py): each entry's type checked on loading, crafted ones refused
without running their code, the out_dir lock, the background writer, and the temp files of killed runs."""

import errno
import os
import random
import signal
import subprocess
import sys
import threading

import pytest
import torch
from user_errors import (
    REPO,
    RESUME,
    Payload,
    assert_one_line_error,
    clean_env,
    run_here,
    snapshot,
)

from nanogpt_plus import atomic, checkpoint
from nanogpt_plus.errors import UserError


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


def test_a_checkpoint_in_torchs_legacy_format_loads(base, tmp_path):
    """torch.save's format before PyTorch 1.6 (not a zip, which torch cannot memory-map) loads as the same dict."""
    ckpt = torch.load(base / "out" / "ckpt.pt", weights_only=True)
    torch.save(ckpt, tmp_path / "ckpt.pt", _use_new_zipfile_serialization=False)
    assert not (tmp_path / "ckpt.pt").read_bytes().startswith(b"PK")
    loaded = checkpoint.load(str(tmp_path / "ckpt.pt"), resume=True)
    assert loaded.keys() == ckpt.keys() and loaded["iter_num"] == ckpt["iter_num"]
    assert all(torch.equal(loaded["model"][k], v) for k, v in ckpt["model"].items())


@pytest.mark.parametrize("script", ["sample", "train"])
def test_crafted_checkpoint_is_refused(work, script):
    marker = work / "payload_ran"
    ckpt = torch.load(work / "out" / "ckpt.pt", weights_only=True)
    ckpt["config"]["evil"] = Payload(marker)
    torch.save(ckpt, work / "out" / "ckpt.pt")
    before = snapshot(work)
    args = ["--out_dir=out"] if script == "sample" else RESUME
    proc = run_here(script, work, args)
    assert_one_line_error(proc, "refusing to load out/ckpt.pt")
    assert not marker.exists()
    assert snapshot(work) == before


def test_a_checkpoint_of_random_bytes_is_corrupt_without_torchs_advice(work):
    (work / "out" / "ckpt.pt").write_bytes(random.Random(0).randbytes(5000))
    proc = run_here("sample", work, ["--out_dir=out"])
    assert_one_line_error(proc, "checkpoint out/ckpt.pt is corrupt (")
    assert "weights_only" not in proc.stderr and "Re-running" not in proc.stderr  # (torch's advice: load it unsafely)


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


def test_a_full_disk_under_torch_save_is_said_as_such(tmp_path, monkeypatch):
    """torch.save over a full disk raises a RuntimeError of its own ('unexpected pos'), the OSError its context."""

    def save_on_a_full_disk(obj, f):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")  # noqa: B904

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    writer = checkpoint.BackgroundWriter()
    writer.submit({"x": 1}, str(tmp_path / "ckpt.pt"), label=1)
    with pytest.raises(UserError, match=r"ckpt.pt \(No space left on device\); the file there, if any, is a complete"):
        writer.wait()
    assert os.listdir(tmp_path) == []


def test_ctrl_c_while_the_writer_starts_its_thread_arrives_after_and_the_write_can_be_waited_for(tmp_path, monkeypatch):
    """A Ctrl-C inside Thread.start() (train.py's test sends them while checkpoints are saved) is raised
    once the writer holds its started thread: wait() then finishes the write, never 'cannot join thread
    before it is started'."""

    class CtrlC(Exception):
        pass

    def ctrl_c(signum, frame):
        raise CtrlC

    previous = signal.signal(signal.SIGINT, ctrl_c)
    start = threading.Thread.start

    def start_after_a_ctrl_c(thread):
        signal.raise_signal(signal.SIGINT)  # the handler runs at once, here, unless held back
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_after_a_ctrl_c)
    writer = checkpoint.BackgroundWriter()
    try:
        with pytest.raises(CtrlC):
            writer.submit({"iter_num": 7}, str(tmp_path / "ckpt.pt"), label=7)
    finally:
        signal.signal(signal.SIGINT, previous)
    writer.wait()
    assert torch.load(tmp_path / "ckpt.pt", weights_only=True) == {"iter_num": 7} and writer.written == 7


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
