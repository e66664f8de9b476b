"""Tests for the data/<name>/prepare.py scripts: counts, bin contents, input handling, errors."""

import importlib.util
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import tiktoken

from nanogpt_plus.tokenizer import CharTokenizer

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
ENV = "NANOGPT_INPUT_FILE"
EOT = 50256


def load_script(name: str):
    """Import data/<name>/prepare.py under a unique module name (all three files are prepare.py)."""
    spec = importlib.util.spec_from_file_location(f"prepare_{name}", DATA / name / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


char = load_script("shakespeare_char")
bpe = load_script("shakespeare")
owt = load_script("openwebtext")
SCRIPTS = {"shakespeare_char": char, "shakespeare": bpe}


@pytest.fixture(autouse=True)
def no_input_env(monkeypatch):
    # A developer's own NANOGPT_INPUT_FILE must not leak into the tests.
    monkeypatch.delenv(ENV, raising=False)


def read_bin(path: Path) -> np.ndarray:
    return np.memmap(path, dtype=np.uint16, mode="r")


def run_script(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    cmd = [sys.executable, str(DATA / name / "prepare.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def text(shakespeare_input) -> str:
    return shakespeare_input.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def char_run(shakespeare_input, tmp_path_factory):
    out = tmp_path_factory.mktemp("shakespeare_char")
    return out, char.prepare(out_dir=out, input_path=shakespeare_input)


@pytest.fixture(scope="module")
def bpe_run(shakespeare_input, tmp_path_factory):
    out = tmp_path_factory.mktemp("shakespeare")
    return out, bpe.prepare(out_dir=out, input_path=shakespeare_input)


# ---------------------------------------------------------------- shakespeare_char


def test_char_counts(char_run):
    out, counts = char_run
    assert counts == {"chars": 1_115_394, "vocab_size": 65, "train": 1_003_854, "val": 111_540}
    assert (out / "train.bin").stat().st_size == 2 * 1_003_854
    assert (out / "val.bin").stat().st_size == 2 * 111_540


def test_char_meta(char_run, text):
    out, _ = char_run
    with open(out / "meta.pkl", "rb") as f:
        meta = pickle.load(f)
    assert type(meta) is dict and set(meta) == {"vocab_size", "itos", "stoi"}
    assert meta["vocab_size"] == 65 == len(meta["itos"]) == len(meta["stoi"])
    assert [meta["itos"][i] for i in range(65)] == sorted(set(text))
    assert all(type(k) is int for k in meta["itos"])
    assert {ch: i for i, ch in meta["itos"].items()} == meta["stoi"]


def test_char_bins_match_reference(char_run, text):
    out, _ = char_run
    stoi = {ch: i for i, ch in enumerate(sorted(set(text)))}
    n = int(len(text) * 0.9)
    train, val = read_bin(out / "train.bin"), read_bin(out / "val.bin")
    assert train.dtype == np.uint16
    assert train.tolist() == [stoi[c] for c in text[:n]]
    assert val.tolist() == [stoi[c] for c in text[n:]]


def test_char_round_trip(char_run, text):
    out, _ = char_run
    with open(out / "meta.pkl", "rb") as f:
        meta = pickle.load(f)
    sample = text[:5000]
    ids = [meta["stoi"][c] for c in sample]
    assert "".join(meta["itos"][i] for i in ids) == sample
    chars = CharTokenizer.load(out / "meta.pkl", len(meta["itos"]))
    assert chars.encode(sample) == ids and chars.decode(ids) == sample
    # The two bins together decode back to the whole text.
    whole = np.concatenate([read_bin(out / "train.bin"), read_bin(out / "val.bin")])
    assert chars.decode(whole) == text


# ---------------------------------------------------------------- shakespeare (GPT-2 BPE)


def test_bpe_counts(bpe_run):
    out, counts = bpe_run
    assert counts == {"chars": 1_115_394, "train": 301_966, "val": 36_059}
    assert (out / "train.bin").stat().st_size == 2 * 301_966
    assert not (out / "meta.pkl").exists()  # GPT-2 vocab needs no meta.pkl, as in nanoGPT


def test_bpe_bins_match_reference_and_round_trip(bpe_run, text):
    out, _ = bpe_run
    enc = tiktoken.get_encoding("gpt2")
    n = int(len(text) * 0.9)
    train, val = read_bin(out / "train.bin"), read_bin(out / "val.bin")
    assert train.dtype == np.uint16
    assert train.tolist() == enc.encode_ordinary(text[:n])
    assert val.tolist() == enc.encode_ordinary(text[n:])
    assert enc.decode(train.tolist()) + enc.decode(val.tolist()) == text


def test_bpe_treats_special_token_text_as_ordinary():
    enc = tiktoken.get_encoding("gpt2")
    ids = bpe.encode("a <|endoftext|> b", enc)
    assert EOT not in ids and enc.decode(ids) == "a <|endoftext|> b"


# ---------------------------------------------------------------- input handling


@pytest.fixture
def small_input(tmp_path) -> Path:
    path = tmp_path / "src" / "small.txt"
    path.parent.mkdir()
    path.write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 20, encoding="utf-8")
    return path


def test_cli_path_is_copied_beside_outputs(shakespeare_input, tmp_path):
    out = tmp_path / "out"
    # Run from an unrelated cwd: the script must find its helper on its own.
    result = run_script("shakespeare_char", str(shakespeare_input), "--out-dir", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1,003,854" in result.stdout and "111,540" in result.stdout
    assert (out / "input.txt").read_bytes() == shakespeare_input.read_bytes()
    assert sorted(os.listdir(out)) == ["input.txt", "meta.pkl", "train.bin", "val.bin"]  # no temp files


@pytest.mark.parametrize("name", SCRIPTS)
def test_env_var_input_is_used(name, small_input, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, str(small_input))
    counts = SCRIPTS[name].prepare(out_dir=tmp_path / "out")
    assert counts["chars"] == len(small_input.read_text(encoding="utf-8"))
    assert (tmp_path / "out" / "input.txt").read_bytes() == small_input.read_bytes()


def test_existing_input_txt_wins(small_input, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "input.txt").write_text("abcabc", encoding="utf-8")
    counts = char.prepare(out_dir=out, input_path=small_input)
    assert counts == {"chars": 6, "vocab_size": 3, "train": 5, "val": 1}
    assert "ignoring" in capsys.readouterr().err  # the ignored path is reported, not silently dropped


def test_missing_local_path_is_one_line_error(tmp_path):
    out = tmp_path / "out"
    result = run_script("shakespeare", str(tmp_path / "nope.txt"), "--out-dir", str(out), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope.txt" in lines[0]
    assert not out.exists() or os.listdir(out) == []


def http_404(url, **kwargs):
    response = requests.Response()
    response.status_code = 404
    response.reason = "Not Found"
    response.url = url
    response._content = b"404: Not Found"
    return response


def connection_error(url, **kwargs):
    raise requests.ConnectionError("Failed to resolve 'raw.githubusercontent.com'\n(name resolution)")


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.parametrize("fake_get", [connection_error, http_404])
def test_download_failure_is_one_line_and_leaves_nothing(name, fake_get, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(requests, "get", fake_get)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as excinfo:
        SCRIPTS[name].main(["--out-dir", str(out)])
    assert excinfo.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    why = "(ConnectionError)" if fake_get is connection_error else "(HTTP 404)"  # not the library's text
    assert f"could not download input.txt from raw.githubusercontent.com {why}" in err and len(err) < 200
    assert ENV in err and f"data/{name}/prepare.py path/to/input.txt" in err
    assert not out.exists()  # neither input.txt nor a temp file, nor the folder made for them


def test_download_success_writes_input(tmp_path, monkeypatch):
    calls = []

    def fake_get(url, **kwargs):
        calls.append((url, kwargs))
        response = http_404(url)
        response.status_code, response.reason, response._content = 200, "OK", b"hello there\n" * 10
        return response

    monkeypatch.setattr(requests, "get", fake_get)
    counts = char.prepare(out_dir=tmp_path)
    assert calls[0][0] == URL and calls[0][1].get("timeout")
    assert (tmp_path / "input.txt").read_bytes() == b"hello there\n" * 10
    assert counts["train"] == 108 and counts["val"] == 12


def test_ids_beyond_uint16_are_refused(tmp_path):
    from nanogpt_plus.prepare_utils import UserError, write_tokens

    with open(tmp_path / "x.bin", "wb") as f, pytest.raises(UserError, match="uint16"):
        write_tokens([1, 65536], f)
    assert (tmp_path / "x.bin").read_bytes() == b""


# ---------------------------------------------------------------- openwebtext


DOCS = [
    "Hello world!",
    "",
    "a document that mentions <|endoftext|> as plain text",
    "Ünïcödé and emoji 🙂",
    "  leading spaces\nand newlines\n\n",
    "short",
    "The quick brown fox jumps over the lazy dog.",
    "last one",
]


def expected_stream(texts) -> list[int]:
    enc = tiktoken.get_encoding("gpt2")
    return [t for text in texts for t in enc.encode_ordinary(text) + [EOT]]


def test_owt_default_split_is_classic():
    datasets = pytest.importorskip("datasets")
    assert (owt.TEST_SIZE, owt.SEED, owt.HF_NAME) == (0.0005, 2357, "openwebtext")
    raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": [str(i) for i in range(10_000)]})})
    split = owt.split_train_val(raw)
    assert set(split) == {"train", "val"}
    ref = raw["train"].train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    assert split["val"]["text"] == ref["test"]["text"] and len(split["val"]) == 5
    assert split["train"]["text"] == ref["train"]["text"]


def test_owt_writes_exact_stream_in_split_order(tmp_path):
    datasets = pytest.importorskip("datasets")
    splits = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": DOCS[:5], "url": ["u"] * 5}),
            "val": datasets.Dataset.from_dict({"text": DOCS[5:], "url": ["u"] * 3}),
        }
    )
    # What a worker makes of a shard: each document's ids and an end-of-text, nothing else.
    assert owt.token_bins.tokenize_texts(DOCS[:5]).tolist() == expected_stream(DOCS[:5])
    # Shards of 2 documents over 5 and 3 exercise the uneven-shard path.
    counts = owt.token_bins.write_bins(splits, tmp_path, recipe={}, num_proc=1, shard_docs=2)
    for split, texts in (("train", DOCS[:5]), ("val", DOCS[5:])):
        expected = expected_stream(texts)
        assert counts[split] == len(expected)
        assert (tmp_path / f"{split}.bin").stat().st_size == 2 * len(expected)
        assert read_bin(tmp_path / f"{split}.bin").tolist() == expected
    assert sorted(os.listdir(tmp_path)) == ["train.bin", "val.bin"]


def test_owt_prepare_end_to_end(tmp_path):
    datasets = pytest.importorskip("datasets")
    raw = datasets.Dataset.from_dict({"text": DOCS})
    counts = owt.prepare(out_dir=tmp_path, dataset=raw, num_proc=1, test_size=0.25)
    ref = raw.train_test_split(test_size=0.25, seed=2357, shuffle=True)
    for split, ref_split in (("train", "train"), ("val", "test")):
        expected = expected_stream(ref[ref_split]["text"])
        assert counts[split] == len(expected) > 0
        assert read_bin(tmp_path / f"{split}.bin").tolist() == expected
    # Every document lands in exactly one split, each followed by one end-of-text token.
    assert counts["train"] + counts["val"] == len(expected_stream(DOCS))


def test_owt_without_datasets_is_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(SystemExit) as excinfo:
        owt.main(["--out-dir", str(tmp_path)])
    assert excinfo.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "pip install" in err
