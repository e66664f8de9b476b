"""Helpers shared by the data/<name>/prepare.py scripts.

They cover the parts every script needs to get exactly right: finding the input text, turning
user mistakes into one-line errors, and writing outputs atomically as flat uint16 token streams
(the classic nanoGPT format, so bins from either project are interchangeable); and, for the large
datasets, the optional `datasets` import, the number of cores and a progress report.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import pickle
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import numpy as np
import requests

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
# Lets a machine without internet point every shakespeare script at a local copy.
INPUT_ENV = "NANOGPT_INPUT_FILE"
INPUT_NAME = "input.txt"
DOWNLOAD_TIMEOUT_S = 30
# Classic nanoGPT splits the raw text, not the tokens, 90/10.
TRAIN_FRACTION = 0.9
UINT16_LIMIT = int(np.iinfo(np.uint16).max) + 1
# Without a terminal for a progress bar (a log file, nohup), a progress line this often.
REPORT_EVERY_S = 10.0


class UserError(Exception):
    """A problem the user can fix; reported as one `error:` line instead of a traceback."""


def one_line(exc: BaseException) -> str:
    """Exception text squeezed onto one line, so error messages stay a single line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


@contextmanager
def user_errors() -> Iterator[None]:
    """Wrap a script's work so user and OS errors (missing file, full disk) exit 1 without a traceback."""
    try:
        yield
    except UserError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(one_line(exc))


def default_num_proc() -> int:
    # The cores this process may use: a container or taskset can allow fewer than the machine has.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def import_datasets(name: str):
    """The optional `datasets` package, imported only when a script that needs it runs."""
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"{name} needs the 'datasets' package: pip install 'nanogpt-plus[datasets]' (or pip install datasets tqdm)"
        ) from None
    return datasets


def shakespeare_arg_parser(description: str, default_out_dir: Path) -> argparse.ArgumentParser:
    """Command line shared by the two shakespeare scripts."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "input",
        nargs="?",
        default=None,
        help=f"local text file to use instead of downloading; copied to <out-dir>/{INPUT_NAME} "
        f"(also read from ${INPUT_ENV})",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=default_out_dir,
        help="where input.txt, train.bin, val.bin (and meta.pkl) go (default: beside this script)",
    )
    return parser


def tmp_path_for(path: Path) -> Path:
    # Same directory so os.replace is an atomic rename; hidden and pid-tagged so it never
    # looks like a finished output and two concurrent runs do not collide.
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temp path to write; it replaces `path` only if the block finishes without error."""
    tmp = tmp_path_for(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def local_copy_hint(script: str) -> str:
    return f"pass a local copy: python {script} path/to/input.txt (or set {INPUT_ENV}=path/to/input.txt)"


def download(url: str, target: Path, script: str) -> None:
    """Fetch `url` into `target`; on any failure leave nothing behind and raise a UserError."""
    try:
        response = requests.get(url, timeout=DOWNLOAD_TIMEOUT_S)
        response.raise_for_status()
        with atomic_path(target) as tmp:
            tmp.write_bytes(response.content)
    except requests.RequestException as exc:
        raise UserError(f"could not download {url} ({one_line(exc)}); {local_copy_hint(script)}") from None


def copy_input(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def given_input(given: str | os.PathLike | None, script: str) -> Path | None:
    """The user's local input file (argument first, then the env var), checked to exist."""
    if given is None or str(given) == "":
        given = os.environ.get(INPUT_ENV) or None
    if given is None:
        return None
    source = Path(given).expanduser()
    if not source.is_file():
        raise UserError(
            f"input file not found: {source}; pass an existing text file as the first argument "
            f"(python {script} path/to/input.txt) or via {INPUT_ENV}"
        )
    return source


def ensure_input(out_dir: Path, given: str | os.PathLike | None, script: str) -> Path:
    """Make sure <out_dir>/input.txt exists: keep it, else copy the given file, else download."""
    target = out_dir / INPUT_NAME
    source = given_input(given, script)
    if target.is_file():
        # An existing input.txt wins (classic behaviour); say so rather than silently ignore a path.
        if source is not None and not filecmp.cmp(source, target, shallow=False):
            print(f"note: using existing {target}; ignoring {source} (delete {target} to use it)", file=sys.stderr)
        return target
    if source is not None:
        copy_input(source, target)
    else:
        print(f"downloading {TINY_SHAKESPEARE_URL}")
        download(TINY_SHAKESPEARE_URL, target, script)
    return target


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; pass a plain text file") from None


def split_text(text: str) -> tuple[str, str]:
    """First 90% of the characters for training, the rest for validation."""
    cut = int(len(text) * TRAIN_FRACTION)
    return text[:cut], text[cut:]


def check_uint16(ids: np.ndarray) -> None:
    # Casting would silently wrap larger ids, corrupting the stream instead of failing.
    if ids.size and int(ids.max()) >= UINT16_LIMIT:
        raise UserError(
            f"token id {int(ids.max())} does not fit in uint16 (max {UINT16_LIMIT - 1}); use a smaller vocabulary"
        )


def write_tokens(ids: Sequence[int] | np.ndarray, path: Path) -> int:
    """Write ids as one flat raw uint16 stream (np.ndarray.tofile), atomically; return the count."""
    arr = np.asarray(ids, dtype=np.int64)
    check_uint16(arr)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        arr.astype(np.uint16).tofile(f)
        f.flush()
        os.fsync(f.fileno())
    return int(arr.size)


def gpt2_encoding():
    """tiktoken's GPT-2 BPE, with a one-line error when its files cannot be fetched."""
    import tiktoken  # only the BPE scripts need it

    try:
        return tiktoken.get_encoding("gpt2")
    except requests.RequestException as exc:
        # tiktoken fetches its BPE files on first use; offline machines need a pre-filled cache.
        raise UserError(
            f"could not load the GPT-2 tokenizer ({one_line(exc)}); "
            "set TIKTOKEN_CACHE_DIR to a directory that already holds it"
        ) from None


def write_pickle(obj: object, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())


def print_counts(counts: dict[str, int], out_dir: Path) -> None:
    for split, n in counts.items():
        print(f"{split}.bin has {n:,} tokens")
    print(f"wrote {', '.join(f'{split}.bin' for split in counts)} to {Path(out_dir).resolve()}")


class Progress:
    """Documents and tokens done and the time left: a tqdm bar on a terminal, else a line every REPORT_EVERY_S."""

    def __init__(self, total_docs: int, first_docs: int = 0):
        self.total, self.first = total_docs, first_docs
        self.start = self.last_line = time.monotonic()
        try:
            from tqdm import tqdm
        except ImportError:
            tqdm = None
        terminal = tqdm is not None and sys.stderr.isatty()
        self.bar = tqdm(total=total_docs, initial=first_docs, unit="docs", unit_scale=True) if terminal else None

    def update(self, docs: int, tokens: int) -> None:
        if self.bar is not None:
            self.bar.update(docs - self.bar.n)
            self.bar.set_postfix_str(f"{tokens:,} tokens")
        elif time.monotonic() - self.last_line >= REPORT_EVERY_S:
            self.last_line = time.monotonic()
            rate = max(docs - self.first, 1) / (self.last_line - self.start)
            left = timedelta(seconds=int((self.total - docs) / rate))
            print(f"{docs:,}/{self.total:,} documents, {tokens:,} tokens, {left} left", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
