"""The training log of a run, out_dir/train_log.csv, and its picture, out_dir/loss.png.

    python plot.py out-shakespeare-char                  # one run's curves, into loss.png
    python plot.py out-a out-b --out compare.png         # several runs side by side

train.py appends a row per log line (iter, loss of the last micro-batch, lr, time_ms, mfu) and a
row per eval (iter, train loss in `loss`, val_loss) and, when matplotlib is installed
(pip install matplotlib), redraws loss.png at each eval.
"""

import argparse
import csv
import io
import os
import sys
import threading
import time

from atomic import atomic_write
from errors import cannot_write, reason

HEADER = ("iter", "loss", "val_loss", "lr", "time_ms", "mfu")


def log_rows(path):
    """The rows of a train_log.csv as lists of cells, header first, with their line numbers. A last
    line without its newline was cut short (the run was killed while writing it): it is left out,
    and so are blank lines."""
    with open(path, newline="") as f:
        text = f.read()
    reader = csv.reader(io.StringIO(text[: text.rfind("\n") + 1]))
    try:
        return [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except csv.Error:  # e.g. a field beyond the csv module's limit: no log holds one
        raise ValueError(f"{path} is not a training log: line {reader.line_num} is no CSV row") from None


def read_log(path):
    """The rows of a train_log.csv: ([(iter, loss)] of the log lines, [(iter, train, val)] of the evals).
    A row that is not one of HEADER's is a ValueError that names its line."""
    rows = log_rows(path)
    if rows and rows[0][1][:3] != list(HEADER[:3]):
        raise ValueError(f"{path} is not a training log: its first line is not {','.join(HEADER)}")
    steps, evals = [], []
    for n, row in rows[1:]:
        try:
            if len(row) != len(HEADER):
                raise ValueError
            it, loss = int(row[0]), float(row[1])
            if row[2]:
                evals.append((it, loss, float(row[2])))
            else:
                steps.append((it, loss))
        except ValueError:
            shown = ",".join(row)[:40]
            raise ValueError(f"line {n} of {path} ({shown!r}) is no row of {','.join(HEADER)}: delete it") from None
    return steps, evals


def draw(out_dirs, png_path):
    """Train and val loss against iteration, one panel per run, side by side, into png_path; returns
    the matplotlib Figure (None without matplotlib)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(6 * len(out_dirs), 4.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(out_dirs), sharey=True, squeeze=False)[0]
    for ax, out_dir in zip(axes, out_dirs, strict=True):
        steps, evals = read_log(os.path.join(out_dir, "train_log.csv"))
        if steps:
            ax.plot(*zip(*steps), color="tab:blue", alpha=0.35, linewidth=0.8, label="train (each log line)")
        if evals:
            its, train, val = zip(*evals)
            ax.plot(its, train, "o-", color="tab:blue", label="train (eval)")
            ax.plot(its, val, "o-", color="tab:orange", label="val (eval)")
        ax.set(title=out_dir, xlabel="iteration", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_write(png_path) as f:  # a reader (or a kill) never meets half a picture
        fig.savefig(f, dpi=100, format="png")
    return fig


class TrainingLog:
    """train.py's log: rows appended to out_dir/train_log.csv (a new file only when asked to replace
    a run), and loss.png redrawn after an eval, in a thread so that training need not wait for it:
    at most every 10 seconds (a drawing takes the Python lock for about 0.1 s) and at the end.
    A run resumed at iteration `resumed_at` redoes what the stopped one did after its checkpoint
    (saved right after the eval at resumed_at): those rows go, so that none appears twice."""

    def __init__(self, out_dir, truncate, say, resumed_at=None):
        self.out_dir, self.say, self.drawing, self.drawn_at = out_dir, say, None, 0.0
        self.path = os.path.join(out_dir, "train_log.csv")
        if truncate or not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
            with open(self.path, "w") as f:
                f.write(",".join(HEADER) + "\n")
        elif resumed_at is not None:
            self.forget_after(resumed_at)

    def forget_after(self, it):
        """Drop the rows past the eval at iteration it, atomically."""
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) < it or int(r[0]) == it and r[2] != ""]
        if len(keep) < len(rows):
            with atomic_write(self.path, "w", newline="") as f:
                csv.writer(f, lineterminator="\n").writerows(keep)

    def row(self, *cells):
        with open(self.path, "a") as f:
            f.write(",".join("" if c is None else str(c) for c in cells) + "\n")

    def step_row(self, it, loss, lr, dt, mfu):
        self.row(it, loss, None, lr, f"{dt * 1000:.2f}", f"{mfu * 100:.2f}" if mfu >= 0 else None)

    def eval_row(self, it, losses, lr, mfu, last=False):
        self.row(it, losses["train"], losses["val"], lr, None, f"{mfu * 100:.2f}" if mfu >= 0 else None)
        if last or time.time() - self.drawn_at > 10:
            first = self.drawing is None
            self.wait()
            self.drawing = threading.Thread(target=self.draw, args=(first,), name="loss-plot")
            self.drawing.start()
            self.drawn_at = time.time()

    def draw(self, first):
        if draw([self.out_dir], os.path.join(self.out_dir, "loss.png")) is None and first:
            self.say(f"note: pip install matplotlib to get {self.out_dir}/loss.png, or run plot.py on it later")

    def wait(self):
        """Let the last drawing finish."""
        if self.drawing is not None:
            self.drawing.join()


def main(argv=None):
    parser = argparse.ArgumentParser(description="Draw the train and val loss of one or more runs side by side.")
    parser.add_argument("out_dirs", nargs="+", help="the out_dir of each run (it holds train_log.csv)")
    parser.add_argument("--out", default="loss.png", help="the picture to write (default: loss.png)")
    args = parser.parse_args(argv)
    for out_dir in args.out_dirs:
        path = os.path.join(out_dir, "train_log.csv")
        if not os.path.isfile(path):
            sys.exit(f"error: {path} not found: give the out_dir of a training run")
        try:
            read_log(path)
        except OSError as e:
            sys.exit(f"error: cannot read {path} ({reason(e)})")
        except UnicodeDecodeError:
            sys.exit(f"error: {path} is not a training log: it is not text")
        except ValueError as e:
            sys.exit(f"error: {e}")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        sys.exit(f"error: cannot write {args.out}: there is no folder {folder}; create it or give another --out")
    if os.path.isdir(args.out):
        sys.exit(f"error: --out {args.out} is a folder: give the picture's file name, e.g. --out {args.out}/loss.png")
    if not args.out.lower().endswith(".png"):  # (a loss.pdf holding a PNG would be a surprise)
        sys.exit(f"error: --out {args.out}: plot.py draws PNG pictures; give a file name ending in .png")
    try:
        fig = draw(args.out_dirs, args.out)
    except OSError as e:
        sys.exit(f"error: {cannot_write(args.out, e, '--out')}")
    if fig is None:
        sys.exit("error: plot.py needs matplotlib: pip install matplotlib")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
