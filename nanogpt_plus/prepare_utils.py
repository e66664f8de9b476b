"""What the data/ prepare scripts share: the input text, one-line errors, flat uint16 token files written atomically
(classic nanoGPT's: either project reads the other's); for the large datasets, `datasets` and the number of cores.
"""

import argparse
import filecmp
import os
import shutil
import stat
import sys
from contextlib import contextmanager
from urllib.parse import urlsplit

import numpy as np
import requests

from nanogpt_plus.atomic import atomic_files, atomic_write
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


@contextmanager
def user_errors():
    """Wrap a script's work so user and OS errors (missing file, full disk) exit 1 without a traceback."""
    try:
        yield
        return
    except UserError as exc:
        line = f"error: {exc}"
    except OSError as exc:
        line = f"error: {reason(exc)}" + (f": {exc.filename}" if exc.filename else "")
    except KeyboardInterrupt:  # what was being written is gone (atomic_write): no traceback to show
        line = "interrupted"
    print(line, file=sys.stderr)
    sys.exit(1)


@contextmanager
def writing(path):
    """Around the writing of path: an OS error (a full disk, a read-only folder) is one line that names it."""
    try:
        yield
    except OSError as exc:
        raise cannot_write(path, exc, "--out-dir") from None


@contextmanager
def removed_if_left_empty(folder):
    """A folder that does not exist yet and that the block makes goes again if the block fails and leaves it
    empty: a failed command leaves nothing behind."""
    made = not os.path.exists(folder)
    try:
        yield
    except BaseException:
        if made and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
        raise


def default_num_proc():
    # The cores this process may use: a container or taskset can allow fewer than the machine has.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def import_datasets(name):
    """The optional `datasets` package, imported only when a script that needs it runs."""
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"{name} needs the 'datasets' package: pip install 'nanogpt-plus[datasets]' (or pip install datasets tqdm)"
        ) from None
    return datasets


def from_hub(datasets, path, **kwargs):
    """datasets.load_dataset(path, **kwargs) from the Hugging Face hub; offline and not in the cache, a one-line
    error within seconds, where the hub's client would retry for half a minute, printing each try."""
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


def shakespeare_main(prepare, description, default_out_dir, argv):
    """The command line of the two shakespeare scripts: [path/to/input.txt] [--out-dir DIR]; prepare(out_dir,
    input_path) does the work, and what it made is printed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("input", nargs="?", help=f"a local copy of the text, not a download (also ${INPUT_ENV})")
    parser.add_argument("--out-dir", default=default_out_dir, help="where the bins go (default: beside the script)")
    args = parser.parse_args(argv)
    with user_errors(), removed_if_left_empty(args.out_dir):
        counts = prepare(out_dir=args.out_dir, input_path=args.input)
    print(f"length of dataset in characters: {counts.pop('chars'):,}")
    vocab_size = counts.pop("vocab_size", None)  # a character-level dataset's, with its meta.pkl
    if vocab_size:
        print(f"vocab size: {vocab_size:,}")
    print_counts(counts, args.out_dir, meta=bool(vocab_size))


def download(url, target, script):
    """Fetch `url` into `target`; on any failure leave nothing behind and raise a UserError."""
    try:
        response = requests.get(url, timeout=DOWNLOAD_TIMEOUT_S)
        response.raise_for_status()
    except requests.RequestException as exc:
        where = f"{os.path.basename(url)} from {urlsplit(url).hostname}"
        hint = f"pass a local copy: python {script} path/to/input.txt (or set {INPUT_ENV})"
        raise UserError(f"could not download {where} ({reason(exc)}); {hint}") from None
    with writing(target), atomic_write(target) as f:
        f.write(response.content)


def not_a_text_file(path):
    """The UserError for a path that is there but is no file nor folder (/dev/null, a pipe); else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    kinds = {stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device", stat.S_ISFIFO: "a named pipe",
             stat.S_ISSOCK: "a socket"}  # fmt: skip
    kind = next((name for test, name in kinds.items() if test(mode)), None)
    return UserError(f"{path} is {kind}, not a text file: pass a UTF-8 text file") if kind else None


def given_input(given, script):
    """The user's local input file (argument first, then the env var), checked to exist; None if none."""
    given = given or os.environ.get(INPUT_ENV)
    if not given:
        return None
    source = os.path.expanduser(given)
    if os.path.isdir(source):
        raise UserError(f"{source} is a folder: pass a text file (data/prepare_text.py takes a folder of them)")
    if not os.path.isfile(source):
        raise not_a_text_file(source) or UserError(
            f"input file not found: {source}; pass an existing text file as the first argument "
            f"(python {script} path/to/input.txt) or via {INPUT_ENV}"
        )
    return source


def input_text(out_dir, given, script):
    """The text of <out_dir>/input.txt, made first if need be: a copy of the given file, else a download. An
    input.txt already there wins (classic behaviour), and a path it overrules is said, not silently ignored."""
    with writing(out_dir):
        os.makedirs(out_dir, exist_ok=True)
    target = os.path.join(out_dir, INPUT_NAME)
    source = given_input(given, script)
    if os.path.isfile(target):
        if source is not None and not filecmp.cmp(source, target, shallow=False):
            print(f"note: using existing {target}; ignoring {source} (delete {target} to use it)", file=sys.stderr)
    elif source is not None:  # read and checked before the copy: a bad copy in out_dir would win over every later path
        text = read_text(source, "pass a plain text file", "pass a text file that holds the text to train on")
        with open(source, "rb") as src, writing(target), atomic_write(target) as f:
            shutil.copyfileobj(src, f)
        return text
    else:
        print(f"downloading {TINY_SHAKESPEARE_URL}")
        download(TINY_SHAKESPEARE_URL, target, script)
    fix = f"delete {target} (or put the text in it) and run again"  # it wins over any path given
    return read_text(target, fix, fix)


def read_text(path, fix_not_utf8, fix_empty):
    """The UTF-8 text of path, or a one-line error that ends with the fix given for what is wrong with it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; {fix_not_utf8}") from None
    except OSError as exc:
        raise UserError(f"cannot read {path} ({reason(exc)})") from None
    if not text:
        raise UserError(f"{path} is empty; {fix_empty}")
    return text


def split_text(text):
    """First 90% of the characters for training, the rest for validation."""
    cut = int(len(text) * TRAIN_FRACTION)
    return text[:cut], text[cut:]


def check_uint16(ids):
    # Casting would silently wrap larger ids, corrupting the stream instead of failing.
    if ids.size and int(ids.max()) >= UINT16_LIMIT:
        raise UserError(
            f"token id {int(ids.max())} does not fit in uint16 (max {UINT16_LIMIT - 1}); use a smaller vocabulary"
        )


def write_tokens(ids, f):
    """Write ids into the open file f as one flat raw uint16 stream (what np.ndarray.tofile writes); return the
    count."""
    arr = np.asarray(ids, dtype=np.int64)
    check_uint16(arr)
    f.write(arr.astype(np.uint16).data)  # not tofile: its short write is an OSError without the reason
    return int(arr.size)


@contextmanager
def dataset_files(out_dir, names, remove=()):
    """The files `names` of the dataset in out_dir, open to write ({name: file}) and replacing the old ones
    together when the block ends (atomic_files), the files `remove` deleted then: a failure or an interrupt never
    leaves train.bin of one text beside val.bin or meta.pkl of another. An OS error is one line."""
    paths = {name: os.path.join(out_dir, name) for name in names}
    with writing(out_dir), atomic_files(list(paths.values()), [os.path.join(out_dir, n) for n in remove]) as files:
        yield {name: files[path] for name, path in paths.items()}


def print_counts(counts, out_dir, meta=False):
    """The tokens of each split ({split: tokens}) and where they went (with meta.pkl, if meta)."""
    for split, n in counts.items():
        print(f"{split}.bin has {n:,} tokens")
    made = [f"{split}.bin" for split in counts] + ["meta.pkl"] * meta
    print(f"wrote {', '.join(made)} to {os.path.realpath(out_dir)}")
