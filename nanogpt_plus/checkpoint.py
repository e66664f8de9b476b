"""Checkpoints and the out_dir that holds them: written atomically, loaded so they cannot run code.

A checkpoint is nanoGPT's dict (model, optimizer, model_args, iter_num, best_val_loss, config) plus
what an exact resume needs (rng_state, scaler), all plain tensors and values.
"""

import atexit
import contextlib
import os
import pickle
import random
import re
import shlex
import sys
import threading

import numpy as np
import torch

from model import ARCH_KEYS, GPT, MASK_SUFFIXES, GPTConfig, head_apart_from_embedding
from nanogpt_plus import parallel
from nanogpt_plus.atomic import atomic_write, interrupts_deferred, remove_stale_temps
from nanogpt_plus.errors import UserError, cannot_write, first_line, os_errno, reason, unpickling_problem

CKPT_NAME = "ckpt.pt"


def cpu_copy(obj, copies=None):
    """obj's nested dicts, lists and tuples with every tensor copied to the CPU, so training can
    change the originals while the copy is written. Tensors that are one view of one memory (the
    tied wte and lm_head) stay one tensor; state dicts keep their version metadata."""
    copies = {} if copies is None else copies
    if isinstance(obj, torch.Tensor):
        key = (obj.device, obj.data_ptr(), obj.dtype, tuple(obj.shape), obj.stride())
        if key not in copies:
            copies[key] = obj.detach().to("cpu", copy=True)
        return copies[key]
    if isinstance(obj, dict):
        out = type(obj)((k, cpu_copy(v, copies)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v, copies) for v in obj)
    return obj


class BackgroundWriter:
    """Saves checkpoints in a thread, one at a time, so training goes on while a file is written: submit()
    copies the state to the CPU (the file holds that moment) and returns. A failed write is a UserError at
    the next poll(), submit() or wait(), the file at the path still a complete earlier checkpoint, or none.
    The thread is not a daemon: the interpreter finishes a write in flight before it exits."""

    def __init__(self, written=None, on_written=None):
        self.thread, self.error = None, None
        self.written = written  # the label of the last checkpoint that reached the disk (a resumed run's: its own)
        self.on_written = on_written  # called with the label of each checkpoint once it is on disk

    def submit(self, obj, path, label=None):
        self.wait()
        copy = cpu_copy(obj)
        thread = threading.Thread(target=self._write, args=(copy, path, label), name="checkpoint-writer")
        with interrupts_deferred():  # a Ctrl-C inside start() would leave a thread that wait() cannot join
            thread.start()
            self.thread = thread

    def _write(self, obj, path, label):
        try:
            with atomic_write(path) as f:  # a crash leaves the previous checkpoint or the new one, never half
                torch.save(obj, f)
            self.written = label
            if self.on_written:
                self.on_written(label)
        except Exception as e:  # raised by wait(), in the main thread
            self.error = (path, e)

    def poll(self):
        """Raise a failed write as soon as it is known, without waiting for one in flight."""
        if self.thread is not None and not self.thread.is_alive():
            self.wait()

    def wait(self):
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            (path, e), self.error = self.error, None
            # (torch.save over a full disk raises a RuntimeError of its own, the OSError in its context)
            cause = next((c for c in (e, e.__cause__, e.__context__) if c is not None and os_errno(c)), None)
            why = reason(cause) if cause else "torch.save failed"  # (not its puzzles)
            there = f"the checkpoint of iter {self.written}" if self.written is not None else "a complete earlier one"
            raise UserError(
                f"could not write the checkpoint {path} ({why}); the file there, if any, is {there}: "
                "free some disk space or choose another --out_dir"
            )


def load(path, resume=False):
    """A checkpoint dict, loaded with weights_only=True so that a crafted file cannot run code, and
    checked to hold what a model needs (and, to resume, what training needs) in the types it needs."""
    if not os.path.isfile(path):
        raise UserError(
            f"no checkpoint at {path}: train one first (python train.py config/train_shakespeare_char.py) "
            "or point --out_dir at the folder that holds ckpt.pt"
        )
    try:
        # mmap: the processes of a job resuming a big model share the file's pages, not copies of it (torch
        # maps only its zip format: a file of its legacy format is read whole)
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip(path))
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e):  # it asks to import something: a class or, worse, a function
            raise UserError(
                f"refusing to load {path}: it holds objects other than tensors and plain values, "
                "which could run code; only load checkpoints you trust with plain contents"
            ) from None
        raise UserError(f"checkpoint {path} is corrupt ({unpickling_problem(e)}): restore it from a backup") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, ... for a truncated zip
        raise UserError(f"checkpoint {path} is truncated or corrupt ({first_line(e)}): restore it or retrain") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise UserError(f"{path} is not a nanoGPT checkpoint: it lacks the 'model' and 'model_args' entries")
    problem = structure_problem(ckpt, resume)
    if problem:
        raise UserError(f"{path} cannot be {'resumed' if resume else 'loaded'}: {problem}")
    return ckpt


def is_zip(path):  # torch.save's format since PyTorch 1.6
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return True  # (torch.load then says what is wrong)


def structure_problem(ckpt, resume):
    """What is wrong with the entries of a loaded checkpoint dict, in a few words; None if nothing."""
    model, args = ckpt["model"], ckpt["model_args"]
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        return f"its 'model' is a {type(model).__name__}, not a state dict of tensors"
    if not isinstance(args, dict):
        return f"its 'model_args' is a {type(args).__name__}, not a dict"
    for key in (*ARCH_KEYS, "dropout"):
        want = {"bias": (bool,), "dropout": (float, int)}.get(key, (int,))
        if key in args and type(args[key]) not in want:
            return f"its model_args[{key!r}] is {args[key]!r}, not {' or '.join(t.__name__ for t in want)}"
    if not isinstance(ckpt.get("config", {}), dict):
        return f"its 'config' is a {type(ckpt['config']).__name__}, not a dict"
    if not resume:
        return None
    missing = [k for k in ("optimizer", "iter_num", "best_val_loss") if k not in ckpt]
    if missing:
        return f"it holds a model but no training state (no {', '.join(missing)}): start anew with --out_dir=NEW_DIR"
    if type(ckpt["iter_num"]) is not int or ckpt["iter_num"] < 0:
        return f"its iter_num is {ckpt['iter_num']!r}, not a count of iterations"
    best = ckpt["best_val_loss"]
    if not (type(best) in (int, float) or isinstance(best, torch.Tensor) and best.numel() == 1):
        return f"its best_val_loss is a {type(best).__name__}, not a number"
    optimizer = ckpt["optimizer"]
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)):
        return f"its 'optimizer' is not an optimizer state dict (a {type(optimizer).__name__})"
    if not isinstance(optimizer.get("param_groups"), list):
        return "its optimizer state has no list of param_groups"
    if not isinstance(ckpt.get("scaler", {}), dict):
        return f"its 'scaler' is a {type(ckpt['scaler']).__name__}, not a gradient scaler's state dict"
    return None


def clean_state_dict(state_dict):
    """Strip torch.compile's `_orig_mod.` and DDP's `module.` prefixes, and drop the attention mask
    buffers that old nanoGPT checkpoints carry (they hold no weights)."""
    out = {}
    for k, v in state_dict.items():
        k = re.sub(r"^((_orig_mod|module)\.)+", "", k).replace("._orig_mod.", ".")
        if not k.endswith(MASK_SUFFIXES):
            out[k] = v
    return out


def model_from(ckpt, dropout=None, device=None):
    """The GPT of a checkpoint: its model_args and weights (dropout as saved, unless given). Given a CUDA
    device (plan.build_device), it is built there, its random init drawn from a copy of the random state:
    the draws that follow are nanoGPT's, as if it had been built on the CPU."""
    args = {k: ckpt["model_args"][k] for k in ARCH_KEYS if k in ckpt["model_args"]}
    missing = set(ARCH_KEYS) - set(args)
    if missing:
        raise UserError(f"checkpoint model_args lack {sorted(missing)}: it was not written by nanoGPT")
    args["dropout"] = ckpt["model_args"].get("dropout", 0.0) if dropout is None else dropout
    made_there = torch.device(device) if device else contextlib.nullcontext()
    try:
        with torch.random.fork_rng([device] if device else [], enabled=device is not None), made_there:
            model = GPT(GPTConfig(**args))
    except ValueError as e:
        raise UserError(f"checkpoint has an invalid architecture: {e}") from None
    state = clean_state_dict(ckpt["model"])
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a shape that contradicts model_args
        problem = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), first_line(e))
        raise UserError(f"checkpoint weights do not fit its model_args: {problem[:300]}") from None
    if head_apart_from_embedding(state):
        raise UserError("checkpoint has an output head apart from its token embedding: this GPT ties them, as nanoGPT")
    if result.missing_keys or result.unexpected_keys:
        raise UserError(
            "checkpoint weights do not fit its model_args: "
            f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
    return model


def resume_from(out_dir, init_from, config):
    """The checkpoint a run goes on from, loaded once: out_dir's for init_from='resume'; for 'auto', out_dir's
    if it holds one (refused if it is another run's: another dataset or architecture); else None."""
    path = os.path.join(out_dir, CKPT_NAME)
    if init_from != "resume" and not (init_from == "auto" and os.path.exists(path)):
        return None
    ckpt = load(path, resume=True)
    if init_from == "auto":
        saved = {"dataset": (ckpt.get("config") or {}).get("dataset"), **ckpt["model_args"]}
        for key in ("dataset", "n_layer", "n_head", "n_embd", "block_size", "bias"):
            if saved.get(key) != config[key]:
                raise UserError(
                    f"{path} is another run's checkpoint ({key} {saved.get(key)!r}, this run's {config[key]!r}): go on "
                    "from it with --init_from=resume, or choose another --out_dir"
                )
    return ckpt


def prepare_out_dir(out_dir, fresh, overwrite, say):
    """Create out_dir and hold it for this run; refuse to let a run that does not resume replace the
    checkpoint there, unless asked to; remove what killed runs left half-written."""
    made, folder = [], os.path.normpath(out_dir)  # the folders this run creates, the deepest first
    while folder and not os.path.exists(folder):
        made.append(folder)
        folder = os.path.dirname(folder)
    try:
        os.makedirs(out_dir, exist_ok=True)
        _made_folders.extend(made)
    except OSError as e:
        raise UserError(f"cannot create out_dir {out_dir}: {e.strerror}; choose another --out_dir") from None
    if not os.access(out_dir, os.W_OK):
        raise UserError(f"out_dir {out_dir} is not writable: choose another --out_dir")
    lock_out_dir(out_dir)
    if fresh and not overwrite and os.path.isfile(os.path.join(out_dir, CKPT_NAME)):
        raise UserError(
            f"{out_dir} already holds a checkpoint: go on from it with --init_from=resume, start this run "
            "elsewhere with --out_dir=NEW_DIR, or replace it with --overwrite=True"
        )
    for name in remove_stale_temps(out_dir):
        say(f"note: removed {os.path.join(out_dir, name)}, a partial checkpoint of a killed run")


_made_folders = []  # what prepare_out_dir created: removed at exit if the run left nothing in them
LOCK_NAME = ".train.lock"  # held by the run writing into its folder; it holds that run's pid
_locks = {}  # the lock files this process holds -> their descriptors


def lock_out_dir(out_dir):
    """Hold an OS lock on out_dir until this process ends, however it ends: the kernel drops it with the
    process, so a killed run leaves no stale lock. (Where there is no flock, Windows, runs are not kept apart.)"""
    try:
        import fcntl
    except ImportError:
        return
    path = os.path.join(out_dir, LOCK_NAME)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 20, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(
                f"{out_dir} is in use by another training run (pid {pid}): let it finish or stop it, "
                "or choose another --out_dir"
            ) from None
        except OSError:  # a filesystem without locks: go on unguarded
            os.close(fd)
            return
        try:  # the file locked may be one that the run holding it before removed as it ended: then again
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    _locks[path] = fd
    try:  # the pid, for the message of a run that meets the lock
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError as e:  # a full disk: nothing of this run can be written there
        unlock(path)
        raise cannot_write(path, e, "--out_dir") from None


def unlock(path):
    """Remove a lock file this process holds, then let go of it (in that order: a run that locks the
    removed file after us sees that it is gone, and takes a new one)."""
    fd = _locks.pop(path)
    with contextlib.suppress(OSError):
        os.unlink(path)
    os.close(fd)


@atexit.register
def unlock_all():  # (atexit runs after the interpreter has waited for a checkpoint being written)
    for path in list(_locks):
        unlock(path)
    for folder in _made_folders:  # a run that failed before it wrote anything leaves no new, empty out_dir
        try:
            os.rmdir(folder)
        except OSError:  # not empty: this run's work, or someone else's
            break


def interrupt_note(writer, out_dir, it, torchrun):
    """What Ctrl-C says, once a checkpoint being written is finished: where the run stopped, what its
    checkpoint holds and the command that goes on from it."""
    with contextlib.suppress(UserError):  # (the previous checkpoint is still there)
        writer.wait()
    saved = writer.written
    if saved is None:
        return f"interrupted at iter {it}, before this run saved a checkpoint"
    flags = f"--init_from=resume --out_dir={shlex.quote(out_dir)}"
    command = f"the same torchrun command with {flags}" if torchrun else f"python {shlex.quote(sys.argv[0])} {flags}"
    return f"interrupted at iter {it}; {os.path.join(out_dir, CKPT_NAME)} holds iter {saved}: resume with {command}"


OPTIMIZER_SETTINGS = ("weight_decay", "betas", "momentum", "lr_scale")  # what train.py's config sets in a group


def restore_training_state(ckpt, optimizer, scaler, rank, device, say, fsdp_model=None):
    """Put back the optimizer and gradient scaler states and this rank's RNGs, so that a resumed
    run goes on exactly as if it had never stopped (FSDP: a collective). The groups' settings that the config
    makes (weight decay, betas, Muon's momentum and its lr_scale) stay this run's: a key given now applies."""
    settings = [{k: group[k] for k in OPTIMIZER_SETTINGS if k in group} for group in optimizer.param_groups]
    try:
        if fsdp_model is not None:
            parallel.load_optimizer_state(fsdp_model, optimizer, ckpt["optimizer"])
        else:
            optimizer.load_state_dict(ckpt["optimizer"])
    except (KeyError, ValueError, RuntimeError, TypeError, AttributeError, IndexError) as e:
        raise UserError(f"the checkpoint's optimizer state does not fit the model: {first_line(e)}") from None
    for group, kept in zip(optimizer.param_groups, settings, strict=True):  # (loading replaced them with the saved)
        group.update(kept)
    try:
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError):
        raise UserError("the checkpoint's gradient scaler state is malformed: restore it or retrain") from None
    states = ckpt.get("rng_state")
    try:
        set_rng_state(states[rank], device)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError):
        say("note: the checkpoint holds no RNG state for this rank: dropout will not repeat the original run")


def rng_state(device):
    """Every RNG a training step may draw from, as tensors and plain lists (weights_only-safe). Only this
    process's GPU: asking for all of them would start a CUDA context on each."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "python": [py_version, list(py_state), py_gauss],
    }
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    if "cuda" in state and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
