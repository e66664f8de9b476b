"""Character-level Tiny Shakespeare: uint16 char ids in train.bin/val.bin, plus meta.pkl to decode them.

Usage: python data/shakespeare_char/prepare.py [path/to/input.txt] [--out-dir DIR]
The input text is, in order: input.txt already in the out dir, the given path (or $NANOGPT_INPUT_FILE),
else a download of Tiny Shakespeare.
"""

from __future__ import annotations

from pathlib import Path

from nanogpt_plus import prepare_utils as pu
from nanogpt_plus.tokenizer import CharTokenizer, char_meta

HERE = Path(__file__).resolve().parent

SCRIPT = "data/shakespeare_char/prepare.py"


def prepare(out_dir: str | Path = HERE, input_path: str | Path | None = None) -> dict[str, int]:
    """Write train.bin, val.bin and meta.pkl into out_dir; return the counts."""
    out_dir = Path(out_dir)
    pu.make_out_dir(out_dir)
    text = pu.read_text(pu.ensure_input(out_dir, input_path, SCRIPT))
    # the sorted distinct characters of the whole text (train and val alike), in classic nanoGPT's meta.pkl
    meta = char_meta(sorted(set(text)))
    chars = CharTokenizer(meta, out_dir / "meta.pkl", meta["vocab_size"])
    train_text, val_text = pu.split_text(text)
    n_train = pu.write_tokens(chars.encode(train_text), out_dir / "train.bin")
    n_val = pu.write_tokens(chars.encode(val_text), out_dir / "val.bin")
    pu.write_pickle(meta, out_dir / "meta.pkl")
    return {"chars": len(text), "vocab_size": meta["vocab_size"], "train": n_train, "val": n_val}


def main(argv: list[str] | None = None) -> None:
    parser = pu.shakespeare_arg_parser("Prepare character-level Tiny Shakespeare.", HERE)
    args = parser.parse_args(argv)
    with pu.user_errors():
        counts = prepare(out_dir=args.out_dir, input_path=args.input)
    print(f"length of dataset in characters: {counts['chars']:,}")
    print(f"vocab size: {counts['vocab_size']:,}")
    print(f"train.bin has {counts['train']:,} tokens")
    print(f"val.bin has {counts['val']:,} tokens")
    print(f"wrote train.bin, val.bin, meta.pkl to {Path(args.out_dir).resolve()}")


if __name__ == "__main__":
    main()

# On Tiny Shakespeare (1,115,394 characters):
# vocab size: 65
# train.bin has 1,003,854 tokens
# val.bin has 111,540 tokens
