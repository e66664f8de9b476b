"""Keep torch's compiled bytecode in a cache of our own when its install ships without it.

Importing torch, Dynamo and Inductor executes about 4,000 Python source files. A normal install
keeps their bytecode (.pyc) beside them. Some machine images ship none and also tell Python not
to write any (PYTHONDONTWRITEBYTECODE=1), so every process compiles all of that source again:
8-11 s of every run on the H200 image this project is measured on, before any work starts.

When torch's sources have no bytecode beside them, the scripts point Python at a directory of
their own (sys.pycache_prefix; by default beside torch.compile's cache, so clearing one clears
both), let it write there, and compile the rest of those packages into it from a background
process on the spare cores: the first run already finds most of what it imports there, later
runs all of it. Python checks every cached file against its source's mtime and size as usual, so
an upgraded package is never run from stale bytecode. This overrides PYTHONDONTWRITEBYTECODE / -B
for that one folder, which only this user can write; NANOGPT_BYTECODE_CACHE=0 turns it all off.

train.py, sample.py and bench.py import this module before torch, for that effect.
"""

import getpass
import hashlib
import importlib.util
import os
import re
import stat
import subprocess
import sys
import tempfile
import threading

# What torch and torch.compile import, largest first; the first one decides whether to act.
PACKAGES = ("torch", "sympy", "networkx", "numpy", "triton", "mpmath", "jinja2")
SKIPPED_DIRS = {"tests", "test", "__pycache__"}  # never imported by training


def package_dir(name: str) -> str | None:
    """Where package `name` lives, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def has_bytecode_beside(pkg_dir: str) -> bool:
    """Whether the package's __init__ was compiled into the __pycache__ next to it."""
    source = os.path.join(pkg_dir, "__init__.py")
    return os.path.exists(importlib.util.cache_from_source(source))


def default_cache_dir() -> str:
    """A `pycache` folder inside torch.compile's cache (TORCHINDUCTOR_CACHE_DIR, or its default)."""
    root = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not root:  # the folder torch itself picks
        try:
            user = getpass.getuser()
        except (OSError, KeyError, ModuleNotFoundError):  # no user name in some containers
            user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
        root = os.path.join(tempfile.gettempdir(), "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))
    return os.path.join(root, "pycache")


def private_dir(path: str) -> bool:
    """Create path if needed; whether it and its parent are ours alone to write (bytecode found
    there is run, so a folder another user can write must not be used)."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            return False
        if not hasattr(os, "getuid"):
            return True  # no POSIX owners to check
        for folder in (path, os.path.dirname(os.path.abspath(path))):
            info = os.stat(folder)
            if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return False
        return True
    except OSError:
        return False


def use_private_cache(cache_dir: str, packages=PACKAGES, start_precompiler: bool = True) -> bool:
    """Send this process's bytecode (and its children's) to cache_dir if packages[0] has none.

    Returns whether it did. Does nothing when a prefix is already set (the user chose one),
    packages[0] is missing or already compiled beside its sources, or cache_dir is not private.
    """
    if sys.pycache_prefix is not None:
        return False
    first = package_dir(packages[0])
    if first is None or has_bytecode_beside(first) or not private_dir(cache_dir):
        return False
    sys.pycache_prefix = cache_dir
    sys.dont_write_bytecode = False
    os.environ["PYTHONPYCACHEPREFIX"] = cache_dir  # Inductor's compile workers import torch too
    if start_precompiler and os.environ.get("LOCAL_RANK", "0") == "0":  # one precompiler per machine under torchrun
        dirs = [first] + [d for d in map(package_dir, packages[1:]) if d]
        start_precompile(cache_dir, dirs)
    return True


def precompile_marker(cache_dir: str, dirs: list[str]) -> str:
    """The file that says these package folders (as installed now) were compiled into cache_dir."""
    key = "|".join([sys.version] + [f"{d}:{os.stat(d).st_mtime_ns}" for d in dirs])
    return os.path.join(cache_dir, "precompiled-" + hashlib.sha256(key.encode()).hexdigest()[:16])


def start_precompile(cache_dir: str, dirs: list[str]) -> None:
    """Compile `dirs` into cache_dir from a detached, low-priority process, unless already done."""
    marker = precompile_marker(cache_dir, dirs)
    if os.path.exists(marker):
        return
    try:
        child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), marker, *dirs],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C of the run leaves it to finish its few seconds
        )
    except OSError:
        return  # no process to spare: imports still fill the cache as they go
    threading.Thread(target=child.wait, daemon=True).start()  # reaped when done, not left a zombie


def sources_in_import_order(dirs: list[str]) -> list[str]:
    """Every .py file under dirs, shallowest first (packages import their top modules first)."""
    found = []
    for rank, top in enumerate(dirs):
        for here, subdirs, files in os.walk(top):
            subdirs[:] = [s for s in subdirs if s not in SKIPPED_DIRS]
            depth = os.path.relpath(here, top).count(os.sep) + (here != top)
            found += [(depth, rank, os.path.join(here, f)) for f in files if f.endswith(".py")]
    return [path for *_, path in sorted(found)]


def compile_quietly(path: str) -> None:
    import compileall
    import py_compile

    # skips files whose cached bytecode is current; timestamp checks, the cheapest at import
    compileall.compile_file(path, quiet=2, invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)


def hold_lock(path: str):
    """An exclusive lock on path, or None if another process holds it (freed when we exit)."""
    try:
        import fcntl
    except ImportError:
        return open(path, "a")  # no flock (Windows): a second precompiler only repeats work
    f = open(path, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def precompile(marker: str, dirs: list[str]) -> None:
    """Compile every source under dirs into sys.pycache_prefix on the spare cores, then mark it done.
    One at a time: runs started meanwhile find the lock held and leave it to this one."""
    from concurrent.futures import ProcessPoolExecutor

    if sys.pycache_prefix is None:
        sys.exit("bytecode_cache.py: set PYTHONPYCACHEPREFIX; it would otherwise write beside the sources")
    lock = hold_lock(marker + ".lock")
    if lock is None:
        return
    with lock:
        if hasattr(os, "nice"):
            os.nice(10)  # the run that started us, and Inductor's workers, come first
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
        with ProcessPoolExecutor(max(1, cores - 2)) as pool:
            for _ in pool.map(compile_quietly, sources_in_import_order(dirs), chunksize=8):
                pass
        with open(marker, "w"):
            pass


def enable_for_this_process() -> bool:
    """What importing this module does: use the default cache when it helps and is not turned off."""
    if os.environ.get("NANOGPT_BYTECODE_CACHE") == "0" or "torch" in sys.modules:
        return False  # turned off, or too late to matter
    return use_private_cache(default_cache_dir())


if __name__ == "__main__":  # the background precompiler: bytecode_cache.py MARKER DIR...
    precompile(sys.argv[1], sys.argv[2:])
elif __name__ != "__mp_main__":  # not when a spawned worker of the precompiler imports us again
    enable_for_this_process()
