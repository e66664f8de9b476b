"""Character-level Tiny Shakespeare: uint16 char ids in train.bin/val.bin, plus meta.pkl to decode them.

Usage: python data/shakespeare_char/prepare.py [path/to/input.txt] [--out-dir DIR]
The input text is, in order: input.txt already in the out dir, the given path (or $NANOGPT_INPUT_FILE),
else a download of Tiny Shakespeare.
"""

import os
import pickle

from nanogpt_plus import prepare_utils as pu
from nanogpt_plus.tokenizer import CharTokenizer, char_meta

HERE = os.path.dirname(os.path.abspath(__file__))


def prepare(out_dir=HERE, input_path=None):
    """Write train.bin, val.bin and meta.pkl into out_dir; return the counts."""
    text = pu.input_text(out_dir, input_path, "data/shakespeare_char/prepare.py")
    # the sorted distinct characters of the whole text (train and val alike), in classic nanoGPT's meta.pkl
    meta = char_meta(sorted(set(text)))
    meta_path = os.path.join(out_dir, "meta.pkl")
    chars = CharTokenizer(meta, meta_path, meta["vocab_size"])
    train_text, val_text = pu.split_text(text)
    with pu.dataset_files(out_dir, ("train.bin", "val.bin", "meta.pkl")) as f:  # all three new, or the old ones
        n_train = pu.write_tokens(chars.encode(train_text), f["train.bin"])
        n_val = pu.write_tokens(chars.encode(val_text), f["val.bin"])
        pickle.dump(meta, f["meta.pkl"])
    return {"chars": len(text), "vocab_size": meta["vocab_size"], "train": n_train, "val": n_val}


def main(argv=None):
    pu.shakespeare_main(prepare, "Prepare character-level Tiny Shakespeare.", HERE, argv)


if __name__ == "__main__":
    main()

# On Tiny Shakespeare (1,115,394 characters):
# vocab size: 65
# train.bin has 1,003,854 tokens
# val.bin has 111,540 tokens
