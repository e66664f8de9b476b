"""User mistakes end a script with one line on stderr, `error: ...`, and exit status 1, no traceback."""

import sys


class UserError(Exception):
    """A mistake the user can fix; the message says what is wrong and how to fix it."""


interrupt_note = None  # a function giving the line Ctrl-C prints instead of "interrupted" ("": none)


def on_interrupt(note):
    """Let Ctrl-C print note() (say, where a run stopped and how to go on) instead of "interrupted"."""
    global interrupt_note
    interrupt_note = note


def report_user_errors():
    """From now on, an uncaught UserError, Ctrl-C or a GPU out of memory ends the process with one
    line instead of a traceback. Anything else is a bug and keeps its traceback."""
    default_hook = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, UserError):
            print(f"error: {value}", file=sys.stderr, flush=True)
        elif issubclass(kind, KeyboardInterrupt):
            line = interrupt_note() if interrupt_note else "interrupted"
            if line:
                print(line, file=sys.stderr, flush=True)
        elif kind.__name__ == "OutOfMemoryError":  # torch's: a batch or model too big for the GPU
            what = str(value).strip().split(". GPU")[0]  # "CUDA out of memory. Tried to allocate 1.2 GiB"
            print(
                f"error: out of GPU memory ({what}): lower --batch_size (raise --gradient_accumulation_steps "
                "to keep the tokens per iteration) or use a smaller model",
                file=sys.stderr,
                flush=True,
            )
        else:
            default_hook(kind, value, tb)

    sys.excepthook = hook


def first_line(e):
    """An exception as one short line: its type and the first line of its message."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__
