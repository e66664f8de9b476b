"""User mistakes end a script with one line on stderr, `error: ...`, and exit status 1, no traceback."""

import errno
import os
import re
import signal
import sys


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and how to fix it."""


interrupt_note = None  # a function giving the line Ctrl-C prints instead of "interrupted" ("": none)


def on_interrupt(note):
    """Let Ctrl-C print note() (where a run stopped, how to go on) instead of "interrupted", and SIGTERM (kill,
    schedulers) stop the process as Ctrl-C does, not dead in its tracks."""
    global interrupt_note
    interrupt_note = note
    signal.signal(signal.SIGTERM, interrupt)


def interrupt(signum, frame):
    raise KeyboardInterrupt


def finishing(signum, frame):
    """Ctrl-C (or SIGTERM) again while an interrupted process finishes (the checkpoint being written, its exit),
    pressed when nothing seems to happen: said, not a traceback that leaves the checkpoint half-written; once more
    ends the process at once (the earlier checkpoint, if any, stays whole)."""
    print("still finishing the checkpoint being written: press Ctrl-C once more to quit without it", file=sys.stderr)
    signal.signal(signum, signal.SIG_DFL)


# What to do when a batch does not fit, in the keys of the scripts that train (train.py, bench.py)
TRAINING_MEMORY_ADVICE = "lower --batch_size (raise --gradient_accumulation_steps to keep the tokens per iteration)"


def report_user_errors(memory_advice=TRAINING_MEMORY_ADVICE):
    """From now on, an uncaught UserError, Ctrl-C or running out of memory ends the process with one
    line instead of a traceback, and a closed pipe on stdout quietly. Anything else is a bug and
    keeps its traceback. memory_advice: what lowers this script's memory, in its own keys."""
    default_hook = sys.excepthook

    def hook(kind, value, tb):
        line = None
        if issubclass(kind, UserError):
            line = f"error: {value}"
        elif issubclass(kind, KeyboardInterrupt):
            if interrupt_note:  # (train.py's: it waits for the checkpoint being written)
                for signum in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(signum, finishing)
            line = interrupt_note() if interrupt_note else "interrupted"
        elif issubclass(kind, BrokenPipeError):  # `python sample.py | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (no complaint at exit either)
        elif issubclass(kind, MemoryError) or "DefaultCPUAllocator: can't allocate memory" in str(value):
            asked = re.search(r"allocate (\d+) bytes", str(value))  # torch's CPU allocator says how much
            what = f" (tried to allocate {int(asked.group(1)) / 2**30:.2f} GiB)" if asked else ""
            line = f"error: out of memory{what}: {memory_advice} or use a smaller model"
        elif kind.__name__ == "OutOfMemoryError":  # torch's: a batch or model too big for the GPU
            what = str(value).strip().split(". GPU")[0]  # "CUDA out of memory. Tried to allocate 1.2 GiB"
            line = f"error: out of GPU memory ({what}): {memory_advice} or use a smaller model"
        else:
            default_hook(kind, value, tb)
        if line:
            print(line, file=sys.stderr, flush=True)

    sys.excepthook = hook


def first_line(e):
    """An exception as one short line: its type and the first line of its message."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def unpickling_problem(e):
    """What torch.load(weights_only=True) found wrong with a file, in a few words: a global it will not import
    ('GLOBAL ...': a crafted file that could run code), else its unpickler's finding, without torch's advice to
    load the file with weights_only=False."""
    text = str(e)
    detail = text.partition("WeightsUnpickler error:")[2] or text
    return next((line.strip()[:200] for line in detail.splitlines() if line.strip()), type(e).__name__)


def reason(e):
    """Why an operation failed, in a few words and without the library's text: the system's reason
    for an OS error ('No space left on device', also inside a Rust library's message), an HTTP
    status, else the exception's type ('ConnectionError')."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status:
        return f"HTTP {status}"
    code = os_errno(e)
    return os.strerror(code) if code else type(e).__name__


def os_errno(e):
    """The errno of an OS error, or of one a library reports as '... (os error 28)'; None if none."""
    if isinstance(e, OSError) and e.errno:
        return e.errno
    code = re.search(r"\(os error (\d+)\)", str(e))
    return int(code.group(1)) if code else None


def cannot_write(path, e, elsewhere):
    """The UserError for a file that could not be written: what, why and the fix (`elsewhere`: the
    flag that chooses another place, e.g. '--out_dir')."""
    full = os_errno(e) in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    fix = f"free some disk space or choose another {elsewhere}" if full else f"choose another {elsewhere}"
    return UserError(f"cannot write {path} ({reason(e)}): {fix}")
