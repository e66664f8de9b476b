"""Tiny Shakespeare with the GPT-2 BPE tokenizer: uint16 token ids in train.bin/val.bin.

Usage: python data/shakespeare/prepare.py [path/to/input.txt] [--out-dir DIR]
The input text is, in order: input.txt already in the out dir, the given path (or $NANOGPT_INPUT_FILE),
else a download of Tiny Shakespeare.
"""

from __future__ import annotations

from pathlib import Path

import tiktoken

from nanogpt_plus import prepare_utils as pu
from nanogpt_plus.tokenizer import gpt2_encoding

HERE = Path(__file__).resolve().parent

SCRIPT = "data/shakespeare/prepare.py"


def encode(text: str, enc: tiktoken.Encoding) -> list[int]:
    # encode_ordinary: "<|endoftext|>" in the text is plain text, never the special token.
    return enc.encode_ordinary(text)


def prepare(out_dir: str | Path = HERE, input_path: str | Path | None = None) -> dict[str, int]:
    """Write train.bin and val.bin into out_dir; return the counts."""
    out_dir = Path(out_dir)
    pu.make_out_dir(out_dir)
    text = pu.read_text(pu.ensure_input(out_dir, input_path, SCRIPT))
    enc = gpt2_encoding()
    # Split on characters before tokenizing, as classic nanoGPT does; token counts follow from that.
    train_text, val_text = pu.split_text(text)
    n_train = pu.write_tokens(encode(train_text, enc), out_dir / "train.bin")
    n_val = pu.write_tokens(encode(val_text, enc), out_dir / "val.bin")
    return {"chars": len(text), "train": n_train, "val": n_val}


def main(argv: list[str] | None = None) -> None:
    parser = pu.shakespeare_arg_parser("Prepare Tiny Shakespeare with the GPT-2 tokenizer.", HERE)
    args = parser.parse_args(argv)
    with pu.user_errors():
        counts = prepare(out_dir=args.out_dir, input_path=args.input)
    print(f"length of dataset in characters: {counts['chars']:,}")
    print(f"train.bin has {counts['train']:,} tokens")
    print(f"val.bin has {counts['val']:,} tokens")
    print(f"wrote train.bin, val.bin to {Path(args.out_dir).resolve()}")


if __name__ == "__main__":
    main()

# On Tiny Shakespeare (1,115,394 characters):
# train.bin has 301,966 tokens
# val.bin has 36,059 tokens
