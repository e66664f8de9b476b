"""FineWeb-Edu's 10B-token sample with the GPT-2 BPE tokenizer: uint16 token ids in train.bin/val.bin.

Usage: python data/fineweb_edu/prepare.py [--parquet_dir DIR] [--val_docs N] [--out-dir DIR] [--num-proc N]
The data llm.c and build-nanogpt train GPT-2 124M on: HuggingFaceFW/fineweb-edu, sample-10BT, downloaded with
`datasets` (pip install 'nanogpt-plus[datasets]') or read from its parquet files (--parquet_dir). The first
--val_docs documents are val, the rest train. Disk: ~28GB of download, the Arrow cache, ~20GB of output. An
interrupted run goes on from where it stopped when the same command is run again.
"""

import os

from nanogpt_plus import prepare_utils as pu
from nanogpt_plus import token_bins

HERE = os.path.dirname(os.path.abspath(__file__))

HF_NAME = "HuggingFaceFW/fineweb-edu"
HF_CONFIG = "sample-10BT"
# ~10M tokens: plenty for a steady val loss, and a prefix, so it needs no shuffle of 10B tokens to carve out.
VAL_DOCS = 10_000


def parquet_files(parquet_dir):
    """Every .parquet file under the folder, in path order (the order their documents are read in)."""
    files = sorted(
        os.path.join(root, n) for root, _, names in os.walk(parquet_dir) for n in names if n.endswith(".parquet")
    )
    if not files:
        raise pu.UserError(f"no .parquet files under {parquet_dir}; pass the folder that holds FineWeb-Edu's shards")
    return files


def check_parquet(files):
    """Refuse a shard cut short, naming it (`datasets` would raise a traceback that does not): only each file's
    footer is read, which a cut-short file has lost."""
    import pyarrow.parquet as pq

    for path in files:
        try:
            pq.ParquetFile(path).close()
        except OSError as exc:  # pyarrow's IO errors are OSErrors (a file removed meanwhile, no permission)
            raise pu.UserError(f"cannot read {path} ({pu.reason(exc)})") from None
        except ValueError:  # pyarrow's ArrowInvalid: no parquet footer at the end of the file
            raise pu.UserError(
                f"{path} is cut short or damaged (not a whole parquet file): delete it and download it again, "
                "then run the same command again to go on"
            ) from None


def load_fineweb(parquet_dir=None, num_proc=None):
    """The whole sample as one Dataset: from the Hugging Face hub, or from local parquet shards."""
    datasets = pu.import_datasets("fineweb_edu")
    num_proc = num_proc or pu.default_num_proc()
    if parquet_dir is None:
        return pu.from_hub(datasets, HF_NAME, name=HF_CONFIG, split="train", num_proc=num_proc)
    files = parquet_files(parquet_dir)
    check_parquet(files)
    return datasets.load_dataset("parquet", data_files=files, split="train", num_proc=min(num_proc, len(files)))


def split_val_first(dataset, val_docs=VAL_DOCS):
    """val: the first val_docs documents; train: the rest, in order."""
    if not 0 < val_docs < len(dataset):
        raise pu.UserError(f"--val_docs must be between 1 and {len(dataset) - 1} (the dataset has {len(dataset)})")
    return {"train": dataset.select(range(val_docs, len(dataset))), "val": dataset.select(range(val_docs))}


def prepare(out_dir=HERE, parquet_dir=None, val_docs=VAL_DOCS, num_proc=None, shard_docs=token_bins.SHARD_DOCS):
    """Load the sample, split it, write train.bin/val.bin; return their token counts."""
    splits = split_val_first(load_fineweb(parquet_dir, num_proc), val_docs)
    recipe = {"dataset": f"{HF_NAME}/{HF_CONFIG}", "val_docs": val_docs}
    return token_bins.write_bins(splits, out_dir, recipe, num_proc=num_proc, shard_docs=shard_docs)


def main(argv=None):
    parser = token_bins.arg_parser("Prepare FineWeb-Edu (sample-10BT) with the GPT-2 tokenizer.", HERE)
    parser.add_argument("--parquet-dir", "--parquet_dir", help="read local parquet shards, not the hub")
    parser.add_argument("--val-docs", "--val_docs", type=int, default=VAL_DOCS, help="the first N documents are val")
    args = parser.parse_args(argv)
    with pu.user_errors():
        counts = prepare(args.out_dir, args.parquet_dir, args.val_docs, args.num_proc, args.shard_docs)
    pu.print_counts(counts, args.out_dir)


if __name__ == "__main__":
    main()

# Expected for sample-10BT (estimates from the dataset card's ~10B GPT-2 tokens in ~9.7M documents; not measured
# here):
# train.bin has ~10,000,000,000 tokens (~20GB)
# val.bin has ~10,000,000 tokens (~20MB)
