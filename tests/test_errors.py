"""The one-line `error:` of every script (nanogpt_plus/errors.py): out of memory, a closed pipe, a full disk
under every writer, and the network gone, each one line naming what failed without the library's text."""

import subprocess
import sys

import pytest
import torch
from user_errors import (
    REPO,
    assert_one_line,
    assert_one_line_error,
    main_error,
    run_in_process,
    small_files,
    small_text,
    snapshot,
)

import plot
from nanogpt_plus import tokenizer, training_log
from nanogpt_plus.errors import UserError


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
        "error: out of memory (tried to allocate 4294967296.00 GiB): lower --batch_size (raise "
        "--gradient_accumulation_steps to keep the tokens per iteration) or use a smaller model",
        "error: out of memory: lower --batch_size (raise --gradient_accumulation_steps to keep the tokens per "
        "iteration) or use a smaller model",
    ]


def test_out_of_memory_advice_names_the_keys_of_the_script(monkeypatch, capsys):
    """sample.py has no --batch_size: its line says what lowers its own memory."""
    from nanogpt_plus import errors

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    errors.report_user_errors(memory_advice="lower --num_samples")
    message = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB"
    sys.excepthook(torch.OutOfMemoryError, torch.OutOfMemoryError(message), None)
    assert capsys.readouterr().err == (
        "error: out of GPU memory (CUDA out of memory. Tried to allocate 2.00 GiB): lower --num_samples or use a "
        "smaller model\n"
    )
    sample_py = (REPO / "sample.py").read_text()
    assert "memory_advice=" in sample_py and "--batch_size" not in sample_py.split("memory_advice=")[1].split(")")[0]


def test_a_closed_pipe_on_stdout_ends_quietly():
    """`python sample.py | head`: the reader has gone, and so does the script, without a traceback."""
    code = "from nanogpt_plus import errors; errors.report_user_errors()\nwhile True: print('x' * 1000)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(10)
    proc.stdout.close()
    assert proc.wait(timeout=30) != 0 and proc.stderr.read() == b""


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


def test_ctrl_c_again_while_the_interrupt_note_waits_is_ignored(capsys):
    """A second Ctrl-C or SIGTERM while Ctrl-C's note waits for the checkpoint being written (people press it again
    when nothing seems to happen): said, then the note, not a traceback in the hook that leaves the checkpoint
    half-written; a third ends the process (the default action, left unsent here)."""
    import signal

    from nanogpt_plus import errors

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    hook, note = sys.excepthook, errors.interrupt_note
    try:
        errors.report_user_errors()
        signal.signal(signal.SIGTERM, errors.interrupt)  # (as train.py has it: SIGTERM stops the run as Ctrl-C)

        def note_after_a_wait():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGTERM)
            return "interrupted at iter 2; out/ckpt.pt holds iter 2"

        errors.interrupt_note = note_after_a_wait
        sys.excepthook(KeyboardInterrupt, KeyboardInterrupt(), None)
        still = "still finishing the checkpoint being written: press Ctrl-C once more to quit without it\n"
        assert capsys.readouterr().err == 2 * still + "interrupted at iter 2; out/ckpt.pt holds iter 2\n"
        assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    finally:
        sys.excepthook, errors.interrupt_note = hook, note
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
