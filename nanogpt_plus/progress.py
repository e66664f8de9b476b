"""How far a long task has come and the time left (Progress: the data scripts, evals, HellaSwag); where a
training run's time went (TimeSplit) and the time it has left (TimeLeft, with the note on a long run on a CPU).
"""

import contextlib
import statistics
import sys
import time

EVERY_S = 10.0  # seconds between lines where the line cannot be redrawn in place


def duration(seconds):
    """A long duration in the unit a person reads it in: '50 minutes', '5.2 hours', '12 days', '348 years'."""
    minutes, hours, days = seconds / 60, seconds / 3600, seconds / 86400
    if minutes < 90:
        return f"{minutes:.0f} minutes"
    if hours < 48:
        return f"{hours:.1f} hours"
    if days < 730:
        return f"{days:,.0f} days"
    return f"{days / 365.25:,.0f} years"


def clock(seconds):
    """Seconds as H:MM:SS."""
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """update(done) with done out of total, at the rate since it began; close() ends the line on a terminal.
    Nothing is shown for a task done within EVERY_S seconds; then the line is redrawn in place on a terminal,
    printed every EVERY_S seconds elsewhere (a log file). Counts are shown divided by scale, in `unit`s (bytes
    as MB: unit="MB", scale=1e6); `first` were done before."""

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


class TimeSplit:
    """Where a training run's time went, for its last line: start-up (imports, data, model: all before the
    first step), compilation (what the first timed stretch of steps and the first of each kind of evaluation
    took over the later ones: compiling, recording the CUDA graph), training steps, evaluations, HellaSwag,
    and checkpoints with the log's last drawing. Made as the loop starts, at iteration first_iter."""

    def __init__(self, started, first_iter=0):
        self.started, self.loop_started = started, time.time()  # the process's start, and the loop's (now)
        self.durations = {"evaluations": [], "HellaSwag": [], "checkpoints": []}
        self.stretches = []  # (seconds, steps) of each timed stretch of training steps
        self.first_iter = first_iter
        self.stretch_start = (self.loop_started, first_iter)  # when, and at which iteration, the next one began

    def add(self, part, seconds):
        self.durations[part].append(seconds)

    def add_steps(self, seconds, steps):
        self.stretches.append((seconds, steps))

    @contextlib.contextmanager
    def timed(self, part, it):
        """Time a part of the loop at iteration it apart from the steps (an eval, HellaSwag, a checkpoint):
        the next stretch of steps begins as it ends."""
        start = time.time()
        yield
        self.add(part, time.time() - start)
        self.stretch_start = (time.time(), it)

    def steps_done(self, it):
        """The time per step and the number of steps of the stretch that ends with iteration it (a log line's)."""
        (start, first), now = self.stretch_start, time.time()
        self.add_steps(now - start, it + 1 - first)
        self.stretch_start = (now, it + 1)
        return (now - start) / (it + 1 - first), it + 1 - first

    def line(self, it):
        """At the end, at iteration it: 'time 41.0 s: start-up 3.1 s, compilation 6.2 s, 5000 training steps ...'."""
        now = time.time()
        spent, compiling = {}, 0.0
        for part, durations in self.durations.items():
            excess = max(0.0, durations[0] - statistics.median(durations[1:])) if len(durations) > 1 else 0.0
            if part != "checkpoints":  # (the first checkpoint compiles nothing)
                compiling += excess
                spent[part] = sum(durations) - excess
            else:
                spent[part] = sum(durations)
        if len(self.stretches) > 1:  # the first stretch at the pace of the later ones, the rest compiled
            pace = statistics.median(seconds / n for seconds, n in self.stretches[1:])
            compiling += max(0.0, self.stretches[0][0] - self.stretches[0][1] * pace)
        in_steps = now - self.loop_started - compiling - sum(spent.values())
        parts = [f"start-up {self.loop_started - self.started:.1f} s", f"compilation {compiling:.1f} s",
                 f"{it - self.first_iter} training steps {in_steps:.1f} s"]  # fmt: skip
        for part, durations in self.durations.items():
            if durations:
                count = f"{len(durations)} " if part != "checkpoints" else ""
                parts.append(f"{count}{part} {spent[part]:.1f} s")
        return f"time {now - self.started:.1f} s: " + ", ".join(parts)


def cpu_matmul_flops(n=1024):
    """The float32 FLOP/s of this CPU in an n x n matmul, the best of 3: more than training reaches on it."""
    import torch  # (here: the data scripts report their progress without torch)

    a = torch.full((n, n), 0.5)  # (not drawn at random: training's RNG stays where it was)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


HOPELESS_S = 7 * 86400  # a run that needs more than a week on a CPU is no run to start there
HALF_LIFE_STEPS = 20  # the time left follows the pace of about the last few dozen steps


class TimeLeft:
    """The time left of a training run at the end of its log lines (', eta H:MM:SS') and, on a CPU, the note on
    a run of more than an hour (once). The steps left go at the recent time per step: an average of the log
    lines' in which a line's weight halves with every HALF_LIFE_STEPS steps logged after it, to follow a change
    of speed within a few dozen steps; this process's first line is left out (its steps compile). The evals left
    go at the last one's duration, eval_seconds (before one, as 2 * eval_iters forwards of a third of a
    micro-step each), the HellaSwag evals at hellaswag_seconds: train.py sets both."""

    def __init__(self, max_iters, eval_interval, eval_iters, micro_steps, hellaswag_interval, on_cpu, say):
        self.max_iters, self.eval_interval, self.hellaswag_interval = max_iters, eval_interval, hellaswag_interval
        self.eval_iters, self.micro_steps = eval_iters, micro_steps
        self.on_cpu, self.say, self.noted = on_cpu, say, False
        self.eval_seconds = self.hellaswag_seconds = 0.0
        self.first_line_seen, self.step_seconds = False, None  # the recent time per step, once measured

    def evals_left(self, iter_num, interval):
        """The evaluations every `interval` iterations still to come, the one at max_iters included."""
        return self.max_iters // interval - iter_num // interval + (self.max_iters % interval != 0)

    def note_long_run(self, seconds):
        """On a CPU, a run of more than an hour says so, once, with the quick recipe; one of more than a week
        says plainly that it needs a GPU."""
        if self.on_cpu and seconds > 3600 and not self.noted:
            quick = "python train.py config/train_shakespeare_char.py trains a small model in minutes"
            if seconds > HOPELESS_S:
                self.say(f"note: this run needs about {duration(seconds)} on this CPU, far too long to train here: "
                         f"it needs a GPU. Without one, {quick}")  # fmt: skip
            else:
                self.say(f"note: this run needs about {duration(seconds)} on this CPU; without a GPU, {quick}")
            self.noted = True

    def note_before_start(self, iter_num, step_flops, cpu_flops=cpu_matmul_flops):
        """A model too big for a CPU says so before its first step: the FLOPs left (steps of step_flops, and
        the evals) at cpu_flops() FLOP/s, a probe run only where the run could last an hour."""
        evals = self.evals_left(iter_num, self.eval_interval)
        flops = step_flops * (self.max_iters - iter_num + evals * 2 * self.eval_iters / (3 * self.micro_steps))
        if flops > 3600e9:  # (else it ends within the hour even at 1e9 FLOP/s)
            self.note_long_run(flops / cpu_flops())

    def estimate(self, iter_num, dt, steps):
        """', eta ...' for the log line of iter_num, which timed `steps` steps at dt each ('' for the first)."""
        if not self.first_line_seen:
            self.first_line_seen = True
            return ""
        keep = 0.5 ** (steps / HALF_LIFE_STEPS)  # the earlier average's weight
        step = self.step_seconds = dt if self.step_seconds is None else keep * self.step_seconds + (1 - keep) * dt
        eval_time = self.eval_seconds or step * 2 * self.eval_iters / (3 * self.micro_steps)
        seconds = (self.max_iters - iter_num - 1) * step + self.evals_left(iter_num, self.eval_interval) * eval_time
        if self.hellaswag_interval:
            seconds += self.evals_left(iter_num, self.hellaswag_interval) * self.hellaswag_seconds
        self.note_long_run(seconds)
        return f", eta {clock(seconds)}"
