"""The shared tokenizing pipeline (nanogpt_plus/token_bins.py) and the big-dataset scripts built on it.

Every check is against an independent reference: the GPT-2 stream computed here with tiktoken (encode_ordinary,
then 50256 after every document), or the bins of an uninterrupted run. The stand-ins are small but in the real
formats: an in-memory `datasets.Dataset`, and parquet shards written with pyarrow.
"""

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tiktoken
from test_data import load_script

from nanogpt_plus import token_bins

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
FINEWEB = DATA / "fineweb_edu" / "prepare.py"
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
EOT = 50256
ODD_DOCS = ["", "<|endoftext|> is plain text here", "Ünïcödé and emoji 🙂", "\n\n  spaces  \n"]
# Small shards make many of them, so interruptions land between and inside shards.
SHARD_DOCS = 50


owt = load_script("openwebtext")
fineweb = load_script("fineweb_edu")


def make_docs(n: int, seed: int, max_chars: int = 3000) -> list[str]:
    """n documents of varied length cut from Tiny Shakespeare, with a few awkward ones among them."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"offline data missing: {SHAKESPEARE}")
    text = SHAKESPEARE.read_text(encoding="utf-8")
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        start = rng.randrange(len(text))
        docs.append(ODD_DOCS[i // 7 % len(ODD_DOCS)] if i % 7 == 3 else text[start : start + rng.randrange(max_chars)])
    return docs


def write_parquet(docs: list[str], folder: Path, n_files: int = 3) -> Path:
    """FineWeb-Edu-like shards: a text column among others, the documents spread over several files in order."""
    folder.mkdir(parents=True)
    per_file = -(-len(docs) // n_files)
    for k in reversed(range(n_files)):  # last file first: reading must follow the names, not the creation order
        part = docs[k * per_file : (k + 1) * per_file]
        table = pa.table({"text": part, "id": [f"doc-{k}-{i}" for i in range(len(part))], "score": [3.5] * len(part)})
        pq.write_table(table, folder / f"{k:03d}_00000.parquet")
    return folder


def expected_bytes(texts) -> bytes:
    enc = tiktoken.get_encoding("gpt2")
    return np.array([t for text in texts for t in enc.encode_ordinary(text) + [EOT]], dtype=np.uint16).tobytes()


def bins(out: Path) -> dict[str, bytes]:
    return {split: (out / f"{split}.bin").read_bytes() for split in ("train", "val")}


@pytest.fixture(scope="module")
def hf_env(tmp_path_factory) -> dict:
    """Environment for prepare subprocesses: offline, with a Hugging Face cache of their own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_HOME": str(tmp_path_factory.mktemp("hf_home")), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    return env | {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}


def fineweb_cmd(parquet_dir: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(FINEWEB), "--parquet_dir", str(parquet_dir), "--out-dir", str(out)] + [
        "--num_proc=2",
        f"--shard_docs={SHARD_DOCS}",
        "--val_docs=100",
        *extra,
    ]


def run_fineweb(parquet_dir: Path, out: Path, env: dict, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(fineweb_cmd(parquet_dir, out), env=env, capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def standin(tmp_path_factory, hf_env):
    """Parquet shards of ~2.5M tokens and the bins of an uninterrupted run on them, with 2 workers."""
    root = tmp_path_factory.mktemp("standin")
    docs = make_docs(5000, seed=1)
    parquet_dir = write_parquet(docs, root / "parquet")
    result = run_fineweb(parquet_dir, root / "reference", hf_env)
    assert result.returncode == 0, result.stderr
    reference = bins(root / "reference")
    assert reference == {"val": expected_bytes(docs[:100]), "train": expected_bytes(docs[100:])}
    return parquet_dir, reference


# ---------------------------------------------------------------- the bytes, against independent computations


def test_fineweb_parquet_dir_split_and_bytes_match_independent_computation(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    docs = make_docs(300, seed=2)
    write_parquet(docs, tmp_path / "nested" / "sample" / "10BT")  # as a Hub snapshot lays them out
    counts = fineweb.prepare(tmp_path / "out", parquet_dir=tmp_path / "nested", val_docs=37, num_proc=1, shard_docs=16)
    out = bins(tmp_path / "out")
    assert out["val"] == expected_bytes(docs[:37])  # val: the first documents
    assert out["train"] == expected_bytes(docs[37:])  # train: all the others, in order
    assert counts == {"train": len(out["train"]) // 2, "val": len(out["val"]) // 2}
    assert sorted(os.listdir(tmp_path / "out")) == ["train.bin", "val.bin"]


def test_owt_with_workers_and_uneven_shards_equals_classic_algorithm(tmp_path):
    docs = make_docs(400, seed=3)
    raw = datasets.Dataset.from_dict({"text": docs, "url": ["u"] * len(docs)})
    counts = owt.prepare(out_dir=tmp_path, dataset=raw, num_proc=2, test_size=0.05, shard_docs=7)
    classic = raw.train_test_split(test_size=0.05, seed=2357, shuffle=True)
    assert bins(tmp_path) == {
        "train": expected_bytes(classic["train"]["text"]),
        "val": expected_bytes(classic["test"]["text"]),
    }
    assert counts == {split: len(data) // 2 for split, data in bins(tmp_path).items()}


# ---------------------------------------------------------------- interruptions


def progress_record(out: Path) -> dict | None:
    try:
        return json.loads((out / token_bins.PROGRESS_NAME).read_text())
    except (OSError, ValueError):
        return None


def docs_recorded(out: Path) -> int:
    record = progress_record(out)
    return sum(entry["docs"] for entry in record["splits"].values()) if record else 0


def wait_for_progress(out: Path, proc: subprocess.Popen, deadline_s: float = 60.0) -> None:
    start = time.monotonic()
    while docs_recorded(out) == 0 and proc.poll() is None and time.monotonic() - start < deadline_s:
        time.sleep(0.01)


def start_and_kill(cmd: list[str], out: Path, env: dict, delay_s: float | None) -> int:
    """Run cmd, SIGKILL it (and its workers) after delay_s, or delay_s after it first records progress when None;
    return the documents recorded as written."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    if delay_s is None:
        wait_for_progress(out, proc)
        delay_s = random.uniform(0.0, 0.3)
    time.sleep(delay_s)
    os.killpg(proc.pid, signal.SIGKILL)  # its own session: the kill takes its worker processes too
    proc.wait()
    return docs_recorded(out)


@pytest.mark.slow
def test_sigkill_at_random_points_then_rerun_gives_identical_bytes(standin, hf_env, tmp_path):
    parquet_dir, reference = standin
    out, total_docs = tmp_path / "out", 5000
    cmd = fineweb_cmd(parquet_dir, out)
    for _ in range(3):  # anywhere: start-up, loading, tokenizing, or after the end
        start_and_kill(cmd, out, hf_env, random.uniform(0.2, 5.0))
    for _ in range(5):  # then surely mid-run, so that the last run has something to go on from
        written = start_and_kill(cmd, out, hf_env, None)
        if 0 < written < total_docs:
            break
    assert 0 < written < total_docs
    result = run_fineweb(parquet_dir, out, hf_env)
    assert result.returncode == 0, result.stderr
    assert f"resuming from {written:,} of {total_docs:,} documents" in result.stdout  # not from the start
    assert bins(out) == reference
    assert sorted(os.listdir(out)) == ["train.bin", "val.bin"]  # no partial files, record or temp files left


def test_full_disk_is_one_line_error_and_rerun_completes_identically(standin, hf_env, tmp_path):
    parquet_dir, reference = standin
    out = tmp_path / "out"
    limit = len(reference["train"]) // 2

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write fails instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    failed = run_fineweb(parquet_dir, out, hf_env, preexec_fn=small_files)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr
    # (a run slower than progress.EVERY_S, on a busy machine, prints its progress lines first)
    lines = [line for line in failed.stderr.strip().splitlines() if not line.startswith("tokenizing: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "File too large" in lines[0], failed.stderr
    assert "run the same command again" in lines[0]
    assert not (out / "train.bin").exists()
    written = docs_recorded(out)
    assert written > 0  # what was written before the disk filled is kept for the rerun
    result = run_fineweb(parquet_dir, out, hf_env)
    assert result.returncode == 0, result.stderr
    assert f"resuming from {written:,} of 5,000 documents" in result.stdout
    assert bins(out) == reference
    assert sorted(os.listdir(out)) == ["train.bin", "val.bin"]


class StopAfter:
    """Stands in for append_durably, raising `exc` once `n` shards have been appended."""

    def __init__(self, n: int, exc: BaseException):
        self.n, self.exc, self.real = n, exc, token_bins.append_durably

    def __call__(self, f, ids):
        if self.n == 0:
            raise self.exc
        self.n -= 1
        self.real(f, ids)


def test_resume_cuts_unrecorded_bytes_and_refuses_other_inputs(tmp_path, monkeypatch, capsys):
    docs, other = make_docs(120, seed=4), make_docs(120, seed=5)
    splits = {
        "train": datasets.Dataset.from_dict({"text": docs[10:]}),
        "val": datasets.Dataset.from_dict({"text": docs[:10]}),
    }
    recipe = {"test": 1}
    monkeypatch.setattr(token_bins, "append_durably", StopAfter(3, KeyboardInterrupt()))
    with pytest.raises(token_bins.pu.UserError, match="interrupted: run the same command again"):
        token_bins.write_bins(splits, tmp_path, recipe, num_proc=1, shard_docs=25)
    monkeypatch.undo()
    assert docs_recorded(tmp_path) == 75
    with open(tmp_path / "train.bin.partial", "ab") as f:
        f.write(b"\x01\x02" * 99)  # a shard appended but never recorded, as a kill between the two leaves it
    with pytest.raises(token_bins.pu.UserError, match="other data or arguments") as excinfo:
        token_bins.write_bins(
            {"train": datasets.Dataset.from_dict({"text": other}), "val": splits["val"]},
            tmp_path,
            recipe,
            num_proc=1,
            shard_docs=25,
        )
    assert "\n" not in str(excinfo.value)
    with pytest.raises(token_bins.pu.UserError, match="other data or arguments"):
        token_bins.write_bins(splits, tmp_path, {"test": 2}, num_proc=1, shard_docs=25)
    # The same inputs go on from the record, with another shard size and worker count: those do not change bytes.
    capsys.readouterr()
    counts = token_bins.write_bins(splits, tmp_path, recipe, num_proc=2, shard_docs=40)
    assert "resuming from 75 of 120 documents" in capsys.readouterr().out
    assert bins(tmp_path) == {"train": expected_bytes(docs[10:]), "val": expected_bytes(docs[:10])}
    assert counts == {"train": len(expected_bytes(docs[10:])) // 2, "val": len(expected_bytes(docs[:10])) // 2}
    assert sorted(os.listdir(tmp_path)) == ["train.bin", "val.bin"]


# ---------------------------------------------------------------- memory


def peak_rss_mb(cmd: list[str], env: dict) -> float:
    """Peak RSS of the largest process of cmd's tree, measured from a fresh parent that runs nothing else."""
    probe = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    result = subprocess.run([sys.executable, "-c", probe, *cmd], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return int(result.stdout) / 1024


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_documents(tmp_path, hf_env):
    docs = make_docs(12_000, seed=6)
    small, large = write_parquet(docs[:3000], tmp_path / "small"), write_parquet(docs, tmp_path / "large")
    peak_small = peak_rss_mb(fineweb_cmd(small, tmp_path / "out_small"), hf_env)
    peak_large = peak_rss_mb(fineweb_cmd(large, tmp_path / "out_large"), hf_env)
    text_growth_mb = sum(map(len, docs[3000:])) / 2**20
    # Holding the whole split at once (one shard of everything) adds ~5x the text: ~65MB here. Sharded, the peak
    # grows only by the pages of the memory-mapped dataset a worker has read.
    assert peak_large - peak_small < 0.5 * text_growth_mb + 5, (peak_small, peak_large, text_growth_mb)


# ---------------------------------------------------------------- messages and progress


def test_progress_lines_say_documents_tokens_and_time_left(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("nanogpt_plus.progress.EVERY_S", 0.0)
    docs = make_docs(60, seed=7)
    splits = {"train": datasets.Dataset.from_dict({"text": docs}), "val": datasets.Dataset.from_dict({"text": []})}
    counts = token_bins.write_bins(splits, tmp_path, {}, num_proc=1, shard_docs=20)
    token_bins.pu.print_counts(counts, tmp_path)
    out, err = capsys.readouterr()
    lines, tokens = err.splitlines(), len(expected_bytes(docs)) // 2
    assert lines[0].startswith("tokenizing: 20 of 60 documents (33%), ") and lines[0].endswith(" left")
    assert lines[2].startswith(f"tokenizing: 60 of 60 documents (100%), {tokens:,} tokens, ")
    assert out.splitlines() == [
        f"train.bin has {tokens:,} tokens",
        "val.bin has 0 tokens",
        f"wrote train.bin, val.bin to {tmp_path}",
    ]
    assert (tmp_path / "val.bin").read_bytes() == b""


def test_fineweb_without_datasets_or_parquet_files_is_one_line_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as excinfo:
        fineweb.main(["--parquet_dir", str(tmp_path / "empty"), "--out-dir", str(tmp_path / "out")])
    assert excinfo.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: no .parquet files under")
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(SystemExit):
        fineweb.main(["--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'nanogpt-plus[datasets]'" in err


def test_fineweb_cut_short_shard_is_one_line_naming_it_and_the_run_goes_on_once_fixed(tmp_path, monkeypatch, capsys):
    """A shard cut short after an interrupted run: one line naming it, nothing of the run touched; the shard
    fetched again, the same command goes on from the record and writes an uninterrupted run's bytes."""
    from user_errors import main_error, snapshot

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    docs = make_docs(150, seed=8)
    parquet_dir, out = write_parquet(docs, tmp_path / "parquet"), tmp_path / "out"
    args = {"parquet_dir": parquet_dir, "val_docs": 20, "num_proc": 1, "shard_docs": 25}
    with monkeypatch.context() as patch:
        patch.setattr(token_bins, "append_durably", StopAfter(2, KeyboardInterrupt()))
        with pytest.raises(token_bins.pu.UserError, match="interrupted"):
            fineweb.prepare(out, **args)
    shard = parquet_dir / "001_00000.parquet"
    whole = shard.read_bytes()
    shard.write_bytes(whole[: len(whole) // 2])  # a download cut short
    before = snapshot(out)
    message = main_error(fineweb.main, ["--parquet_dir", parquet_dir, "--out-dir", out, "--val_docs=20"], capsys)
    assert message == (
        f"{shard} is cut short or damaged (not a whole parquet file): delete it and download it again, "
        "then run the same command again to go on"
    )
    assert snapshot(out) == before  # the record and the partial files wait for the rerun
    shard.write_bytes(whole)  # downloaded again
    fineweb.prepare(out, **args)
    assert "resuming from 50 of 150 documents" in capsys.readouterr().out
    assert bins(out) == {"val": expected_bytes(docs[:20]), "train": expected_bytes(docs[20:])}
