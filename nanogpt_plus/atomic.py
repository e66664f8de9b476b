"""Files and folders written so that a crash, a kill or a full disk never leaves half of one: everything a script
writes is written under a temp name beside its target, synced, then renamed over it; on a failure the temp goes.
"""

import contextlib
import errno
import os
import re
import shutil
import signal
import tempfile
import threading

UMASK = os.umask(0o022)  # read once at import: reading it sets it, which no background thread may do
os.umask(UMASK)

# the temp names this module gives: .<target>.<pid>.<random>.tmp
TEMP_NAME = re.compile(r"\.(?P<target>.+)\.(?P<pid>\d+)\.\w+\.tmp")


def temp_beside(path, folder=False):
    """A new temp file (or folder) beside path, named after it and this process; returns its path."""
    parent = os.path.dirname(os.path.abspath(path))
    prefix, suffix = f".{os.path.basename(os.path.abspath(path))}.{os.getpid()}.", ".tmp"
    if folder:
        tmp = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent)
        os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp's folder is the owner's alone; an output is as shared as any
        return tmp
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=parent)
    os.fchmod(fd, 0o666 & ~UMASK)
    os.close(fd)
    return tmp


def usual_permissions(path):
    """Give a file another library made its owner's alone (safetensors: 0600) an output's usual permissions."""
    os.chmod(path, 0o666 & ~UMASK)


@contextlib.contextmanager
def atomic_write(path, mode="wb", **open_kwargs):
    """A temp file beside path to write: synced and renamed over path when the block ends cleanly, deleted when
    it raises (path stays as it was)."""
    tmp = temp_beside(path)
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    sync_folder(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_files(paths, remove=()):
    """Temp files beside paths, open to write in binary ({path: file}), that replace them together (a dataset's
    train.bin, val.bin and meta.pkl): when the block ends cleanly all are synced, then renamed over their paths and
    the files at `remove` deleted, with Ctrl-C and SIGTERM held until that is done, so that no interrupt leaves some
    files new and others old; when the block raises, the temps go and every path stays as it was. (A folder in the
    way of a path is found before any rename; a rename that failed otherwise would leave the set half new.)"""
    temps, files = {}, {}
    try:
        for path in paths:
            temps[path] = temp_beside(path)
            files[path] = open(temps[path], "wb")
        yield files
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for path in (*paths, *remove):
            if os.path.isdir(path):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        with interrupts_deferred():
            for path, tmp in temps.items():
                os.replace(tmp, path)
            for path in remove:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
    except BaseException:
        for f in files.values():
            with contextlib.suppress(OSError):  # (closing flushes again what a full disk refused: refused again)
                f.close()
        for tmp in temps.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise
    for folder in {os.path.dirname(os.path.abspath(path)) for path in (*paths, *remove)}:
        sync_folder(folder)


@contextlib.contextmanager
def interrupts_deferred():
    """Ctrl-C and SIGTERM that arrive inside the block are delivered again as it ends, to the handlers
    they would have met (in the main thread; elsewhere signals never run Python code anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = {
        s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


@contextlib.contextmanager
def atomic_folder(path):
    """A fresh temp folder beside path to fill: it takes path's place when the block ends cleanly (the old
    folder removed only once the new one is in), and is deleted when it raises."""
    tmp = temp_beside(path, folder=True)
    try:
        yield tmp
        if os.path.isdir(path) and os.listdir(path):
            old = temp_beside(path, folder=True)
            os.rmdir(old)  # (only its name was wanted)
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)  # (an empty folder at path is replaced too)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    sync_folder(os.path.dirname(os.path.abspath(path)))


def remove_stale_temps(folder):
    """Delete the temps this module left in folder whose process was killed mid-write; return their names."""
    removed = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        m = TEMP_NAME.fullmatch(name)
        if m and not pid_alive(int(m.group("pid"))):
            path = os.path.join(folder, name)
            try:
                shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
                removed.append(name)
            except OSError:
                pass
    return removed


def pid_alive(pid):
    if pid == os.getpid():
        return False  # a leftover of an earlier process that had our pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process: leave its file alone
    return True


def sync_folder(folder):
    """Make a rename in folder durable (where the filesystem lets a folder be synced)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
