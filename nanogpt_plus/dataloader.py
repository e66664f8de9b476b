"""Batches of token windows from data/<dataset>/train.bin and val.bin (raw uint16 token ids).

Batch number `key` of a split always holds the same windows: their starts come from a generator
seeded by (seed, split, key). So any process can draw any micro-batch, the processes of a DDP run
together draw exactly the batches one process would, and a resumed run needs no data RNG state.
A character-level dataset's vocabulary is in its meta.pkl, loaded here without running code.
"""

import hashlib
import io
import os
import pickle

import numpy as np
import torch

from nanogpt_plus.errors import UserError, first_line, reason

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout, where the scripts are


def find_data_file(dataset, name):
    """data/<dataset>/<name> under the working directory, as nanoGPT looks for it, else beside
    these scripts (python /path/to/train.py from elsewhere); None if neither exists."""
    for root in ("", ROOT):
        path = os.path.join(root, "data", dataset, name)
        if os.path.isfile(path):
            return path
    return None


def stream_seed(*parts):
    """A 63-bit seed that depends on every part (ints and strings) and on nothing else."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


class Batches:
    """Random windows of block_size + 1 tokens of a dataset: inputs x and targets y (x shifted by
    one), both (batch_size, block_size) int64, on `device` (through pinned memory on CUDA).
    Files up to in_memory_bytes are read once; larger ones are memory-mapped afresh for every
    batch (a long-lived np.memmap keeps growing the resident memory)."""

    def __init__(self, dataset, block_size, batch_size, device, seed=1337, in_memory_bytes=1 << 30):
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.device = torch.device(device)
        self.paths, self.arrays = {}, {}
        for split in ("train", "val"):
            path = find_data_file(dataset, f"{split}.bin")
            if path is None:
                raise UserError(
                    f"no {split} data for dataset {dataset!r}: data/{dataset}/{split}.bin is missing; "
                    f"run python data/{dataset}/prepare.py first"
                )
            size = os.path.getsize(path)
            if size % 2:  # a file cut short, or no token file: read on, every token after a cut is wrong
                raise UserError(
                    f"{path} is {size:,} bytes, not a whole number of 2-byte token ids: it is cut short or no "
                    f"token file; run python data/{dataset}/prepare.py again"
                )
            tokens = size // 2
            if tokens < block_size + 1:
                raise UserError(
                    f"{path} holds {tokens} tokens, fewer than block_size + 1 = {block_size + 1}: "
                    "lower --block_size or prepare more data"
                )
            self.paths[split] = path
            try:
                self.arrays[split] = np.fromfile(path, dtype=np.uint16) if size <= in_memory_bytes else None
                self.tokens(split)  # (a large file is mapped here once, to know that it can be)
            except OSError as e:
                raise UserError(f"cannot read {path} ({reason(e)})") from None
        self.offsets = np.arange(block_size + 1, dtype=np.int64)

    def tokens(self, split):
        data = self.arrays[split]
        return np.memmap(self.paths[split], dtype=np.uint16, mode="r") if data is None else data

    def max_token(self):
        """The largest token id in the data when it is in memory (else None: too costly to scan)."""
        if any(a is None for a in self.arrays.values()):
            return None
        return max(int(a.max()) for a in self.arrays.values())

    def starts(self, split, key):
        gen = torch.Generator().manual_seed(stream_seed(self.seed, split, key))
        return torch.randint(len(self.tokens(split)) - self.block_size, (self.batch_size,), generator=gen)

    def get(self, split, key):
        """Batch number `key` (an int or a tuple of them) of a split: x and y."""
        windows = self.tokens(split)[self.starts(split, key).numpy()[:, None] + self.offsets]  # (B, T+1)
        x = torch.from_numpy(windows[:, :-1].astype(np.int64))
        y = torch.from_numpy(windows[:, 1:].astype(np.int64))
        return to_device(x, self.device), to_device(y, self.device)


def to_device(t, device):
    """A CPU tensor on the device: on CUDA through pinned memory, without waiting for the GPU."""
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# ---------------------------------------------------------------------------- meta.pkl


def dataset_meta(ckpt):
    """The dataset a checkpoint was trained on (its config's) and that dataset's meta.pkl, found as
    train.py finds it: a character-level model's vocabulary. Either is None where unknown or absent."""
    dataset = ckpt["config"].get("dataset") if isinstance(ckpt.get("config"), dict) else None
    return dataset, find_data_file(str(dataset), "meta.pkl") if dataset else None


class PlainUnpickler(pickle.Unpickler):
    """Builds only what pickle makes without importing anything: dicts, lists, str, int, ..."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def load_meta(path, keys=("vocab_size",)):
    """A character-level dataset's meta.pkl ({'vocab_size', 'itos', 'stoi'}) without running code;
    it must hold vocab_size and `keys` (train.py needs only the vocab_size, sample.py all three)."""
    try:
        with open(path, "rb") as f:
            meta = PlainUnpickler(io.BytesIO(f.read())).load()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) and "is not allowed" in str(e):
            raise UserError(f"refusing to load {path}: {e}; a meta.pkl holds only plain dicts, str and int") from None
        raise UserError(f"{path} is corrupt ({first_line(e)}): rerun the dataset's prepare.py") from None
    if not isinstance(meta, dict) or not {"vocab_size", *keys} <= set(meta):
        raise UserError(f"{path} is not a nanoGPT meta.pkl: it needs {', '.join(keys)}")
    if type(meta["vocab_size"]) is not int or meta["vocab_size"] < 1:
        raise UserError(f"{path} has an invalid vocab_size {meta['vocab_size']!r}: rerun the dataset's prepare.py")
    return meta


def char_vocabulary(meta, path, vocab_size):
    """The characters of a meta.pkl by id ({id: str}; nanoGPT's itos is a dict, a list also does),
    checked to be the vocabulary of a model of vocab_size tokens: a dataset prepared again from
    other text after training would decode the model's ids as other characters."""
    itos = dict(enumerate(meta["itos"])) if isinstance(meta["itos"], list) else meta["itos"]
    stoi = meta.get("stoi", {})
    plain = isinstance(itos, dict) and all(type(i) is int and type(ch) is str for i, ch in itos.items())
    if not plain or not isinstance(stoi, dict) or not all(type(ch) is str and type(i) is int for ch, i in stoi.items()):
        raise UserError(f"{path} is not a character vocabulary (its itos and stoi map ids and str): rerun prepare.py")
    if sorted(itos) != list(range(vocab_size)) or meta["vocab_size"] != vocab_size:
        raise UserError(
            f"{path} has {len(itos)} characters but the model has {vocab_size} tokens: the dataset was prepared "
            "again, from other text; prepare it from the model's own text"
        )
    return itos
