"""data/prepare_text.py: the same bytes as the shakespeare scripts at any chunk size, folders in sorted order,
bounded memory, one-line errors that leave nothing behind, and a dataset that train.py and sample.py use as is."""

import importlib.util
import os
import pickle
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tiktoken
from user_errors import run_here

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
SCRIPT = DATA / "prepare_text.py"
# A 2-layer model that trains in moments on a CPU (as in test_train.py).
TINY = ["--device=cpu", "--compile=False", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16"]
TINY += ["--batch_size=4", "--gradient_accumulation_steps=1", "--eval_iters=2", "--eval_interval=10", "--max_iters=10"]
TINY += ["--wandb_log=False"]


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pt = load(SCRIPT, "prepare_text")
classic_char = load(DATA / "shakespeare_char" / "prepare.py", "reference_shakespeare_char")
classic_bpe = load(DATA / "shakespeare" / "prepare.py", "reference_shakespeare")
CLASSIC = {"char": classic_char, "gpt2": classic_bpe}


def run(*args, cwd=REPO, script=SCRIPT) -> subprocess.CompletedProcess:
    """`python script *args` in cwd, run in this process (user_errors.run_here: the same output and status)."""
    return run_here(script, cwd, args)


def run_in_a_new_process(*args, cwd=REPO, script=SCRIPT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=cwd, capture_output=True, text=True)


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def classic_outputs(tokenizer: str, text_file: Path, tmp: Path) -> dict[str, bytes]:
    """What data/shakespeare_char/prepare.py or data/shakespeare/prepare.py writes for this text."""
    out = tmp / f"classic_{tokenizer}"
    CLASSIC[tokenizer].prepare(out_dir=out, input_path=text_file)
    (out / "input.txt").unlink()  # the classic scripts keep a copy of their input; ours reads it in place
    return outputs(out)


@pytest.fixture(scope="module")
def classic(shakespeare_input, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("classic")
    return {tok: classic_outputs(tok, shakespeare_input, tmp) for tok in CLASSIC}


# ---------------------------------------------------------------- the same bytes as the classic scripts


# Tiny Shakespeare is ASCII, so bytes are characters: 0.001 MB reads 1,000 characters a time (the train/val split
# point 1,003,854 falls inside a chunk); 0.501927 MB puts it exactly on the end of the second chunk.
@pytest.mark.parametrize("chunk_mb", [1.0, 0.001, 0.501927])
@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_same_bytes_as_the_shakespeare_scripts(classic, shakespeare_input, tmp_path, tokenizer, chunk_mb):
    counts = pt.prepare(shakespeare_input, tmp_path / "out", tokenizer=tokenizer, chunk_mb=chunk_mb)
    assert outputs(tmp_path / "out") == classic[tokenizer]
    expected = {"char": (1_003_854, 111_540), "gpt2": (301_966, 36_059)}[tokenizer]
    assert (counts["chars"], counts["train"], counts["val"]) == (1_115_394, *expected)


def tricky_text(n: int, seed: int) -> str:
    """Whitespace runs, "\\r\\n" and lone "\\r", contractions, digits, multi-byte characters and a special token."""
    parts = ["a", "Bo", " ", "  ", "\n", "\n\n", "\r\n", "\r", "\t", " \n", "'s", "'ll", "42", ".", "!?", "é", "日本"]
    parts += ["😀", "\xa0", "\u3000", "<|endoftext|>", "\x1c"]
    rng = random.Random(seed)
    return "".join(rng.choice(parts) for _ in range(n))


@pytest.mark.parametrize("chunk_mb", [0.000001, 0.000007, 0.0005])
@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_chunk_boundaries_change_nothing(tmp_path, tokenizer, chunk_mb):
    """Reads of 1 and 7 bytes cut characters, "\\r\\n" and every whitespace run; the bytes stay the classic ones."""
    text_file = tmp_path / "tricky.txt"
    text_file.write_bytes(tricky_text(int(6e6 * min(chunk_mb, 0.0003)) + 500, seed=len(tokenizer)).encode())
    pt.prepare(text_file, tmp_path / "out", tokenizer=tokenizer, block_size=8, chunk_mb=chunk_mb)
    assert outputs(tmp_path / "out") == classic_outputs(tokenizer, text_file, tmp_path)


def test_gpt2_pieces_encode_as_the_whole_text():
    """Encoding the pieces one by one equals tiktoken on text[:cut] and text[cut:] whole, for any chunk size."""
    enc = tiktoken.get_encoding("gpt2")
    for seed in range(20):
        text = tricky_text(800, seed)
        cut, size = int(len(text) * 0.9), 1 + seed * 7
        chunks = [text[i : i + size] for i in range(0, len(text), size)]
        pieces = list(pt.split_pieces(chunks, cut, pt.last_safe_cut))
        assert "".join(p for s, p in pieces if s == 0) == text[:cut]
        ids = [[i for s, p in pieces if s == split for i in enc.encode_ordinary(p)] for split in (0, 1)]
        assert ids == [enc.encode_ordinary(text[:cut]), enc.encode_ordinary(text[cut:])], seed
        assert len(pieces) > len(chunks) // 2  # cut often, not carried to the end


def test_val_fraction_moves_the_split(shakespeare_input, tmp_path):
    counts = pt.prepare(shakespeare_input, tmp_path, val_fraction=0.25)
    assert (counts["train"], counts["val"]) == (int(1_115_394 * 0.75), 1_115_394 - int(1_115_394 * 0.75))


# ---------------------------------------------------------------- folders


def test_folder_is_its_files_joined_in_sorted_order(tmp_path):
    files = {  # relative path -> text, in the order expected (sorted folder by folder, not as flat strings)
        "a/b/c.txt": "third level\r\n",
        "a/z.txt": "zed, ",
        "a-b.txt": "hyphen\n",
        "b.txt": "bee ",
        "c": "no suffix\n",
    }
    hidden = {".hidden": "#", ".git/config": "#", "a/.swp": "#", ".cache/x/y.txt": "#"}
    for rel, text in {**hidden, **dict(reversed(files.items()))}.items():
        (tmp_path / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / rel).write_bytes(text.encode() * 10)
    joined = tmp_path / "joined.txt"
    joined.write_bytes(b"".join(text.encode() * 10 for text in files.values()))
    for tokenizer in ("char", "gpt2"):
        counts = pt.prepare(tmp_path / "in", tmp_path / tokenizer, tokenizer=tokenizer, block_size=2)
        assert counts["files"] == 5
        assert outputs(tmp_path / tokenizer) == classic_outputs(tokenizer, joined, tmp_path)
    with open(tmp_path / "char" / "meta.pkl", "rb") as f:
        assert "#" not in pickle.load(f)["stoi"]


def make_code_folder(root: Path) -> dict[str, str]:
    """A folder of code and other files under root/in; returns the .py files' text by relative path, in the order
    expected (sorted folder by folder). Each file's text names the file, so its tokens show whether it was read."""
    picked = {
        "a.py": "import os\r\n",
        "pkg/__init__.py": "",
        "pkg/b.py": "def b():\n    return 'b'\n",
        "pkg/sub/c.py": "class C:  # c\n    pass\n",
        "z.py": "print('z')\n",
    }
    others = {  # another suffix, upper case, a longer name, hidden files and folders
        "README.md": "# readme\n",
        "pkg/b.pyc": "bytecode",
        "pkg/notes.txt": "notes\n",
        "setup.PY": "upper\n",
        "a.py.orig": "orig\n",
        ".hidden.py": "hidden\n",
        ".git/hook.py": "git\n",
        "pkg/.cache/d.py": "cache\n",
    }
    for rel, text in {**others, **dict(reversed(picked.items()))}.items():
        (root / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "in" / rel).write_bytes((f"# {rel}\n" + text).encode() * 5)
    return {rel: (f"# {rel}\n" + text.replace("\r\n", "\n")) * 5 for rel, text in picked.items()}


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_glob_picks_the_files_whose_name_matches_at_any_depth(tmp_path, tokenizer):
    """--glob '*.py': the .py files under the folder, recursively, sorted and joined; their tokens decode to that
    text and nothing of the other files (another suffix, upper case, hidden files and folders)."""
    picked = make_code_folder(tmp_path)
    proc = run(
        tmp_path / "in", "--out_dir", tmp_path / "out", "--glob=*.py", "--tokenizer", tokenizer, "--block_size=8"
    )
    assert proc.returncode == 0, proc.stderr
    assert f"(from {len(picked)} file(s))" in proc.stdout
    ids = [int(i) for split in ("train", "val") for i in np.fromfile(tmp_path / "out" / f"{split}.bin", np.uint16)]
    if tokenizer == "gpt2":
        text = tiktoken.get_encoding("gpt2").decode(ids)
    else:
        with open(tmp_path / "out" / "meta.pkl", "rb") as f:
            itos = pickle.load(f)["itos"]
        text = "".join(itos[i] for i in ids)
    assert text == "".join(picked.values())
    # the same bytes as a folder holding the picked files alone
    for rel, content in picked.items():
        (tmp_path / "alone" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "alone" / rel).write_text(content)
    pt.prepare(tmp_path / "alone", tmp_path / "alone_out", tokenizer=tokenizer, block_size=8)
    assert outputs(tmp_path / "out") == outputs(tmp_path / "alone_out")


@pytest.mark.parametrize(
    "source, pattern, fragments",
    [
        ("in", "*.rs", ["no file under", "has a name that matches --glob '*.rs'"]),
        ("in", ".*", ["no file under", "(hidden ones left out)"]),  # hidden files stay out
        ("in", "pkg/*.py", ["--glob matches file names, not paths", "not 'pkg/*.py'"]),
        ("in", "", ["--glob matches file names, not paths"]),
        ("in/a.py", "*.py", ["--glob picks files in a folder", "a.py is a file"]),
    ],
)
def test_glob_that_picks_nothing_is_one_line(tmp_path, source, pattern, fragments):
    make_code_folder(tmp_path)
    assert_error(run(tmp_path / source, "--out_dir", tmp_path / "out", f"--glob={pattern}"), *fragments)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- memory


PEAK_RSS = (
    "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def peak_rss_mb(*args) -> float:
    """Peak resident memory of the script in a fresh process, whose only child it is."""
    cmd = [sys.executable, "-c", PEAK_RSS, sys.executable, str(SCRIPT), *map(str, args)]
    return int(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout) / 1024  # ru_maxrss is KiB


@pytest.mark.slow
def test_memory_does_not_grow_with_the_text(shakespeare_input, tmp_path):
    text = shakespeare_input.read_text(encoding="utf-8")
    for copies, name in ((7, "small.txt"), (28, "big.txt")):  # about 8 MB and 31 MB
        (tmp_path / name).write_text("".join(f"{i}\n{text}" for i in range(copies)), encoding="utf-8")
    for tokenizer in ("char", "gpt2"):
        args = ["--tokenizer", tokenizer, "--chunk_mb=1"]
        small = peak_rss_mb(tmp_path / "small.txt", "--out_dir", tmp_path / f"s_{tokenizer}", *args)
        big = peak_rss_mb(tmp_path / "big.txt", "--out_dir", tmp_path / f"b_{tokenizer}", *args)
        # Holding the big text or its ids whole would add over 60 MB (31 MB of text; 4 bytes a character as
        # UTF-32, or 8M GPT-2 ids as Python ints).
        assert big < small + 12, (tokenizer, small, big)
        small_bin, big_bin = ((tmp_path / f"{k}_{tokenizer}" / "train.bin").stat().st_size for k in "sb")
        assert big_bin == pytest.approx(4 * small_bin, rel=0.01)  # it did encode 4 times the text


def test_progress_lines(shakespeare_input, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("nanogpt_plus.progress.EVERY_S", 0.0)  # a line after every read, not every few seconds
    pt.prepare(shakespeare_input, tmp_path, chunk_mb=0.25)
    lines = capsys.readouterr().err.splitlines()
    # In each pass: 5 reads of the 1.1 MB, then the read that finds the end.
    assert [line.split(":")[0] for line in lines] == ["reading"] * 6 + ["encoding"] * 6
    assert all(
        re.fullmatch(r"(reading|encoding): [01] of 1 MB \(\d+%\), 0:00:\d\d so far(, 0:00:\d\d left)?", line)
        for line in lines
    ), lines
    assert lines[5].startswith("reading: 1 of 1 MB (100%), ") and not lines[5].endswith("left")
    assert lines[11].startswith("encoding: 1 of 1 MB (100%), ") and not lines[11].endswith("left")


# ---------------------------------------------------------------- one-line errors that leave nothing behind


def assert_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def test_missing_input(tmp_path):
    assert_error(run(tmp_path / "nope.txt", "--out_dir", tmp_path / "out"), "input not found", "nope.txt")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("setup", ["empty file", "folder of hidden files"])
def test_empty_input(tmp_path, setup):
    source = tmp_path / "in.txt"
    if setup == "empty file":
        source.write_bytes(b"")
    else:
        source = tmp_path / "in"
        (source / ".hidden").parent.mkdir()
        (source / ".hidden").write_text("text nobody asked for\n" * 100)
    assert_error(run(source, "--out_dir", tmp_path / "out"), "no text in")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "data, offset, reason",
    [
        ("abc\nw\xf6rld\n".encode("latin-1"), 5, "invalid start byte"),  # Latin-1, not UTF-8
        (("héllo wörld\r\n" * 3 + "日本").encode() + b"\xe6\x97", 51, "unexpected end of data"),  # cut off
    ],
)
@pytest.mark.parametrize("chunk_mb", ["1", "0.000004"])
def test_not_utf8_says_file_and_byte_offset(tmp_path, data, offset, reason, chunk_mb):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("fine text\n")
    (tmp_path / "in" / "b.txt").write_bytes(data)
    proc = run(tmp_path / "in", "--out_dir", tmp_path / "out", f"--chunk_mb={chunk_mb}")
    assert_error(proc, f"{tmp_path / 'in' / 'b.txt'} is not UTF-8", reason, f"at byte offset {offset}")
    assert data[:offset].decode()  # the bytes before the offset are fine
    assert not (tmp_path / "out").exists()


def all_characters(n: int) -> str:
    """n distinct characters; surrogates are not text."""
    return "".join(chr(c) for c in range(32, 32 + n + 2048) if not 0xD800 <= c < 0xE000)[:n]


def test_vocabulary_over_uint16(tmp_path):
    (tmp_path / "in.txt").write_text(all_characters(65_537) * 2, encoding="utf-8")
    assert_error(run(tmp_path / "in.txt", "--out_dir", tmp_path / "out"), "65,537 distinct characters", "gpt2")
    assert not (tmp_path / "out").exists()


def test_vocabulary_of_exactly_uint16_fits(tmp_path):
    (tmp_path / "in.txt").write_text(all_characters(65_536) * 2, encoding="utf-8")
    counts = pt.prepare(tmp_path / "in.txt", tmp_path / "out")
    assert counts["vocab_size"] == 65_536
    ids = np.fromfile(tmp_path / "out" / "train.bin", dtype=np.uint16)
    assert ids[:65_536].tolist() == list(range(65_536))  # the characters came in code point order


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_val_split_shorter_than_a_block(tmp_path, tokenizer):
    (tmp_path / "in.txt").write_text("To be, or not to be: that is the question.\n" * 40)  # 1,760 characters
    # An existing dataset stays as it was: outputs are replaced only when all new ones are complete.
    pt.prepare(tmp_path / "in.txt", tmp_path / "out", tokenizer=tokenizer, block_size=8)
    before = outputs(tmp_path / "out")
    proc = run(tmp_path / "in.txt", "--out_dir", tmp_path / "out", "--tokenizer", tokenizer)
    assert_error(proc, "the val split would have", "--block_size + 1 = 257", "more text", "a smaller --block_size")
    assert "a bigger --val_fraction" in proc.stderr
    assert outputs(tmp_path / "out") == before
    # Each fix it names works.
    assert (
        run(tmp_path / "in.txt", "--out_dir", tmp_path / "a", "--tokenizer", tokenizer, "--block_size=16").returncode
        == 0
    )
    assert (
        run(tmp_path / "in.txt", "--out_dir", tmp_path / "b", "--tokenizer", tokenizer, "--val_fraction=0.5").returncode
        == 0
    )


def test_nothing_left_in_a_new_out_dir_on_a_late_error(tmp_path):
    (tmp_path / "in.txt").write_text("short text\n" * 200)  # val: 220 characters, a block needs 257
    assert_error(run(tmp_path / "in.txt", "--out_dir", tmp_path / "new" / "out"), "the val split")
    assert not (tmp_path / "new" / "out").exists()


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "-x", "", "my data", None])
def test_name_must_be_a_plain_folder_name(tmp_path, shakespeare_input, name):
    before = sorted(DATA.iterdir())
    proc = run(shakespeare_input, *([] if name is None else [f"--name={name}"]), cwd=tmp_path)
    assert_error(proc, "give --name a plain folder name")
    assert sorted(DATA.iterdir()) == before and not list(tmp_path.iterdir())


def test_bad_options(tmp_path, shakespeare_input):
    for bad in ("--val_fraction=1", "--block_size=0", "--chunk_mb=0"):
        assert_error(run(shakespeare_input, "--out_dir", tmp_path / "out", bad), "--val_fraction between 0 and 1")
    assert not (tmp_path / "out").exists()


def test_gpt2_run_removes_a_char_runs_meta(tmp_path, shakespeare_input):
    pt.prepare(shakespeare_input, tmp_path, tokenizer="char")
    pt.prepare(shakespeare_input, tmp_path, tokenizer="gpt2", overwrite=True)
    assert sorted(outputs(tmp_path)) == ["train.bin", "val.bin"]  # else train.py would read BPE ids as characters


@pytest.mark.parametrize(
    "first, again, held",
    [
        (("a.txt", "char"), ("b.txt", "char"), "a character-level (meta.pkl) dataset"),
        (("a.txt", "char"), ("a.txt", "gpt2"), "a character-level (meta.pkl) dataset"),
        (("a.txt", "gpt2"), ("b.txt", "gpt2"), "a GPT-2 BPE dataset"),
    ],
)
def test_another_dataset_in_the_folder_is_replaced_only_with_overwrite(tmp_path, first, again, held):
    (tmp_path / "a.txt").write_text("To be, or not to be, that is the question.\n" * 40)
    (tmp_path / "b.txt").write_text("Now is the winter of our discontent.\n" * 50)
    made = run(tmp_path / first[0], "--out_dir", tmp_path / "out", "--tokenizer", first[1], "--block_size=8")
    assert made.returncode == 0, made.stderr
    before = outputs(tmp_path / "out")
    held += f" of {len(before['train.bin']) // 2:,} train tokens"
    args = (tmp_path / again[0], "--out_dir", tmp_path / "out", "--tokenizer", again[1], "--block_size=8")
    assert_error(run(*args), f"{tmp_path / 'out'} already holds {held}", "pass --overwrite to replace it")
    assert outputs(tmp_path / "out") == before
    # --overwrite replaces it with what a fresh folder gets
    assert run(*args, "--overwrite").returncode == 0
    assert run(*args[:2], tmp_path / "fresh", *args[3:]).returncode == 0
    assert outputs(tmp_path / "out") == outputs(tmp_path / "fresh")


def test_the_same_text_prepared_again_is_no_error(tmp_path):
    (tmp_path / "a.txt").write_text("To be, or not to be, that is the question.\n" * 40)
    for _ in range(2):
        proc = run(tmp_path / "a.txt", "--out_dir", tmp_path / "out", "--block_size=8")
        assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- end to end: prepare, train, sample


def test_name_writes_beside_the_script_and_prints_counts(shakespeare_input, tmp_path):
    """A copy of data/ in tmp_path, so --name writes where it would in a clone (and, in a new process, imports
    nanogpt_plus from there)."""
    (tmp_path / "data").mkdir()
    script = tmp_path / "data" / "prepare_text.py"
    script.write_bytes(SCRIPT.read_bytes())  # it imports nanogpt_plus, installed, from any folder
    proc = run_in_a_new_process(shakespeare_input, "--name=shakes", script=script, cwd=tmp_path / "data")
    assert proc.returncode == 0, proc.stderr
    assert "length of dataset in characters: 1,115,394" in proc.stdout and "vocab size: 65" in proc.stdout
    assert "train.bin has 1,003,854 tokens" in proc.stdout and "val.bin has 111,540 tokens" in proc.stdout
    assert proc.stdout.endswith(
        "train on it: python train.py config/train_shakespeare_char.py --dataset=shakes --out_dir=out-shakes\n"
    )
    assert sorted(outputs(tmp_path / "data" / "shakes")) == ["meta.pkl", "train.bin", "val.bin"]


@pytest.mark.slow
@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_train_and_sample_on_prepared_text(shakespeare_input, tmp_path, tokenizer):
    text = shakespeare_input.read_text(encoding="utf-8")[:40_000]
    (tmp_path / "mine.txt").write_text(text, encoding="utf-8")
    prep = run(
        tmp_path / "mine.txt", "--out_dir", tmp_path / "data" / "mine", "--tokenizer", tokenizer, "--block_size=16"
    )
    assert prep.returncode == 0, prep.stderr
    train = run(*TINY, "--dataset=mine", "--out_dir=out", script=REPO / "train.py", cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-2000:]
    vocab_line = f"found vocab_size = {len(set(text))}"
    assert (vocab_line in train.stdout) == (tokenizer == "char"), train.stdout[:2000]
    sample = run(
        "--device=cpu",
        "--out_dir=out",
        "--start=ROMEO:",
        "--num_samples=1",
        "--max_new_tokens=30",
        script=REPO / "sample.py",
        cwd=tmp_path,
    )
    assert sample.returncode == 0, sample.stderr[-2000:]
    if tokenizer == "char":
        assert "Loading meta from data/mine/meta.pkl" in sample.stdout
        body = sample.stdout.split("data/mine/meta.pkl...\n", 1)[1]
        assert body.startswith("ROMEO:") and set(body) <= set(text) | {"-"}
    else:
        assert "No meta.pkl found, assuming GPT-2 encodings" in sample.stdout
        assert "\nROMEO:" in sample.stdout


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_a_prepared_dataset_has_the_permissions_of_any_new_file(tmp_path, capsys, tokenizer):
    """train.bin, val.bin and meta.pkl are written through temp files (atomic.py): they get what open() gives
    a new file here, under this umask, not a temp file's 0600."""
    (tmp_path / "in.txt").write_text("To be, or not to be, that is the question.\n" * 20)
    pt.main([str(tmp_path / "in.txt"), "--out_dir", str(tmp_path / "data"), "--tokenizer", tokenizer, "--block_size=8"])
    (tmp_path / "reference").write_text("")
    reference = (tmp_path / "reference").stat().st_mode & 0o777
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "data").iterdir()}
    assert {"train.bin", "val.bin"} <= set(modes) and modes == dict.fromkeys(modes, reference)


@pytest.mark.parametrize("script", ["prepare_text", "shakespeare_char"])
@pytest.mark.parametrize("kind", ["character device", "named pipe"])
def test_an_input_that_is_no_file_is_said_to_be_what_it_is(tmp_path, script, kind):
    """/dev/null is there, not 'not found': the message says what it is, and no file is written."""
    source = Path("/dev/null") if kind == "character device" else tmp_path / "pipe"
    if kind == "named pipe":
        os.mkfifo(source)
    path = SCRIPT if script == "prepare_text" else REPO / "data" / "shakespeare_char" / "prepare.py"
    proc = run(source, "--out_dir" if script == "prepare_text" else "--out-dir", tmp_path / "out", script=path)
    what = "text file or a folder of them" if script == "prepare_text" else "text file"
    assert_error(proc, f"error: {source} is a {kind}, not a text file: pass a UTF-8 {what}\n")
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # (shakespeare's makes the folder first)
