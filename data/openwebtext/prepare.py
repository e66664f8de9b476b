"""OpenWebText with the GPT-2 BPE tokenizer: uint16 token ids in train.bin/val.bin, as classic nanoGPT writes them.

Usage: python data/openwebtext/prepare.py [--out-dir DIR] [--num-proc N] [--shard-docs N] [--hf-name NAME]
Needs `datasets` (pip install 'nanogpt-plus[datasets]'), the network on the first run, and ~54GB in the Hugging
Face cache plus ~17GB of output. Tokenizing (nanogpt_plus/token_bins.py) uses every core in bounded memory, and an
interrupted run goes on from where it stopped when the same command is run again.
"""

import os

from nanogpt_plus import prepare_utils as pu
from nanogpt_plus import token_bins

HERE = os.path.dirname(os.path.abspath(__file__))

HF_NAME = "openwebtext"
# The classic split: a 0.05% validation set, shuffled with a fixed seed so it is reproducible.
TEST_SIZE = 0.0005
SEED = 2357


def raw_dataset(dataset, hf_name, num_proc):
    """The raw dataset, a DatasetDict of one 'train' split: the hub's, or the one given (a bare Dataset too)."""
    datasets = pu.import_datasets("openwebtext")
    if dataset is None:
        return pu.from_hub(datasets, hf_name, num_proc=num_proc or pu.default_num_proc())
    return datasets.DatasetDict({"train": dataset}) if isinstance(dataset, datasets.Dataset) else dataset


def split_train_val(dataset, test_size=TEST_SIZE, seed=SEED):
    """Carve the validation set out of the raw 'train' split; returns a DatasetDict train/val."""
    split = dataset["train"].train_test_split(test_size=test_size, seed=seed, shuffle=True)
    split["val"] = split.pop("test")
    return split


def prepare(out_dir=HERE, dataset=None, num_proc=None, test_size=TEST_SIZE, seed=SEED, hf_name=HF_NAME,
            shard_docs=token_bins.SHARD_DOCS):  # fmt: skip
    """Load (or take) the raw dataset, split it, write train.bin/val.bin; return their token counts."""
    splits = split_train_val(raw_dataset(dataset, hf_name, num_proc), test_size=test_size, seed=seed)
    recipe = {"dataset": hf_name, "test_size": test_size, "seed": seed}
    return token_bins.write_bins(splits, out_dir, recipe, num_proc=num_proc, shard_docs=shard_docs)


def main(argv=None):
    parser = token_bins.arg_parser("Prepare OpenWebText with the GPT-2 tokenizer.", HERE)
    parser.add_argument("--hf-name", default=HF_NAME, help="Hugging Face dataset name (default: %(default)s)")
    args = parser.parse_args(argv)
    with pu.user_errors():
        counts = prepare(args.out_dir, num_proc=args.num_proc, hf_name=args.hf_name, shard_docs=args.shard_docs)
    pu.print_counts(counts, args.out_dir)


if __name__ == "__main__":
    main()

# Classic nanoGPT figures for OpenWebText (not measured here):
# train.bin has ~9,035,582,198 tokens (~17GB)
# val.bin has ~4,434,897 tokens (~8.5MB)
