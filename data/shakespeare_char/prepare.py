"""Character-level Tiny Shakespeare: uint16 char ids in train.bin/val.bin, plus meta.pkl to decode them.

Usage: python data/shakespeare_char/prepare.py [path/to/input.txt] [--out-dir DIR]
The input text is, in order: input.txt already in the out dir, the given path (or $NANOGPT_INPUT_FILE),
else a download of Tiny Shakespeare.
"""

from __future__ import annotations

from pathlib import Path

from nanogpt_plus import prepare_utils as pu

HERE = Path(__file__).resolve().parent

SCRIPT = "data/shakespeare_char/prepare.py"


def build_vocab(text: str) -> tuple[dict[str, int], dict[int, str]]:
    """stoi/itos over the sorted distinct characters of the whole text (train and val alike)."""
    chars = sorted(set(text))
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    return stoi, itos


def encode(text: str, stoi: dict[str, int]) -> list[int]:
    return [stoi[ch] for ch in text]


def decode(ids, itos: dict[int, str]) -> str:
    return "".join(itos[int(i)] for i in ids)


def prepare(out_dir: str | Path = HERE, input_path: str | Path | None = None) -> dict[str, int]:
    """Write train.bin, val.bin and meta.pkl into out_dir; return the counts."""
    out_dir = Path(out_dir)
    pu.make_out_dir(out_dir)
    text = pu.read_text(pu.ensure_input(out_dir, input_path, SCRIPT))
    stoi, itos = build_vocab(text)
    train_text, val_text = pu.split_text(text)
    n_train = pu.write_tokens(encode(train_text, stoi), out_dir / "train.bin")
    n_val = pu.write_tokens(encode(val_text, stoi), out_dir / "val.bin")
    # Same plain dict as classic nanoGPT, so sample.py can read meta.pkl from either project.
    pu.write_pickle({"vocab_size": len(itos), "itos": itos, "stoi": stoi}, out_dir / "meta.pkl")
    return {"chars": len(text), "vocab_size": len(itos), "train": n_train, "val": n_val}


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
