"""How much the README's CPU recipe's best val loss moves with the seed, for train.py's batch sampler
(one seeded stream per micro-batch) and for nanoGPT's (one global torch RNG).

    python benchmarks/seed_spread.py --seeds 1337 1 2 3        # ~90 s per run on 2 cores

Each run trains the recipe in a subprocess with the seed of model init and batches replaced, then
evaluates its checkpoint on the whole val set (two tilings of block_size windows), which removes the
noise of the 20-batch estimate. Prints one row per run and a summary.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = (
    "config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=100 "
    "--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 "
    "--lr_decay_iters=2000 --dropout=0.0"
).split()


def train_once(order: str, seed: int, out_dir: str):
    """In this process: train.py's main with the seed and, for 'global', nanoGPT's batch order."""
    sys.path.insert(0, REPO)
    import torch

    import common
    import train

    train._SEED = seed
    if order == "global":

        def starts(self, split, key):  # every batch from the global RNG, as nanoGPT's get_batch
            return torch.randint(self.lengths[split] - self.block_size, (self.batch_size,))

        common.BatchSource.starts = starts
    train.main([*RECIPE, f"--out_dir={out_dir}"])


def full_val_loss(out_dir: str) -> float:
    sys.path.insert(0, REPO)
    import numpy as np
    import torch

    import common

    model = common.model_from_checkpoint(common.load_checkpoint(os.path.join(out_dir, "ckpt.pt"))).eval()
    data = np.fromfile(os.path.join(REPO, "data", "shakespeare_char", "val.bin"), dtype=np.uint16).astype(np.int64)
    T, total, count = model.config.block_size, 0.0, 0
    with torch.no_grad():
        for offset in (0, T // 2):
            n = (len(data) - 1 - offset) // T
            x = torch.from_numpy(data[offset : offset + n * T].reshape(n, T))
            y = torch.from_numpy(data[offset + 1 : offset + 1 + n * T].reshape(n, T))
            for i in range(0, n, 256):
                _, loss = model(x[i : i + 256], y[i : i + 256])
                total, count = total + loss.item() * len(x[i : i + 256]), count + len(x[i : i + 256])
    return total / count


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2, 3])
    p.add_argument("--orders", nargs="+", default=["stream", "global"], choices=["stream", "global"])
    p.add_argument("--work", default="out-seed-spread", help="folder for the runs' out_dirs")
    p.add_argument("--one", nargs=3, metavar=("ORDER", "SEED", "OUT_DIR"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        return train_once(args.one[0], int(args.one[1]), args.one[2])
    results = {order: [] for order in args.orders}
    for seed in args.seeds:
        for order in args.orders:
            out_dir = os.path.join(args.work, f"{order}-{seed}")
            cmd = [sys.executable, os.path.abspath(__file__), "--one", order, str(seed), out_dir]
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
            best = float(re.findall(r"best val loss ([0-9.]+)", proc.stdout)[-1])
            full = full_val_loss(os.path.join(REPO, out_dir))
            results[order].append((best, full))
            print(f"{order:6s} seed {seed:5d}: best val {best:.4f}, whole val set {full:.4f}", flush=True)
    for order, rows in results.items():
        bests, fulls = [r[0] for r in rows], [r[1] for r in rows]
        spread = f"sd {statistics.stdev(bests):.4f}" if len(bests) > 1 else ""
        whole = statistics.mean(fulls)
        print(f"{order}: best val mean {statistics.mean(bests):.4f} {spread}, whole val set mean {whole:.4f}")


if __name__ == "__main__":
    main()
