"""Tiny Shakespeare with the GPT-2 BPE tokenizer: uint16 token ids in train.bin/val.bin.

Usage: python data/shakespeare/prepare.py [path/to/input.txt] [--out-dir DIR]
The input text is, in order: input.txt already in the out dir, the given path (or $NANOGPT_INPUT_FILE),
else a download of Tiny Shakespeare.
"""

import os

from nanogpt_plus import prepare_utils as pu
from nanogpt_plus.tokenizer import gpt2_encoding

HERE = os.path.dirname(os.path.abspath(__file__))


def encode(text, enc):
    return enc.encode_ordinary(text)


def prepare(out_dir=HERE, input_path=None):
    """Write train.bin and val.bin into out_dir; return the counts."""
    text = pu.input_text(out_dir, input_path, "data/shakespeare/prepare.py")
    enc = gpt2_encoding()
    # Split on characters before tokenizing, as classic nanoGPT does; token counts follow from that.
    train_text, val_text = pu.split_text(text)
    # (a meta.pkl of a character-level dataset once in this folder goes: train.py would read these ids as characters)
    with pu.dataset_files(out_dir, ("train.bin", "val.bin"), remove=("meta.pkl",)) as f:
        n_train = pu.write_tokens(encode(train_text, enc), f["train.bin"])
        n_val = pu.write_tokens(encode(val_text, enc), f["val.bin"])
    return {"chars": len(text), "train": n_train, "val": n_val}


def main(argv=None):
    pu.shakespeare_main(prepare, "Prepare Tiny Shakespeare with the GPT-2 tokenizer.", HERE, argv)


if __name__ == "__main__":
    main()

# On Tiny Shakespeare (1,115,394 characters):
# train.bin has 301,966 tokens
# val.bin has 36,059 tokens
