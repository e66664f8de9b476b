"""One line on a training run, for benchmarks/optimizers.sh: when its val loss first reached a target, its
best and last val loss, and its median time per iteration.

    python benchmarks/optimizer_report.py OUT_DIR STAMPED_STDOUT [--target 1.47]

OUT_DIR is the run's out_dir (train_log.csv); STAMPED_STDOUT is its printed output with the seconds
since the start in front of each line, as optimizers.sh keeps it.
"""

import argparse
import csv
import os
import re
import statistics


def eval_times(stamped_stdout):
    """{iteration: seconds since the start} of each `step N: ... val loss X` line."""
    times = {}
    with open(stamped_stdout) as f:
        for line in f:
            found = re.match(r"\s*([\d.]+) step (\d+): train loss [\d.]+, val loss [\d.]+$", line)
            if found:
                times[int(found.group(2))] = float(found.group(1))
    return times


def summary(out_dir, stamped_stdout, target=None):
    with open(os.path.join(out_dir, "train_log.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    evals = [(int(r["iter"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
    steps = [float(r["time_ms"]) for r in rows if not r["val_loss"] and r["time_ms"]][1:]  # not the compiling one
    ms = statistics.median(steps) if steps else float("nan")
    best_it, best = min(evals, key=lambda e: e[1])
    parts = []
    if target is not None:
        reached = next((it for it, v in evals if v <= target), None)
        if reached is None:
            parts.append(f"val <= {target} not reached in {evals[-1][0]} iters")
        else:
            wall = eval_times(stamped_stdout).get(reached, float("nan"))
            parts.append(
                f"val <= {target} at iter {reached}: {wall:.1f} s from start, {reached * ms / 1000:.1f} s of steps"
            )
    parts.append(f"best val {best:.4f} at iter {best_it}, last val {evals[-1][1]:.4f} at iter {evals[-1][0]}")
    parts.append(f"median {ms:.2f} ms/iter")
    return "; ".join(parts)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("stamped_stdout")
    parser.add_argument("--target", type=float, default=None, help="the val loss to reach")
    args = parser.parse_args()
    print(summary(args.out_dir, args.stamped_stdout, args.target))
