r"""Your own UTF-8 text (a file, or a folder of files) as a dataset: uint16 token ids in train.bin/val.bin.

Usage: python data/prepare_text.py path/to/file.txt --name mydata [--tokenizer=char|gpt2] [--out_dir DIR] [--overwrite]
       python data/prepare_text.py path/to/code/ --glob '*.py' --name mycode --tokenizer=gpt2
Then python train.py config/train_shakespeare_char.py --dataset=mydata --out_dir=out-mydata trains a small model on
it (the quick recipe without a GPU), and python sample.py --out_dir=out-mydata samples from it, with no further setup.

char (the default) and gpt2 write the same bytes as data/shakespeare_char/prepare.py (with its meta.pkl) and
data/shakespeare/prepare.py: the first 90% of the characters are train, the rest val; newlines read as in Python's
text mode (\r\n and \r become \n). A folder is every regular non-hidden file under it, recursively, in sorted
relative-path order, joined as they are; with --glob PATTERN, only those whose name matches the pattern (fnmatch's
shell-style wildcards, case-sensitive: '*.py', 'test_*.txt'). A folder that holds another dataset is replaced only
with --overwrite (the same text prepared again is fine). The text is read twice, a chunk at a time (count the
characters and find the vocabulary, then encode and write), so memory follows --chunk_mb, not the size of the text.
"""

import argparse
import codecs
import contextlib
import filecmp
import fnmatch
import io
import itertools
import os
import pickle
import re
from pathlib import Path

import numpy as np

from nanogpt_plus import prepare_utils as pu
from nanogpt_plus.tokenizer import char_meta, gpt2_encoding

HERE = Path(__file__).resolve().parent

CODE_POINTS = 0x110000  # every Unicode code point, so one lookup table maps them all
PLAIN_NAME = re.compile(r"\w[\w.-]*")
BINS = ("train.bin", "val.bin")
# Points where GPT-2's pre-tokenizer can restart without changing a token: after a "\n" or before a " ", with
# non-whitespace on both sides. No piece of its regex spans them, and the piece before ends the same way at the
# end of a string. ("\n\nX" is not one: at the end of a string "\n\n" is one piece, inside the text two.)
SAFE_CUT = re.compile(r"\S\n(?=\S)|\S(?= \S)")


def progress_mb(what, total_bytes):
    return pu.Progress(what, total_bytes, unit="MB", scale=1e6)


def input_files(path, glob=None):
    """The file itself, or the folder's regular non-hidden files (with glob, those whose name matches it),
    recursively, in sorted relative-path order."""
    if glob is not None and (not glob or "/" in glob or os.sep in glob):
        raise pu.UserError(f"--glob matches file names, not paths: give a pattern such as '*.py', not {glob!r}")
    if path.is_file():
        if glob is not None:
            raise pu.UserError(f"--glob picks files in a folder, and {path} is a file: pass its folder, or no --glob")
        return [path]
    if not path.is_dir():
        special = pu.not_a_text_file(path)
        if special:
            raise pu.UserError(f"{special} or a folder of them")
        raise pu.UserError(f"input not found: {path}; pass a UTF-8 text file or a folder of them")
    files = []
    for root, dirs, names in os.walk(path, onerror=unreadable):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        names = [n for n in names if not n.startswith(".") and (glob is None or fnmatch.fnmatchcase(n, glob))]
        files += [Path(root, n) for n in names if Path(root, n).is_file()]
    if not files and glob is not None:
        raise pu.UserError(f"no file under {path} has a name that matches --glob {glob!r} (hidden ones left out)")
    return sorted(files, key=lambda f: f.relative_to(path).parts)


def unreadable(exc):
    """os.walk's onerror: a folder that cannot be listed is an error, not silently left out."""
    raise pu.UserError(f"cannot read {exc.filename} ({pu.reason(exc)}): give a folder this user can read")


def read_chunks(files, chunk_bytes, progress):
    """The text of the files in order, decoded chunk_bytes at a time."""
    done = 0  # bytes of the files before this one
    for path in files:
        # Python's text mode decoder, as read_text in the other scripts: the same characters, \r\n and \r as \n.
        decoder = io.IncrementalNewlineDecoder(codecs.getincrementaldecoder("utf-8")(), translate=True)
        with reading(path) as f:
            while True:
                block, held = f.read(chunk_bytes), len(decoder.getstate()[0])  # held: a character's first bytes
                try:
                    yield decoder.decode(block, final=not block)
                except UnicodeDecodeError as exc:
                    offset = f.tell() - len(block) - held + exc.start
                    raise pu.UserError(
                        f"{path} is not UTF-8 text: {exc.reason} at byte offset {offset:,}; convert it or leave it out"
                    ) from None
                progress.update(done + f.tell())
                if not block:
                    break
            done += f.tell()


@contextlib.contextmanager
def reading(path):
    """path opened for reading; an OS error (no permission, a disk error) is one line that names it."""
    try:
        with open(path, "rb") as f:
            yield f
    except OSError as exc:
        raise pu.UserError(f"cannot read {path} ({pu.reason(exc)})") from None


def code_points(text):
    # UTF-32 holds one 4-byte code point per character: the text as an array with no Python loop.
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def count_text(chunks, char_level):
    """Pass 1: the number of characters and (char level) the sorted code points that occur."""
    n_chars, seen = 0, np.zeros(CODE_POINTS if char_level else 0, dtype=bool)
    for chunk in chunks:
        n_chars += len(chunk)
        if char_level:
            seen[code_points(chunk)] = True
    return n_chars, np.flatnonzero(seen)


def split_pieces(chunks, cut, safe_end):
    """(split, text) pieces of the whole text, in order: split 0 is its first `cut` characters (train), 1 the rest.
    Pieces end at the split point or at safe_end(text), so encoding them one by one is encoding each split whole."""
    split, start, carry = 0, 0, ""  # start: where carry begins in the whole text
    for chunk in chunks:
        text = carry + chunk
        if split == 0 and start + len(text) >= cut:
            yield 0, text[: cut - start]
            split, text, start = 1, text[cut - start :], cut
        end = safe_end(text)
        yield split, text[:end]
        carry, start = text[end:], start + end
    yield split, carry


def last_safe_cut(text):
    """The last SAFE_CUT in text, looked for in its tail first; 0 if none: then all of it waits for the next chunk
    (so memory is bounded only for text with a space or a line break between words now and then, as text has)."""
    for start in (max(0, len(text) - 4096), 0):  # a chunk of text has many near its end
        ends = [m.end() for m in SAFE_CUT.finditer(text, start)]
        if ends:
            return ends[-1]
    return 0


def gpt2_ids(pieces, threads):
    # encode_ordinary: "<|endoftext|>" in the text is plain text, as in data/shakespeare/prepare.py.
    enc, pieces = gpt2_encoding(), iter(pieces)
    while batch := list(itertools.islice(pieces, threads)):  # one piece per core at a time
        ids = enc.encode_ordinary_batch([text for _, text in batch], num_threads=threads)
        yield from ((split, np.array(piece_ids, dtype=np.int64)) for (split, _), piece_ids in zip(batch, ids))


def token_ids(pieces, tokenizer, vocab):
    """Each piece's token ids; for char, each code point's index in the sorted vocabulary, looked up in a table."""
    if tokenizer == "gpt2":
        return gpt2_ids(pieces, threads=min(8, os.cpu_count() or 1))  # more threads, more ids in memory at once
    table = np.zeros(CODE_POINTS, dtype=np.int32)
    table[vocab] = np.arange(len(vocab))
    return ((split, table[code_points(text)]) for split, text in pieces)


def write_splits(ids, files):
    """Append each piece's ids to its split's file (flat raw uint16); return the token counts."""
    counts = [0, 0]
    for split, arr in ids:
        pu.check_uint16(arr)
        files[split].write(arr.astype(np.uint16).data)  # not tofile: its short write is an OSError without the reason
        counts[split] += int(arr.size)
    return counts


def check_splits(counts, block_size, val_fraction):
    # train.py draws windows of block_size + 1 tokens from each split.
    for split, n, fix in zip(("train", "val"), counts, ("smaller", "bigger")):
        if n < block_size + 1:
            raise pu.UserError(
                f"the {split} split would have {n:,} tokens, fewer than --block_size + 1 = {block_size + 1:,}: give "
                f"more text, a smaller --block_size, or a {fix} --val_fraction (now {val_fraction})"
            )


def held_dataset(out_dir):
    """What out_dir holds, in a few words: its kind of tokens and the size of its train split."""
    train = out_dir / "train.bin"
    size = f"{train.stat().st_size // 2:,} train tokens" if train.is_file() else "no train.bin"
    kind = "character-level (meta.pkl)" if (out_dir / "meta.pkl").is_file() else "GPT-2 BPE"
    return f"a {kind} dataset of {size}"


def differs(path, new):
    """Whether the file at path exists and writing `new` there (a file's contents, bytes, or None: removing it)
    would change it."""
    if not path.is_file():
        return False
    if new is None:
        return True
    if isinstance(new, bytes):
        return path.read_bytes() != new
    return not filecmp.cmp(new, path, shallow=False)


def refuse_replacing(out_dir, new, overwrite):
    """A dataset already in out_dir is the user's work: the same text prepared again may write the same bytes over
    it, other text may replace it only when asked to (--overwrite)."""
    replaced = [name for name, contents in new.items() if differs(out_dir / name, contents)]
    if replaced and not overwrite:
        raise pu.UserError(
            f"{out_dir} already holds {held_dataset(out_dir)}, which this text would replace ({', '.join(replaced)}): "
            "give another --name or --out_dir, or pass --overwrite to replace it"
        )


def prepare(
    source, out_dir, tokenizer="char", block_size=256, val_fraction=0.1, chunk_mb=1.0, overwrite=False, glob=None
):
    """Write train.bin, val.bin (and, for char, meta.pkl) into out_dir; return the counts. Another dataset there is
    replaced only if overwrite. glob: in a folder, only the files whose name matches it."""
    source, out_dir = Path(source), Path(out_dir)
    if (out_dir / "prepare.py").is_file() and not overwrite:  # (data/shakespeare_char, say)
        raise pu.UserError(
            f"{out_dir} has a prepare.py of its own, which writes over this dataset when run: give another --name or "
            "--out_dir, or pass --overwrite"
        )
    if source.is_dir() and out_dir.resolve().is_relative_to(source.resolve()):  # it would read its own bins
        raise pu.UserError(f"the output folder {out_dir} is inside the input folder {source}: write it elsewhere")
    files = input_files(source, glob)
    total_bytes, chunk_bytes = sum(f.stat().st_size for f in files), max(1, round(chunk_mb * 1e6))
    n_chars, vocab = count_text(
        read_chunks(files, chunk_bytes, progress_mb("reading", total_bytes)), tokenizer == "char"
    )
    if n_chars == 0:
        raise pu.UserError(f"no text in {source}: give a non-empty UTF-8 file or a folder holding one")
    if len(vocab) > pu.UINT16_LIMIT:
        raise pu.UserError(
            f"{source} has {len(vocab):,} distinct characters, more than uint16 ids can number "
            f"({pu.UINT16_LIMIT:,}): use --tokenizer=gpt2"
        )
    chunks = read_chunks(files, chunk_bytes, progress_mb("encoding", total_bytes))
    pieces = split_pieces(chunks, int(n_chars * (1 - val_fraction)), len if tokenizer == "char" else last_safe_cut)
    with pu.removed_if_left_empty(out_dir):
        with pu.writing(out_dir):  # (the input's read errors are UserErrors by now)
            out_dir.mkdir(parents=True, exist_ok=True)
        # a gpt2 run removes meta.pkl: one left from a char run would make train.py and sample.py read chars
        names, remove = ((*BINS, "meta.pkl"), ()) if tokenizer == "char" else (BINS, ("meta.pkl",))
        with pu.dataset_files(out_dir, names, remove) as f:  # all new together, or the old ones as they were
            counts = write_splits(token_ids(pieces, tokenizer, vocab), (f["train.bin"], f["val.bin"]))
            check_splits(counts, block_size, val_fraction)
            meta = pickle.dumps(char_meta([chr(c) for c in vocab])) if tokenizer == "char" else None
            for name in BINS:
                f[name].flush()  # (compared below under their temp names)
            refuse_replacing(out_dir, {name: Path(f[name].name) for name in BINS} | {"meta.pkl": meta}, overwrite)
            if meta is not None:
                f["meta.pkl"].write(meta)
    return {"files": len(files), "chars": n_chars, "vocab_size": len(vocab), "train": counts[0], "val": counts[1]}


def dataset_dir(name):
    """HERE/NAME, for train.py --dataset=NAME: NAME must be one folder, not a path, not hidden, not an option."""
    if not PLAIN_NAME.fullmatch(name or ""):
        got = f"not {name!r}" if name else "or --out_dir=DIR"
        raise pu.UserError(f"give --name a plain folder name (letters, digits, '_', '-', '.', not first) {got}")
    return HERE / name


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Prepare your own UTF-8 text for train.py: train.bin and val.bin, uint16 token ids of the first "
        "90% of the characters and of the rest (the same bytes as data/shakespeare*/prepare.py).",
        epilog="A folder: all regular non-hidden files under it (with --glob, those whose name matches), "
        "recursively, in sorted order of their paths relative to it, joined as they are, with nothing in between.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("input", type=Path, help="a UTF-8 text file, or a folder of them")
    parser.add_argument("--name", help="writes NAME/ beside this script, for train.py --dataset=NAME")
    parser.add_argument("--out_dir", "--out-dir", type=Path, help="write here instead of beside this script")
    parser.add_argument("--tokenizer", choices=("char", "gpt2"), default="char", help="char writes meta.pkl too")
    parser.add_argument("--block_size", type=int, default=256, help="each split needs block_size + 1 tokens")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="share of the characters for val.bin")
    parser.add_argument("--chunk_mb", type=float, default=1.0, help="MB read at a time")
    parser.add_argument("--overwrite", action="store_true", help="replace another dataset already in the folder")
    parser.add_argument("--glob", metavar="PATTERN", help="in a folder, only the files whose name matches, e.g. '*.py'")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    with pu.user_errors():
        if args.block_size < 1 or not 0 < args.val_fraction < 1 or not 0 < args.chunk_mb <= 1024:
            raise pu.UserError(
                "--block_size must be at least 1, --val_fraction between 0 and 1, --chunk_mb above 0 and at most 1024"
            )
        out_dir = args.out_dir or dataset_dir(args.name)
        counts = prepare(
            args.input, out_dir, args.tokenizer, args.block_size, args.val_fraction, args.chunk_mb, args.overwrite,
            args.glob,
        )  # fmt: skip
    print(f"length of dataset in characters: {counts['chars']:,} (from {counts['files']:,} file(s))")
    if args.tokenizer == "char":
        print(f"vocab size: {counts['vocab_size']:,}")
    print(f"train.bin has {counts['train']:,} tokens")
    print(f"val.bin has {counts['val']:,} tokens")
    print(f"wrote train.bin, val.bin{', meta.pkl' if args.tokenizer == 'char' else ''} to {out_dir.resolve()}")
    if out_dir.resolve().parent.name == "data":
        name = out_dir.name  # the shakespeare_char recipe: a few minutes, and without a GPU its quick version
        print(f"train on it: python train.py config/train_shakespeare_char.py --dataset={name} --out_dir=out-{name}")


if __name__ == "__main__":
    main()

# On Tiny Shakespeare (1,115,394 characters), the same bytes as data/shakespeare_char/prepare.py and
# data/shakespeare/prepare.py:
# --tokenizer=char: vocab size 65, train.bin has 1,003,854 tokens, val.bin has 111,540 tokens
# --tokenizer=gpt2: train.bin has 301,966 tokens, val.bin has 36,059 tokens
