"""A run's training log, out_dir/train_log.csv, and its picture, out_dir/loss.png (plot.py draws it afterwards).

train.py appends a row per log line (iter, loss of the last micro-batch, lr, time_ms, mfu), a row per eval (iter,
train loss in `loss`, val_loss) and per HellaSwag eval (iter, hellaswag: its acc_norm), and, with matplotlib,
redraws loss.png at each eval. Logs written before the hellaswag column read alike.
"""

import atexit
import contextlib
import csv
import io
import os
import threading
import time

from nanogpt_plus.atomic import atomic_write
from nanogpt_plus.errors import UserError, cannot_write, reason

PENDING_NAME = "train_log.new.csv"  # a new run's log while the folder's own is an earlier run's
HEADER = ("iter", "loss", "val_loss", "lr", "time_ms", "mfu", "hellaswag")  # (older logs lack hellaswag)


def log_text(path):
    """The text of a train_log.csv; a file that is not UTF-8 text is a ValueError that names it."""
    with open(path, "rb") as f:
        try:
            return f.read().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not a training log: it is not text (byte {e.start:,} is no UTF-8)") from None


def log_rows(path, text=None):
    """The rows of a train_log.csv (its text, if read already) as lists of cells, header first, with their line
    numbers. A last line without its newline was cut short (by a kill while it was written): it is left out,
    and so are blank lines. What cannot be read as a log is a ValueError that names the file."""
    text = log_text(path) if text is None else text
    reader = csv.reader(io.StringIO(text[: text.rfind("\n") + 1]))
    try:
        return [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except csv.Error:  # e.g. a field beyond the csv module's limit: no log holds one
        raise ValueError(f"{path} is not a training log: line {reader.line_num} is no CSV row") from None


def read_log(path):
    """([(iter, loss)] of the log lines, [(iter, train, val)] of the evals, [(iter, acc_norm)] of the HellaSwag
    evals) of a train_log.csv, also of an earlier version's, which lacks the last columns of HEADER; a row that
    fits no header is a ValueError that names its line."""
    rows = log_rows(path)
    header = rows[0][1] if rows else list(HEADER)
    if header != list(HEADER[: len(header)]) or len(header) < 3:
        raise ValueError(f"{path} is not a training log: its first line is not {','.join(HEADER)}")
    steps, evals, hellaswag = [], [], []
    for n, cells in rows[1:]:
        try:
            if len(cells) != len(header):
                raise ValueError
            row = dict(zip(header, cells))
            if row.get("hellaswag"):
                hellaswag.append((int(row["iter"]), float(row["hellaswag"])))
            elif row["val_loss"]:
                evals.append((int(row["iter"]), float(row["loss"]), float(row["val_loss"])))
            else:
                steps.append((int(row["iter"]), float(row["loss"])))
        except ValueError:
            shown = ",".join(cells)[:40]
            raise ValueError(f"line {n} of {path} ({shown!r}) is no row of {','.join(header)}: delete it") from None
    return steps, evals, hellaswag


def draw(out_dirs, png_path):
    """Train and val loss against iteration into png_path, of one run or of several on the same axes (each in a
    colour of its own, val dashed), HellaSwag's acc_norm on a right-hand axis; the Figure (None without matplotlib)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(8, 5))
    FigureCanvasAgg(fig)
    ax, right = fig.subplots(), None
    several = len(out_dirs) > 1
    for k, out_dir in enumerate(out_dirs):
        steps, evals, hellaswag = read_log(os.path.join(out_dir, "train_log.csv"))
        run = f"{out_dir}: " if several else ""
        train, val, score = (f"C{k % 10}",) * 3 if several else ("tab:blue", "tab:orange", "tab:green")
        if steps:
            ax.plot(*zip(*steps), color=train, alpha=0.35, linewidth=0.8, label=f"{run}train (each log line)")
        if evals:
            its, train_loss, val_loss = zip(*evals)
            ax.plot(its, train_loss, "o-", color=train, label=f"{run}train (eval)")
            ax.plot(its, val_loss, "o--" if several else "o-", color=val, label=f"{run}val (eval)")
        if hellaswag:
            right = right or ax.twinx()  # (after the loss axes in fig.axes)
            right.plot(*zip(*hellaswag), "s:" if several else "s-", color=score, label=f"{run}HellaSwag acc_norm")
            right.set(ylabel="HellaSwag acc_norm")
    ax.set(title=", ".join(out_dirs), xlabel="iteration", ylabel="loss")
    ax.grid(alpha=0.3)
    lines = ax.get_lines() + (right.get_lines() if right else [])
    (right or ax).legend(handles=lines, fontsize="small")  # on the axes drawn last, so that no line covers it
    fig.tight_layout()
    with atomic_write(png_path) as f:  # a reader (or a kill) never meets half a picture
        fig.savefig(f, dpi=100, format="png")
    return fig


class TrainingLog:
    """train.py's log: rows appended to out_dir/train_log.csv, and loss.png redrawn after an eval in a thread, at
    most every 10 seconds (a drawing holds the Python lock for about 0.1 s) and at the end. A new run (`truncate`)
    starts a new log; while out_dir holds an earlier one, the new rows go to PENDING_NAME beside it, which takes
    its place when the new run's first checkpoint is written (adopt()) and goes if the run ends before: the old
    checkpoint keeps its log and picture until then. A run resumed at `resumed_at` drops the rows logged after
    its checkpoint (saved right after that eval), so that none appears twice, and the blank and cut-short lines
    a killed run may leave. A full disk is an error for the log, a note for the picture."""

    def __init__(self, out_dir, truncate, say, resumed_at=None):
        self.out_dir, self.say, self.drawing, self.drawn_at, self.draw_failed = out_dir, say, None, 0.0, False
        self.final = os.path.join(out_dir, "train_log.csv")
        self.pending = truncate and os.path.exists(self.final)
        self.path = os.path.join(out_dir, PENDING_NAME) if self.pending else self.final
        self.lock, self.draw_due = threading.RLock(), False  # (adopt() runs in the checkpoint writer's thread)
        if self.pending:
            atexit.register(self.discard)
        try:
            if truncate or not os.path.exists(self.path) or os.path.getsize(self.path) == 0:
                with atomic_write(self.path, "w") as f:
                    f.write(",".join(HEADER) + "\n")
            else:
                self.tidy(resumed_at)
        except OSError as e:
            raise cannot_write(self.path, e, "--out_dir") from None

    def tidy(self, resumed_at):
        """Rewrite the log atomically, if need be: with every column of HEADER (an earlier version's lacks the
        last), without blank and cut-short lines, without the rows past the eval at resumed_at (if given)."""
        try:
            text = log_text(self.path)
            rows = log_rows(self.path, text)
        except ValueError as e:
            raise UserError(f"{e}: move it away, or choose another --out_dir") from None
        lines = text.split("\n")
        header = rows[0][1] if rows else []
        if not header or header != list(HEADER[: len(header)]) or len(header) < 3:
            first = lines[0][:40]
            raise UserError(
                f"{self.path} is not a train.py log (its first line is {first!r}): move it away, or choose "
                "another --out_dir"
            )
        pad = [""] * (len(HEADER) - len(header))
        good = [cells + pad for _, cells in rows[1:] if well_formed(cells, header)]
        keep = [r for r in good if resumed_at is None or int(r[0]) < resumed_at or int(r[0]) == resumed_at and r[2]]
        dropped = len(lines) - 1 - len(good) - (lines[-1] == "")  # the lines that were no row
        if dropped:
            self.say(f"note: dropped {dropped} blank or cut-short line(s) of {self.path}")
        if dropped or pad or len(keep) < len(good):
            with atomic_write(self.path, "w", newline="") as f:
                csv.writer(f, lineterminator="\n").writerows([HEADER, *keep])

    def adopt(self, _label=None):
        """This run's first checkpoint is on disk: its log replaces the earlier run's, and the picture follows."""
        with self.lock:
            if not self.pending:
                return
            try:
                os.replace(self.path, self.final)
            except OSError as e:
                raise cannot_write(self.final, e, "--out_dir") from None
            self.path, self.pending = self.final, False
            if self.draw_due:
                self.redraw(last=True)

    def discard(self):
        """At exit, a new log never adopted goes: the folder's log is the one of the checkpoint still there."""
        if self.pending:
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def row(self, **cells):
        """Append a row of HEADER's cells; if the disk is full, the file is cut back to the rows before it."""
        data = (",".join("" if cells.get(c) is None else str(cells[c]) for c in HEADER) + "\n").encode()
        with self.lock:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            except OSError as e:
                raise cannot_write(self.path, e, "--out_dir") from None
            end = os.lseek(fd, 0, os.SEEK_END)
            try:
                while data:
                    data = data[os.write(fd, data) :]
            except OSError as e:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, end)
                raise cannot_write(self.path, e, "--out_dir") from None
            finally:
                os.close(fd)

    def step_row(self, it, loss, lr, dt, mfu):
        self.row(iter=it, loss=loss, lr=lr, time_ms=f"{dt * 1000:.2f}", mfu=f"{mfu * 100:.2f}" if mfu >= 0 else None)

    def eval_row(self, it, losses, lr, mfu, last=False):
        mfu = f"{mfu * 100:.2f}" if mfu >= 0 else None
        self.row(iter=it, loss=losses["train"], val_loss=losses["val"], lr=lr, mfu=mfu)
        self.redraw(last)

    def hellaswag_row(self, it, acc_norm, last=False):
        self.row(iter=it, hellaswag=f"{acc_norm:.6f}")
        self.redraw(last)

    def redraw(self, last):
        with self.lock:
            if self.pending:  # loss.png is the earlier run's until this one adopts the log
                self.draw_due = True
            elif last or time.time() - self.drawn_at > 10:
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
                self.say(f"note: could not draw {png} ({reason(e)}); training goes on without it")
            self.draw_failed = True
            return
        if drawn is None and first:
            self.say(f"note: pip install matplotlib to get {self.out_dir}/loss.png, or run plot.py on it later")

    def wait(self):
        """Let the last drawing finish."""
        if self.drawing is not None:
            self.drawing.join()


def well_formed(cells, header=HEADER):
    """Whether a row fits its header: an iteration, then numbers or nothing, at least one number."""
    try:
        int(cells[0]), [float(c) for c in cells[1:] if c]
    except (ValueError, IndexError):
        return False
    return len(cells) == len(header) and any(cells[1:])
