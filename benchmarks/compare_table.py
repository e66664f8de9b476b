"""The table of benchmarks/compare_classic.sh, from its results.tsv (work, side, value per line).

python benchmarks/compare_table.py /tmp/compare_classic/results.tsv
"""

import statistics
import sys
from collections import defaultdict


def read(path):
    """{work: {side: [values]}}, and the env lines."""
    values, env = defaultdict(lambda: defaultdict(list)), {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            work, side, value = line.rstrip("\n").split("\t")
            if work == "env":
                env[side] = value
            else:
                values[work][side].append(value)
    return values, env


def median(values, work, side):
    """The median of a work's figures for a side, or None where it has none (a failed run)."""
    try:
        return statistics.median(float(v) for v in values[work][side])
    except (ValueError, statistics.StatisticsError):
        return None


def table(values):
    """Markdown rows: work, classic, ours, ratio."""
    rows = []

    def row(label, work, unit, ratio, classic_work=None, digits=2):
        c, o = median(values, classic_work or work, "classic"), median(values, work, "ours")
        if c is None and o is None:
            return
        show = lambda v: "-" if v is None else f"{v:,.{digits}f} {unit}".strip()  # noqa: E731
        rows.append(f"| {label} | {show(c)} | {show(o)} | {ratio(c, o) if c and o else ''} |")

    runs = len(values["sample"]["ours"])
    time_ratio = lambda c, o: f"{o / c:.2f}x the time"  # noqa: E731
    rate_ratio = lambda c, o: f"{c / o:.2f}x the tokens/s"  # noqa: E731
    mem_ratio = lambda c, o: f"{o / c:.2f}x the memory"  # noqa: E731
    faster = lambda c, o: f"{c / o:.1f}x faster"  # noqa: E731
    row("shakespeare_char, start to exit, empty compile cache", "train fresh", "s", time_ratio, digits=1)
    row("the same again, compile cache warm", "train warm", "s", time_ratio, digits=1)
    row("ms per training iteration (median of the last 100 logs), warm run", "iter warm", "ms", time_ratio)
    row("best val loss, empty-cache run", "best val fresh", "", lambda c, o: f"{o - c:+.4f}", digits=4)
    row("best val loss, warm run", "best val warm", "", lambda c, o: f"{o - c:+.4f}", digits=4)
    for b in (12, 32):
        row(f"GPT-2 124M training step, batch {b} (bench.py)", f"bench b{b}", "ms", rate_ratio)
        row(f"peak GPU memory, batch {b}", f"bench b{b} memory", "GiB", mem_ratio)
    row(f"sample.py 10 x 500 tokens, whole process (median of {runs})", "sample", "s", faster)
    row("the same as one batch (--batch_samples=True; classic: one by one)", "sample batched", "s", faster, "sample")
    return rows


def main():
    values, env = read(sys.argv[1])
    print(f"{env.get('date', '')}: {env.get('gpu', '')}; host {env.get('cpu', '')}; {env.get('software', '')}")
    print()
    print("| work | classic nanoGPT | this project | ratio |")
    print("| --- | --- | --- | --- |")
    print("\n".join(table(values)))


if __name__ == "__main__":
    main()
