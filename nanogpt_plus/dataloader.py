"""Batches of token windows from data/<dataset>/train.bin and val.bin (raw uint16 token ids). Batch `key` of a
split always holds the same windows, their starts drawn by a generator seeded by (seed, split, key): any process
draws any micro-batch, a DDP run's processes draw together what one would, a resume needs no data RNG state.
"""

import hashlib
import os

import numpy as np
import torch

from nanogpt_plus.errors import UserError, reason

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout, where the scripts are


def find_data_file(dataset, name):
    """data/<dataset>/<name> under the working directory, as nanoGPT looks for it, else beside these scripts
    (python /path/to/train.py from elsewhere); None if neither exists."""
    for root in ("", ROOT):
        path = os.path.join(root, "data", dataset, name)
        if os.path.isfile(path):
            return path
    return None


def how_to_prepare(dataset, again=False):
    """What makes data/<dataset>/'s bins (first, or again): its prepare.py, else (a misspelled name, your text)
    prepare_text.py."""
    if find_data_file(dataset, "prepare.py"):
        return f"run python data/{dataset}/prepare.py {'again' if again else 'first'}"
    if again:
        return f"prepare it again: python data/prepare_text.py FILE --name {dataset} --overwrite"
    return (f"check --dataset, or make it from your text: python data/prepare_text.py FILE --name {dataset} "
            f"(there is no data/{dataset}/prepare.py)")  # fmt: skip


def stream_seed(*parts):
    """A 63-bit seed that depends on every part (ints and strings) and on nothing else."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


class Batches:
    """Random windows of block_size + 1 tokens of a dataset: inputs x and targets y (x shifted by one), both
    (batch_size, block_size) int64, on `device`. Files up to in_memory_bytes are read once, larger ones mapped
    afresh for every batch (a long-lived np.memmap keeps growing the resident memory)."""

    def __init__(self, dataset, block_size, batch_size, device, seed=1337, in_memory_bytes=1 << 30):
        self.dataset, self.block_size, self.batch_size, self.seed = dataset, block_size, batch_size, seed
        self.device = torch.device(device)
        self.paths, self.arrays = {}, {}
        for split in ("train", "val"):
            path = find_data_file(dataset, f"{split}.bin")
            if path is None:
                raise UserError(
                    f"no {split} data for dataset {dataset!r}: data/{dataset}/{split}.bin is missing; "
                    + how_to_prepare(dataset)
                )
            size = os.path.getsize(path)
            if size % 2:  # a file cut short, or no token file: read on, every token after a cut is wrong
                raise UserError(
                    f"{path} is {size:,} bytes, not a whole number of 2-byte token ids (cut short, or no "
                    f"token file): {how_to_prepare(dataset, again=True)}"
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

    def check_vocabulary(self, meta_vocab_size, vocab_size):
        """One line unless the token ids of the bins (if in memory) are meta.pkl's characters (if any) and fit a
        model of vocab_size tokens."""
        needed = max(meta_vocab_size or 0, (self.max_token() or 0) + 1)
        if meta_vocab_size and needed > meta_vocab_size:  # the bins are of other text than meta.pkl's characters
            raise UserError(
                f"--dataset={self.dataset} holds token id {needed - 1} but its meta.pkl has {meta_vocab_size} "
                "characters: the bins and meta.pkl come from different texts; prepare the dataset again"
            )
        if needed > vocab_size:
            raise UserError(
                f"--dataset={self.dataset} needs a vocabulary of {needed} tokens but the model has vocab_size="
                f"{vocab_size}: train it from scratch or use a model with a large enough vocabulary"
            )

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
