"""The training log of a run, out_dir/train_log.csv, and its picture, out_dir/loss.png.

    python plot.py out-shakespeare-char                  # one run's curves, into loss.png
    python plot.py out-a out-b --out compare.png         # several runs side by side

train.py appends a row per log line (iter, loss of the last micro-batch, lr, time_ms, mfu) and a
row per eval (iter, train loss in `loss`, val_loss) and, when matplotlib is installed
(pip install matplotlib), redraws loss.png at each eval.
"""

import argparse
import contextlib
import csv
import errno
import os
import sys
import threading
import time

from atomic import atomic_write
from errors import UserError, first_line

HEADER = ("iter", "loss", "val_loss", "lr", "time_ms", "mfu")


def read_log(path):
    """The rows of a train_log.csv: ([(iter, loss)] of the log lines, [(iter, train, val)] of the evals)."""
    steps, evals = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row["val_loss"]:
                evals.append((int(row["iter"]), float(row["loss"]), float(row["val_loss"])))
            else:
                steps.append((int(row["iter"]), float(row["loss"])))
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
    (saved right after the eval at resumed_at): those rows go, so that none appears twice. So do the
    blank and cut-short rows a killed run may leave. A file that cannot be written (a full disk) is
    one line: an error for the log, a note for the picture, which training can go on without."""

    def __init__(self, out_dir, truncate, say, resumed_at=None):
        self.out_dir, self.say, self.drawing, self.drawn_at, self.draw_failed = out_dir, say, None, 0.0, False
        self.path = os.path.join(out_dir, "train_log.csv")
        try:
            if truncate or not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
                with atomic_write(self.path, "w") as f:
                    f.write(",".join(HEADER) + "\n")
            else:
                self.forget_after(resumed_at)
        except OSError as e:
            raise UserError(self.cannot_write(e)) from None

    def cannot_write(self, e):
        hint = "free some disk space or " if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else ""
        return f"could not write {self.path} ({e.strerror}): {hint}choose another --out_dir"

    def forget_after(self, it=None):
        """Drop the rows past the eval at iteration it (if given), and the blank and cut-short ones, atomically."""
        with open(self.path, newline="") as f:
            *lines, cut = f.read().split("\n")  # cut: what follows the last newline, a line cut short if anything
        rows = list(csv.reader(lines))
        if not rows or tuple(rows[0]) != HEADER:
            raise UserError(
                f"{self.path} is not a train.py log (its first line is {(lines or [cut])[0][:40]!r}): "
                "move it away, or choose another --out_dir"
            )
        good = [r for r in rows[1:] if well_formed(r)]
        keep = [r for r in good if it is None or int(r[0]) < it or int(r[0]) == it and r[2] != ""]
        if len(good) < len(rows) - 1 or cut:
            dropped = len(rows) - 1 - len(good) + bool(cut)
            self.say(f"note: dropped {dropped} blank or cut-short line(s) of {self.path}")
        if len(keep) < len(rows) - 1 or cut:
            with atomic_write(self.path, "w", newline="") as f:
                csv.writer(f, lineterminator="\n").writerows([HEADER, *keep])

    def row(self, *cells):
        """Append a row; if the disk is full, the file is cut back to the rows before it."""
        data = (",".join("" if c is None else str(c) for c in cells) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as e:
            raise UserError(self.cannot_write(e)) from None
        end = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(fd, data) :]
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end)
            raise UserError(self.cannot_write(e)) from None
        finally:
            os.close(fd)

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
        png = os.path.join(self.out_dir, "loss.png")
        try:
            drawn = draw([self.out_dir], png)
        except Exception as e:  # a full disk, say: the run goes on, the picture is drawn again at the next eval
            if not self.draw_failed:
                why = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
                self.say(f"note: could not draw {png} ({why}); training goes on without it")
            self.draw_failed = True
            return
        if drawn is None and first:
            self.say(f"note: pip install matplotlib to get {self.out_dir}/loss.png, or run plot.py on it later")

    def wait(self):
        """Let the last drawing finish."""
        if self.drawing is not None:
            self.drawing.join()


def well_formed(row):
    """Whether a row of train_log.csv has its six cells: an iteration, a loss, and numbers or nothing in the rest."""
    try:
        int(row[0]), float(row[1]), [float(c) for c in row[2:] if c]
    except (ValueError, IndexError):
        return False
    return len(row) == len(HEADER)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Draw the train and val loss of one or more runs side by side.")
    parser.add_argument("out_dirs", nargs="+", help="the out_dir of each run (it holds train_log.csv)")
    parser.add_argument("--out", default="loss.png", help="the picture to write (default: loss.png)")
    args = parser.parse_args(argv)
    for out_dir in args.out_dirs:
        if not os.path.isfile(os.path.join(out_dir, "train_log.csv")):
            sys.exit(f"error: {out_dir}/train_log.csv not found: give the out_dir of a training run")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        sys.exit(f"error: cannot write {args.out}: there is no folder {folder}; create it or give another --out")
    if draw(args.out_dirs, args.out) is None:
        sys.exit("error: plot.py needs matplotlib: pip install matplotlib")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
