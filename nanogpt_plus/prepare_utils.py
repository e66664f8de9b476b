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
import stat
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import requests

from nanogpt_plus.atomic import atomic_write
from nanogpt_plus.errors import UserError, cannot_write, os_errno, reason  # noqa: F401  (os_errno: for token_bins)
from nanogpt_plus.progress import Progress  # noqa: F401  (the scripts' progress reporter)

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
# Lets a machine without internet point every shakespeare script at a local copy.
INPUT_ENV = "NANOGPT_INPUT_FILE"
INPUT_NAME = "input.txt"
DOWNLOAD_TIMEOUT_S = 30
# Classic nanoGPT splits the raw text, not the tokens, 90/10.
TRAIN_FRACTION = 0.9
UINT16_LIMIT = int(np.iinfo(np.uint16).max) + 1


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
        fail(f"{reason(exc)}: {exc.filename}" if exc.filename else reason(exc))
    except KeyboardInterrupt:  # what was being written is gone (atomic_write): no traceback to show
        print("interrupted", file=sys.stderr)
        sys.exit(1)


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Around the writing of path: an OS error (a full disk, a read-only folder) is one line that names it."""
    try:
        yield
    except OSError as exc:
        raise cannot_write(path, exc, "--out-dir") from None


def make_out_dir(out_dir: Path) -> None:
    with writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)


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


def from_hub(datasets, path: str, **kwargs):
    """datasets.load_dataset(path, **kwargs) from the Hugging Face hub. Offline (and not in the cache,
    or HF_HUB_OFFLINE unset), a one-line error within seconds: the hub's client would retry for half
    a minute, printing each try."""
    import huggingface_hub

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "")
    if not offline and huggingface_hub.try_to_load_from_cache(path, "README.md", repo_type="dataset") is None:
        try:
            requests.head(endpoint, timeout=5)
        except requests.RequestException as exc:
            raise UserError(
                f"could not get {path}: {endpoint} cannot be reached ({reason(exc)}); connect to the internet, "
                "or set HF_HUB_OFFLINE=1 to use a copy in the Hugging Face cache"
            ) from None
    try:
        return datasets.load_dataset(path, **kwargs)
    except OSError as exc:  # the hub's and the network's errors, a dataset not found
        raise UserError(
            f"could not get {path} from the Hugging Face hub ({reason(exc)}): connect to the internet "
            "(it is downloaded once, into the Hugging Face cache)"
        ) from None


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


def local_copy_hint(script: str) -> str:
    return f"pass a local copy: python {script} path/to/input.txt (or set {INPUT_ENV})"


def download(url: str, target: Path, script: str) -> None:
    """Fetch `url` into `target`; on any failure leave nothing behind and raise a UserError."""
    try:
        response = requests.get(url, timeout=DOWNLOAD_TIMEOUT_S)
        response.raise_for_status()
    except requests.RequestException as exc:
        where = f"{Path(url).name} from {urlsplit(url).hostname}"
        raise UserError(f"could not download {where} ({reason(exc)}); {local_copy_hint(script)}") from None
    with writing(target), atomic_write(target) as f:
        f.write(response.content)


def copy_input(source: Path, target: Path) -> None:
    try:
        src = open(source, "rb")
    except OSError as exc:
        raise UserError(f"cannot read {source} ({reason(exc)})") from None
    with src, writing(target), atomic_write(target) as f:
        shutil.copyfileobj(src, f)


def not_a_text_file(path: Path) -> UserError | None:
    """The UserError for a path that exists but is neither a file nor a folder (/dev/null, a named pipe,
    a socket): something that is there, not something not found. None for anything else."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    kinds = {stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device", stat.S_ISFIFO: "a named pipe",
             stat.S_ISSOCK: "a socket"}  # fmt: skip
    kind = next((name for test, name in kinds.items() if test(mode)), None)
    return UserError(f"{path} is {kind}, not a text file: pass a UTF-8 text file") if kind else None


def given_input(given: str | os.PathLike | None, script: str) -> Path | None:
    """The user's local input file (argument first, then the env var), checked to exist."""
    if given is None or str(given) == "":
        given = os.environ.get(INPUT_ENV) or None
    if given is None:
        return None
    source = Path(given).expanduser()
    if source.is_dir():
        raise UserError(f"{source} is a folder: pass a text file (data/prepare_text.py takes a folder of them)")
    if not source.is_file():
        special = not_a_text_file(source)
        if special:
            raise special
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
    except OSError as exc:
        raise UserError(f"cannot read {path} ({reason(exc)})") from None


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
    with writing(path), atomic_write(path) as f:
        f.write(arr.astype(np.uint16).data)  # not tofile: its short write is an OSError without the reason
    return int(arr.size)


def write_pickle(obj: object, path: Path) -> None:
    with writing(path), atomic_write(path) as f:
        pickle.dump(obj, f)


def print_counts(counts: dict[str, int], out_dir: Path) -> None:
    for split, n in counts.items():
        print(f"{split}.bin has {n:,} tokens")
    print(f"wrote {', '.join(f'{split}.bin' for split in counts)} to {Path(out_dir).resolve()}")
