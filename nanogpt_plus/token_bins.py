"""Tokenize datasets of documents into flat uint16 GPT-2 token files, on every core, resumably:

    counts = token_bins.write_bins({"train": train, "val": val}, out_dir, recipe={"seed": 2357})

Each split (a `datasets.Dataset` with a "text" column) becomes <out_dir>/<split>.bin: each document's
`encode_ordinary` ids and the end-of-text token, in order, as classic nanoGPT writes them. Workers tokenize shards
of `shard_docs` documents, at most two each in flight (memory does not grow with the dataset); the main process
appends them to <split>.bin.partial. After each shard is on disk, prepare_progress.json records the documents and
tokens written, with a fingerprint of the input: run again after Ctrl-C, kill -9 or a full disk and each partial
file is cut back to its record and goes on, to the bytes of an uninterrupted run.
"""

import argparse
import errno
import glob
import hashlib
import json
import multiprocessing
import os
import signal
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from nanogpt_plus import prepare_utils as pu
from nanogpt_plus.tokenizer import gpt2_encoding

# Documents per task: ~10M tokens of web text (20MB as uint16); a worker holds one shard's text and ids at a time.
SHARD_DOCS = 10_000
PROGRESS_NAME = "prepare_progress.json"
# Documents per split, evenly spaced, whose text goes into the fingerprint.
SAMPLE_DOCS = 32


def tokenize_texts(texts):
    """GPT-2 ids of each text, each followed by end-of-text, as one uint16 array."""
    enc = gpt2_encoding()  # tiktoken caches it after the first call
    # One small array per document: a Python list of all the shard's ids would take ~18x the memory.
    docs = [np.array(enc.encode_ordinary(text) + [enc.eot_token], dtype=np.uint32) for text in texts]
    ids = np.concatenate(docs) if docs else np.zeros(0, dtype=np.uint32)
    pu.check_uint16(ids)
    return ids.astype(np.uint16)


_worker_splits = {}


def start_worker(splits):
    # Ctrl-C reaches the whole process group; the main process alone handles it, and stops the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_splits.update(splits)


def tokenize_shard(task):
    split, start, stop = task
    return tokenize_texts(_worker_splits[split][start:stop]["text"])


def shard_tokens(splits, tasks, num_proc):
    """Yield the tokens of each (split, start, stop) task, in task order."""
    num_proc = min(num_proc, len(tasks))
    if num_proc <= 1:
        yield from (tokenize_texts(splits[split][start:stop]["text"]) for split, start, stop in tasks)
        return
    # spawn: fresh interpreters, as forking a process where Arrow has started threads can deadlock. An executor
    # rather than a Pool: a worker killed (e.g. out of memory) is an error here instead of a hang.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(num_proc, mp_context=context, initializer=start_worker, initargs=(splits,))
    try:
        pending = deque()
        for task in tasks:
            pending.append(pool.submit(tokenize_shard, task))
            if len(pending) >= 2 * num_proc:  # finished shards wait here for their turn: bound them
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def fingerprint(splits, recipe):
    """What decides the bytes: the recipe (e.g. split seed), each split's size and a hash of sampled documents."""
    digest = hashlib.sha256()
    for dset in splits.values():
        picks = sorted({int(i) for i in np.linspace(0, len(dset) - 1, SAMPLE_DOCS)}) if len(dset) else []
        for i in picks:
            digest.update(dset[i]["text"].encode("utf-8", "surrogatepass") + b"\0")
    sizes = {split: len(dset) for split, dset in splits.items()}
    return {"tokenizer": "gpt2", "recipe": recipe, "docs": sizes, "sample_sha256": digest.hexdigest()}


def load_progress(path, expected):
    """{split: {"docs", "tokens"}} from an earlier run on the same inputs; {} when there was none."""
    folder, name = os.path.split(path)
    for stale in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp")):  # a kill during a save
        os.unlink(stale)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    if saved.get("fingerprint") != expected:
        raise pu.UserError(
            f"{path} records an unfinished run on other data or arguments: rerun that command to finish it, "
            f"or delete {name} and the *.bin.partial files beside it to start over"
        )
    return saved["splits"]


def save_progress(path, expected, done):
    with pu.atomic_write(path, "w", encoding="utf-8") as f:
        json.dump({"fingerprint": expected, "splits": done}, f, indent=1)


def file_size(path):
    return os.path.getsize(path) if os.path.isfile(path) else -1


def resume_points(splits, out_dir, saved):
    """Documents and tokens of each split safely on disk ({split: {"docs", "tokens"}}), and the unfinished splits."""
    done, todo = {}, []
    for split, dset in splits.items():
        entry = saved.get(split, {"docs": 0, "tokens": 0})
        final = os.path.join(out_dir, f"{split}.bin")
        partial, final = file_size(final + ".partial"), file_size(final)
        if entry["docs"] == len(dset) and partial < 0 and final == 2 * entry["tokens"]:
            done[split] = entry  # renamed into place before the run stopped
            continue
        # A missing or short partial file cannot hold what the record says: this split starts over.
        done[split] = entry if partial >= 2 * entry["tokens"] else {"docs": 0, "tokens": 0}
        todo.append(split)
    return done, todo


def open_partial(partial, tokens):
    # Bytes past the recorded length are from a shard whose record never reached the disk: cut them off.
    f = open(partial, "r+b" if tokens else "wb")
    f.truncate(2 * tokens)
    f.seek(2 * tokens)
    return f


def append_durably(f, ids):
    f.write(ids.tobytes())  # not tofile: a short write there is an OSError without the errno that says why
    f.flush()
    os.fsync(f.fileno())  # on disk before the record says so


def text_only(splits):
    for split, dset in splits.items():
        if "text" not in dset.column_names:
            raise pu.UserError(f"the {split} split has no 'text' column (its columns: {', '.join(dset.column_names)})")
    return {split: dset.select_columns(["text"]) for split, dset in splits.items()}


def shard_tasks(splits, done, todo, shard_docs):
    """(split, start, stop) for every shard of documents not yet written, in the order they go into the files."""
    return [
        (split, start, min(start + shard_docs, len(splits[split])))
        for split in todo
        for start in range(done[split]["docs"], len(splits[split]), shard_docs)
    ]


def totals(done):
    """Documents and tokens written so far, over all splits."""
    return sum(entry["docs"] for entry in done.values()), sum(entry["tokens"] for entry in done.values())


def write_bins(splits, out_dir, recipe, num_proc=None, shard_docs=SHARD_DOCS):
    """Write <out_dir>/<split>.bin for every split, resuming an interrupted run; return {split: tokens}."""
    if shard_docs < 1:
        raise pu.UserError(f"--shard-docs={shard_docs} must be at least 1")
    with pu.writing(out_dir):
        os.makedirs(out_dir, exist_ok=True)
    splits = text_only(splits)
    gpt2_encoding()  # a missing tokenizer is one line here, not a traceback in every worker
    record, expected = os.path.join(out_dir, PROGRESS_NAME), fingerprint(splits, recipe)
    done, todo = resume_points(splits, out_dir, load_progress(record, expected))
    tasks = shard_tasks(splits, done, todo, shard_docs)
    total_docs, (first, _) = sum(map(len, splits.values())), totals(done)
    if first:
        print(f"resuming from {first:,} of {total_docs:,} documents, written by an earlier run", flush=True)
    files, progress = {}, pu.Progress("tokenizing", total_docs, unit="documents", first=first)
    try:
        bins = {split: os.path.join(out_dir, f"{split}.bin") for split in todo}
        files = {split: open_partial(bins[split] + ".partial", done[split]["tokens"]) for split in todo}
        save_progress(record, expected, done)
        for (split, _, stop), ids in zip(tasks, shard_tokens(splits, tasks, num_proc or pu.default_num_proc())):
            append_durably(files[split], ids)
            done[split] = {"docs": stop, "tokens": done[split]["tokens"] + len(ids)}
            save_progress(record, expected, done)
            docs, tokens = totals(done)
            progress.update(docs, f"{tokens:,} tokens")
        for split in todo:
            files.pop(split).close()
            os.replace(bins[split] + ".partial", bins[split])
    except KeyboardInterrupt:
        raise pu.UserError("interrupted: run the same command again to go on from here") from None
    except BrokenProcessPool:
        raise pu.UserError(
            "a worker process died (out of memory?): the work done so far is kept; run the same command again, "
            "with a smaller --num-proc, to go on from here"
        ) from None
    except OSError as exc:
        full = pu.os_errno(exc) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        what, fix = (f"cannot write {out_dir}", "free some disk space") if full else (str(exc.filename), "fix it")
        raise pu.UserError(
            f"{what} ({pu.reason(exc)}): the work done so far is kept; {fix} and run the same command again to go on"
        ) from None
    finally:
        progress.close(totals(done)[0])
        for f in files.values():
            f.close()
    os.unlink(record)
    return {split: entry["tokens"] for split, entry in done.items()}


def arg_parser(description, default_out_dir):
    """The options of every script built on this pipeline."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out-dir", "--out_dir", default=default_out_dir, help="default: beside the script")
    cores = pu.default_num_proc()
    parser.add_argument(
        "--num-proc", "--num_proc", type=int, default=cores, help="worker processes (default: %(default)s)"
    )
    parser.add_argument(
        "--shard-docs", "--shard_docs", type=int, default=SHARD_DOCS, help="documents per task (default: %(default)s)"
    )
    return parser
