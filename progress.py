"""How far a long task has come and the time left, at the rate since it began.

Nothing is shown for a task done within EVERY_S seconds. From then on, on a terminal the line is
redrawn in place; elsewhere (a log file, nohup) a line is printed every EVERY_S seconds. Used by
the data scripts, train.py's long evals and eval_hellaswag.py.
"""

import sys
import time

EVERY_S = 10.0  # seconds between lines where the line cannot be redrawn in place


def clock(seconds):
    """Seconds as H:MM:SS."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """update(done) with done out of total; close() ends the line on a terminal. Counts are shown
    divided by scale, in `unit`s (bytes as MB: unit="MB", scale=1e6); `first` were done before."""

    def __init__(self, what, total, unit="", scale=1, file=None, first=0):
        self.what, self.total, self.unit, self.scale, self.first = what, total, unit, scale, first
        self.file = file or sys.stderr
        self.in_place = self.file.isatty()
        self.start = self.shown = time.monotonic()
        self.started = False  # whether a line was shown

    def line(self, done, note=""):
        seconds = time.monotonic() - self.start
        rate = (done - self.first) / seconds if seconds > 0 else 0.0
        left = f", {clock((self.total - done) / rate)} left" if rate > 0 and done < self.total else ""
        share = f" ({done / self.total:.0%})" if self.total else ""
        unit = f" {self.unit}" if self.unit else ""
        note = f", {note}" if note else ""
        counts = f"{done / self.scale:,.0f} of {self.total / self.scale:,.0f}{unit}"
        return f"{self.what}: {counts}{share}{note}, {clock(seconds)} so far{left}"

    def update(self, done, note=""):
        now = time.monotonic()
        if now - self.shown < (0.5 if self.in_place and self.started else EVERY_S):
            return
        self.shown, self.started = now, True
        if self.in_place:  # over the last line, and clear what is left of it
            print(f"\r{self.line(done, note)}\x1b[K", end="", file=self.file, flush=True)
        else:
            print(self.line(done, note), file=self.file, flush=True)

    def close(self, done=None, note=""):
        """On a terminal, the final figures and the end of the line (if a line was shown)."""
        if self.in_place and self.started:
            print(f"\r{self.line(self.total if done is None else done, note)}\x1b[K", file=self.file, flush=True)
