"""A stand-in for timing eval_hellaswag.py where HellaSwag cannot be downloaded: FOLDER/hellaswag_val.jsonl
with 10,042 items of random words, about as long as HellaSwag's, and FOLDER/ckpt.pt, a GPT-2 124M-shaped
model with random weights (its scores mean nothing; its speed is the real one's).

    python benchmarks/hellaswag_synthetic.py /tmp/hs
    python eval_hellaswag.py --out_dir=/tmp/hs --hellaswag_file=/tmp/hs/hellaswag_val.jsonl
"""

import json
import os
import random
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # model.py: not installed
from model import GPT, GPTConfig  # noqa: E402
from nanogpt_plus.atomic import atomic_write  # noqa: E402

WORDS = "a man woman dog the ball rope kitchen knife slowly then is are of and to in on with runs jumps".split()


def write_items(path, n=10_042, seed=0):
    rng = random.Random(seed)
    text = lambda lo, hi: " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))  # noqa: E731
    with atomic_write(path, "w") as f:
        for i in range(n):  # contexts of about 10 to 100 tokens, endings of 5 to 40
            ctx = text(10, 100)
            item = {"ind": i, "ctx": ctx, "endings": [text(5, 40) for _ in range(4)], "label": rng.randrange(4)}
            f.write(json.dumps(item | {"split": "val", "activity_label": "synthetic", "source_id": str(i)}) + "\n")


if __name__ == "__main__":
    folder = sys.argv[1] if len(sys.argv) > 1 else "hellaswag-synthetic"
    os.makedirs(folder, exist_ok=True)
    write_items(os.path.join(folder, "hellaswag_val.jsonl"))
    model_args = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, bias=False, vocab_size=50304, dropout=0.0)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**model_args))
    ckpt = dict(model=model.state_dict(), optimizer={}, model_args=model_args, iter_num=0, best_val_loss=1e9)
    with atomic_write(os.path.join(folder, "ckpt.pt")) as f:  # (checkpoint.save, gone from the package)
        torch.save(ckpt | {"config": {"dataset": "openwebtext"}}, f)
    print(f"wrote {folder}/hellaswag_val.jsonl (10,042 items) and {folder}/ckpt.pt (random GPT-2 124M)")
