"""The data/ scripts (data/<name>/prepare.py, data/prepare_text.py, nanogpt_plus/token_bins.py): every mistake
and every failure of the network or the disk is one `error:` line, and nothing half-written is left."""

import errno
import os
import time
from pathlib import Path

import pytest
from user_errors import (
    assert_one_line,
    case_id,
    check_bad_input,
    main_error,
    small_text,
)

from nanogpt_plus.errors import UserError

# (id, args, setup, phrase in the message, extra env)
CASES = [
    (
        "prepare-download-fails",
        ["--out-dir", "data/shakespeare_char"],
        None,
        "could not download",
        {"HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "NO_PROXY": "", "no_proxy": ""},
    ),
    (
        "prepare-input-missing",
        ["nowhere.txt", "--out-dir", "data/sc"],
        None,
        "input file not found: nowhere.txt",
        None,
    ),
    # checked before it is copied: a copy left as data/sc/input.txt would win over every later path
    (
        "prepare-input-not-utf8",
        ["latin1.txt", "--out-dir", "data/sc"],
        lambda w: (w / "latin1.txt").write_bytes(b"caf\xe9 au lait\n" * 100),
        "latin1.txt is not UTF-8 text",
        None,
    ),
    (
        "prepare-input-empty",
        ["empty.txt", "--out-dir", "data/sc"],
        lambda w: (w / "empty.txt").write_bytes(b""),
        "empty.txt is empty",
        None,
    ),
]


@pytest.mark.parametrize("name, args, setup, phrase, env", CASES, ids=[case_id(c) for c in CASES])
def test_bad_input_is_one_clear_line_and_harmless(work, name, args, setup, phrase, env):
    check_bad_input(work, "prepare", args, setup, phrase, env)


@pytest.mark.parametrize("script", ["prepare_text", "shakespeare_char"])
def test_prepare_on_a_read_only_filesystem_says_so(tmp_path, monkeypatch, capsys, script):
    """The folder cannot be made: the message is that, not what the cleanup met afterwards."""
    from test_data import load_script
    from test_prepare_text import pt

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.chdir(tmp_path)
    small_text(tmp_path / "in.txt")
    monkeypatch.setattr(Path, "mkdir", read_only)  # (prepare_text.py makes its folder with pathlib)
    monkeypatch.setattr(os, "makedirs", read_only)  # (the other scripts with os.makedirs)
    if script == "prepare_text":
        message = main_error(pt.main, ["in.txt", "--out_dir", "ro/new", "--block_size=8"], capsys)
    else:
        message = main_error(load_script("shakespeare_char").main, ["in.txt", "--out-dir", "ro/new"], capsys)
    assert_one_line(message, "cannot write ro/new (Read-only file system): choose another --out-dir")
    assert os.listdir(tmp_path) == ["in.txt"]


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


def test_shakespeare_goes_on_with_a_good_input_after_a_bad_one(tmp_path, monkeypatch, capsys):
    """A file that is not UTF-8 is refused, and the next run with a good file prepares that one."""
    from test_data import load_script

    monkeypatch.chdir(tmp_path)
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait\n" * 100)
    small_text(tmp_path / "good.txt")
    script = load_script("shakespeare_char")
    message = main_error(script.main, ["latin1.txt", "--out-dir", "sc"], capsys)
    assert_one_line(message, "latin1.txt is not UTF-8 text")
    assert main_error(script.main, ["good.txt", "--out-dir", "sc"], capsys) is None
    assert (tmp_path / "sc" / "input.txt").read_bytes() == (tmp_path / "good.txt").read_bytes()


# ---------------------------------------------------------------- a dataset's files are replaced together


def contents(folder: Path) -> dict:
    return {p.name: p.read_bytes() if p.is_file() else "folder" for p in sorted(folder.iterdir())}


def test_dataset_files_are_replaced_all_or_none(tmp_path, monkeypatch):
    """A failure inside the block keeps every old file (and leaves no temp); an interrupt that lands while the new
    files are renamed into place is held until the last one is in, and the file to remove gone."""
    import signal

    from nanogpt_plus.prepare_utils import dataset_files

    old = {"meta.pkl": b"old meta", "train.bin": b"old train", "val.bin": b"old val"}
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(KeyboardInterrupt), dataset_files(tmp_path, ("train.bin", "val.bin", "meta.pkl")) as f:
        f["train.bin"].write(b"new train")
        raise KeyboardInterrupt
    assert contents(tmp_path) == old

    replace = os.replace

    def replace_then_interrupt(src, dst):
        replace(src, dst)
        signal.raise_signal(signal.SIGINT)  # Ctrl-C right after the first rename

    monkeypatch.setattr(os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt), dataset_files(tmp_path, ("train.bin", "val.bin"), ("meta.pkl",)) as f:
        f["train.bin"].write(b"new train")
        f["val.bin"].write(b"new val")
    assert contents(tmp_path) == {"train.bin": b"new train", "val.bin": b"new val"}


def test_dataset_files_on_a_full_disk_or_with_a_folder_in_the_way_leave_no_temp(tmp_path):
    """A full disk refusing what is flushed at the end (closing flushes again, and is refused again), or a folder
    where a file goes: the old files stay as they were, and no temp is left to fill the disk."""
    from user_errors import small_files

    from nanogpt_plus.prepare_utils import dataset_files

    old = {"train.bin": b"old train", "val.bin": b"old val"}
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    bins = ("train.bin", "val.bin")
    with pytest.raises(UserError, match="File too large"), small_files(4096), dataset_files(tmp_path, bins) as f:
        f["train.bin"].write(b"x" * 1000)  # buffered: refused only when flushed, past the limit below
        f["val.bin"].write(b"y" * 5000)
    assert contents(tmp_path) == old
    (tmp_path / "meta.pkl").mkdir()
    with pytest.raises(UserError, match="Is a directory"), dataset_files(tmp_path, (*bins, "meta.pkl")) as f:
        f["train.bin"].write(b"new train")
    assert contents(tmp_path) == old | {"meta.pkl": "folder"}


def test_an_interrupted_shakespeare_char_prepare_keeps_the_old_dataset(tmp_path, monkeypatch, capsys):
    """Ctrl-C after train.bin of a new text is written: train.bin, val.bin and meta.pkl stay those of the old one."""
    from test_data import load_script

    from nanogpt_plus import prepare_utils

    monkeypatch.chdir(tmp_path)
    script = load_script("shakespeare_char")
    small_text(tmp_path / "old.txt")
    (tmp_path / "new.txt").write_text("abcdefgh " * 2000)
    assert main_error(script.main, ["old.txt", "--out-dir", "sc"], capsys) is None
    (tmp_path / "sc" / "input.txt").unlink()  # (else it wins over the path given)
    before = {name: data for name, data in contents(tmp_path / "sc").items() if name != "input.txt"}
    write_tokens = prepare_utils.write_tokens
    calls = []

    def interrupted_at_val(ids, f):
        calls.append(f)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return write_tokens(ids, f)

    monkeypatch.setattr(prepare_utils, "write_tokens", interrupted_at_val)
    with pytest.raises(SystemExit):
        script.main(["new.txt", "--out-dir", "sc"])
    assert capsys.readouterr().err.strip() == "interrupted"
    after = contents(tmp_path / "sc")
    assert after.pop("input.txt") == (tmp_path / "new.txt").read_bytes()  # the text asked for, for the next run
    assert after == before


def test_shakespeare_bpe_removes_a_character_level_meta_pkl(tmp_path, monkeypatch, capsys):
    """GPT-2 tokens written over a character-level dataset: its meta.pkl goes, or train.py would read characters."""
    from test_data import load_script

    monkeypatch.chdir(tmp_path)
    small_text(tmp_path / "text.txt")
    assert main_error(load_script("shakespeare_char").main, ["text.txt", "--out-dir", "sc"], capsys) is None
    assert main_error(load_script("shakespeare").main, ["--out-dir", "sc"], capsys) is None
    assert sorted(os.listdir(tmp_path / "sc")) == ["input.txt", "train.bin", "val.bin"]


def test_a_failed_shakespeare_prepare_leaves_no_empty_folder(tmp_path, monkeypatch, capsys):
    from test_data import load_script

    monkeypatch.chdir(tmp_path)
    message = main_error(load_script("shakespeare_char").main, ["nowhere.txt", "--out-dir", "new/sc"], capsys)
    assert_one_line(message, "input file not found")
    assert os.listdir(tmp_path) == ["new"]  # (a parent made on the way stays: only the folder asked for goes)
    assert os.listdir(tmp_path / "new") == []


def test_prepare_text_refuses_a_folder_with_a_prepare_py_unless_asked(tmp_path, monkeypatch, capsys):
    """Its prepare.py would write over the user's dataset (data/shakespeare_char as --name, say)."""
    from test_prepare_text import pt as prepare_text

    monkeypatch.chdir(tmp_path)
    small_text(tmp_path / "text.txt")
    (tmp_path / "builtin").mkdir()
    (tmp_path / "builtin" / "prepare.py").write_text("# a built-in dataset's script\n")
    message = main_error(prepare_text.main, ["text.txt", "--out_dir", "builtin"], capsys)
    assert_one_line(message, "builtin has a prepare.py of its own", "another --name")
    assert os.listdir(tmp_path / "builtin") == ["prepare.py"]
    assert main_error(prepare_text.main, ["text.txt", "--out_dir", "builtin", "--overwrite"], capsys) is None
    assert sorted(os.listdir(tmp_path / "builtin")) == ["meta.pkl", "prepare.py", "train.bin", "val.bin"]
