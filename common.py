"""What train.py, sample.py and bench.py share: user errors, device and dtype, checkpoints, meta.pkl.

Everything loaded from disk goes through here, so that no checkpoint or meta.pkl can run code.
"""

import gc
import hashlib
import io
import math
import os
import pickle
import random
import re
import sys
import tempfile
import threading
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

CHECKPOINT_NAME = "ckpt.pt"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class UserError(Exception):
    """A mistake the user can fix: reported as one line, without a traceback."""


def run_main(main, *args, **kwargs):
    """Run a script's main; a UserError becomes `error: ...` on stderr and exit status 1."""
    try:
        result = main(*args, **kwargs)
        # The interpreter's last garbage collection walks every object torch, TorchDynamo and
        # Inductor created, about a second at exit; ours are closed and flushed by now, so let
        # the collector skip them all.
        gc.freeze()
        return result
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)


# ---------------------------------------------------------------------------- device and dtype


def default_device() -> str:
    """The best device present: cuda, then mps, then cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def default_dtype(device: str) -> str:
    """bfloat16 where the GPU has it, float16 on older CUDA GPUs, float32 elsewhere."""
    if device_type_of(device) == "cuda" and torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def retain_freed_memory(max_block_bytes: int = 32 << 20) -> bool:
    """Ask glibc to keep freed blocks of up to max_block_bytes for reuse instead of handing them
    back to the kernel. A CPU training step frees and reallocates the same activation buffers
    each time; by default each comes back as fresh pages to fault in and zero (about 2,000 page
    faults and several ms of kernel time per step for the small CPU recipe). Changes no numbers.
    Returns False where it does not apply (not glibc)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, max_block_bytes)) and bool(mallopt(M_TRIM_THRESHOLD, 4 * max_block_bytes))


def device_type_of(device: str) -> str:
    return device.split(":")[0]


def check_device(device: str) -> str:
    """Validate a device string and return its type ('cuda', 'cpu', 'mps')."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} asked for but no CUDA GPU is available: use --device=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"device {device!r} asked for but MPS is not available: use --device=cpu")
    elif dev.type != "cpu":
        raise UserError(f"unsupported device {device!r}: use cpu, cuda, cuda:N or mps")
    return dev.type


def check_dtype(device: str, dtype: str) -> torch.dtype:
    """Validate dtype for the device and return the torch dtype."""
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if dtype == "bfloat16" and device_type_of(device) == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU does not support bfloat16: use --dtype=float16 (or float32)")
    return DTYPES[dtype]


def autocast_context(device_type: str, dtype: str, cache: bool = True):
    """Mixed precision for forward passes; float32 runs without autocast. cache=False for a
    forward recorded as a CUDA graph: cached casts would be freed while the graph still uses them."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=DTYPES[dtype], cache_enabled=cache)


def enable_tf32():
    """TF32 matmuls and convolutions on Ampere and newer, as nanoGPT does."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


class CapturedCall:
    """fn(*inputs) recorded once as a CUDA graph, then replayed with one launch per call.

    A call copies its inputs into the recorded ones and replays every kernel fn launched; the
    outputs are the same tensors at every call, valid until the next one. Recording runs fn
    `warmup` times first on a side stream (CUDA's rule; torch.compile compiles there), calling
    before_each() ahead of every run and of the recording. The CUDA RNG state is put back
    afterwards, so replays draw the same random numbers (dropout) as if the warm-up never ran.
    """

    def __init__(self, fn, example_inputs, before_each=lambda: None, warmup=2):
        from model import record_cuda_graph

        self.inputs = [t.clone() for t in example_inputs]
        self.device = self.inputs[0].device  # not necessarily the current one (--device=cuda:1)
        rng = torch.cuda.get_rng_state(self.device)
        self.graph, self.outputs = record_cuda_graph(lambda: fn(*self.inputs), self.device, warmup, before_each)
        torch.cuda.set_rng_state(rng, self.device)

    def __call__(self, *inputs):
        for recorded, new in zip(self.inputs, inputs, strict=True):
            if new.shape != recorded.shape or new.dtype != recorded.dtype:  # copy_ would broadcast or cast
                raise ValueError(
                    f"recorded for {recorded.dtype} {tuple(recorded.shape)}, given {new.dtype} {tuple(new.shape)}"
                )
            recorded.copy_(new)
        with torch.cuda.device(self.device):
            self.graph.replay()
        return self.outputs


# ---------------------------------------------------------------------------- checkpoints


def save_checkpoint(obj, path: str):
    """Write atomically: a temp file in the same folder, fsync, then rename over the old one.

    A crash at any moment leaves either the previous checkpoint or the new one, never half.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".ckpt-{os.getpid()}-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def snapshot(obj, _copies=None):
    """A copy of a checkpoint's nested dicts, lists and tuples with every tensor copied to the
    CPU, so that training can go on changing the originals while the copy is written. Tensors
    that are the same view of the same memory (tied weights: wte and lm_head) stay one tensor,
    as torch.save would store them; state dicts keep their class and version metadata."""
    copies = {} if _copies is None else _copies
    if isinstance(obj, torch.Tensor):
        key = (obj.device, obj.data_ptr(), obj.dtype, tuple(obj.shape), obj.stride())
        if key not in copies:
            copies[key] = obj.detach().to("cpu", copy=True)
        return copies[key]
    if isinstance(obj, dict):
        out = type(obj)((k, snapshot(v, copies)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v, copies) for v in obj)
    return obj


class CheckpointWriter:
    """Writes checkpoints (atomically, see save_checkpoint) in a background thread, one at a time.

    submit() takes a CPU snapshot at once, so the file holds the state of that moment, then
    returns while the file is written and synced; training goes on meanwhile. poll() reports a
    failed write once it is known; submit() and wait() wait for the write in flight first. A
    failure is a UserError, and the file at the path is then still a complete earlier checkpoint
    (or none). The thread is not a daemon: the interpreter finishes the write before it exits,
    also after an error.
    """

    def __init__(self):
        self._thread = None
        self._error = None

    def submit(self, obj, path: str):
        self.wait()
        copy = snapshot(obj)
        self._thread = threading.Thread(target=self._write, args=(copy, path), name="checkpoint-writer")
        self._thread.start()

    def _write(self, obj, path: str):
        try:
            save_checkpoint(obj, path)
        except Exception as e:  # reported by wait(), in the main thread
            self._error = (path, e)

    def poll(self):
        """Report a failed write as soon as it is known, without waiting for one in flight."""
        if self._thread is not None and not self._thread.is_alive():
            self.wait()

    def wait(self):
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            (path, e), self._error = self._error, None
            raise UserError(
                f"could not write the checkpoint {path} ({first_line(e)}); the file there, if any, is a complete "
                "earlier checkpoint: free some disk space or choose another --out_dir"
            )


_TEMP_CHECKPOINT = re.compile(r"^\.ckpt-(\d+)-[A-Za-z0-9_]+\.tmp$")


def remove_stale_checkpoint_temps(folder: str) -> list[str]:
    """Delete the temp files that save_checkpoint left in folder when its process was killed
    mid-write (`.ckpt-<pid>-*.tmp` whose pid no longer runs); never anything else."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMP_CHECKPOINT.match(name)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        try:
            os.unlink(os.path.join(folder, name))
            removed.append(name)
        except OSError:
            pass
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a leftover of an earlier process that had our pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's process: leave its file alone
    return True


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load a checkpoint with weights_only=True, so a crafted file cannot run code."""
    if not os.path.isfile(path):
        raise UserError(
            f"no checkpoint at {path}: train one first (python train.py ...) or point --out_dir at its folder"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e):  # it asks to import something: a class or, worse, a function
            raise UserError(
                f"refusing to load {path}: it holds objects other than tensors and plain values, "
                "which could run code; only load checkpoints you trust with plain contents"
            ) from None
        raise UserError(f"checkpoint {path} is corrupt ({first_line(e)}): restore it from a backup") from None
    except Exception as e:  # torch raises RuntimeError/EOFError/... for truncated zips
        raise UserError(f"checkpoint {path} is truncated or corrupt ({first_line(e)}): restore it or retrain") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise UserError(f"{path} is not a nanoGPT checkpoint: it lacks the 'model' and 'model_args' entries")
    return ckpt


def first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def clean_state_dict(state_dict: dict) -> dict:
    """Strip torch.compile's `_orig_mod.` and DDP's `module.` prefixes, and drop the attention
    mask buffers that old nanoGPT checkpoints carry (they hold no weights)."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            while k.startswith(prefix):
                k = k[len(prefix) :]
        k = k.replace("._orig_mod.", ".")
        if k.endswith((".attn.bias", ".attn.masked_bias")):  # the mask buffer, not c_attn.bias
            continue
        out[k] = v
    return out


def model_from_checkpoint(ckpt: dict, dropout=None):
    """Build a GPT from a checkpoint's model_args and weights."""
    from model import ARCH_KEYS, GPT, GPTConfig

    args = {k: ckpt["model_args"][k] for k in ARCH_KEYS if k in ckpt["model_args"]}
    missing = set(ARCH_KEYS) - set(args)
    if missing:
        raise UserError(f"checkpoint model_args lack {sorted(missing)}: it was not written by nanoGPT")
    args["dropout"] = ckpt["model_args"].get("dropout", 0.0) if dropout is None else dropout
    try:
        model = GPT(GPTConfig(**args))
    except ValueError as e:
        raise UserError(f"checkpoint has an invalid architecture: {e}") from None
    state = clean_state_dict(ckpt["model"])
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserError(
            "checkpoint weights do not fit its model_args: "
            f"missing {result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
    return model


# ---------------------------------------------------------------------------- meta.pkl


class _PlainUnpickler(pickle.Unpickler):
    """Admits only what pickle builds without importing anything: dicts, lists, str, int, ..."""

    def find_class(self, module, name):
        raise _Refused(f"global {module}.{name} is not allowed")


class _Refused(pickle.UnpicklingError):
    """A meta.pkl asked for an importable object (what a code-running pickle needs)."""


def load_meta(path: str, required=("vocab_size", "itos", "stoi")) -> dict:
    """Read a char-level meta.pkl ({'vocab_size', 'itos', 'stoi'}) without running code.

    train.py only needs the vocabulary size, so it asks for `required=("vocab_size",)`.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    try:
        meta = _PlainUnpickler(io.BytesIO(data)).load()
    except _Refused as e:
        raise UserError(f"refusing to load {path}: {e}; a meta.pkl holds only plain dicts, strings and ints") from None
    except Exception as e:
        raise UserError(f"{path} is corrupt ({first_line(e)}): rerun the dataset's prepare.py") from None
    if not (isinstance(meta, dict) and set(required) <= set(meta)):
        raise UserError(f"{path} is not a nanoGPT meta.pkl: it needs {', '.join(required)}")
    vocab_size = meta.get("vocab_size", 1)
    if type(vocab_size) is not int or vocab_size < 1:
        raise UserError(f"{path} has an invalid vocab_size {vocab_size!r}: rerun the dataset's prepare.py")
    return meta


# ---------------------------------------------------------------------------- learning rate


def get_lr(it: int, learning_rate: float, warmup_iters: int, lr_decay_iters: int, min_lr: float) -> float:
    """nanoGPT's schedule: linear warmup, then cosine decay from learning_rate to min_lr at
    lr_decay_iters, then min_lr. With no room for a decay (lr_decay_iters <= warmup_iters),
    the warmup ends straight at min_lr instead of dividing by zero."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters or lr_decay_iters <= warmup_iters:
        return min_lr
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)  # 0 .. 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))  # 1 .. 0
    return min_lr + coeff * (learning_rate - min_lr)


# ---------------------------------------------------------------------------- distributed (torchrun)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a torchrun job; the defaults describe a single process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    enabled: bool = False

    @property
    def master(self) -> bool:
        return self.rank == 0


def torchrun_rank() -> int | None:
    """The global rank torchrun gave this process, or None when it was not started by torchrun."""
    rank = int(os.environ.get("RANK", -1))
    return None if rank == -1 else rank


def init_distributed(backend: str, device: str) -> tuple[DistInfo, str]:
    """Join the torchrun process group when there is one; return it and this process's device.

    On CUDA each process takes the GPU cuda:LOCAL_RANK and the configured backend (nccl);
    on CPU the group uses gloo, whatever the backend says.
    """
    rank = torchrun_rank()
    if rank is None:
        return DistInfo(), device
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if device_type_of(device) == "cuda":
        device = f"cuda:{local_rank}"
        check_device(device)
        torch.cuda.set_device(device)
    elif backend != "gloo":
        if rank == 0:
            print(f"note: backend {backend!r} needs CUDA; using gloo on {device}")
        backend = "gloo"
    try:
        dist.init_process_group(backend=backend)
    except (RuntimeError, ValueError) as e:
        raise UserError(f"cannot start the {backend} process group ({first_line(e)}): check --backend") from None
    return DistInfo(rank, local_rank, world_size, True), device


def close_distributed(wait: bool = False):
    """Leave the process group; with wait, first let every rank arrive (rank 0 may still be
    saving), since tearing gloo down while a peer is busy can abort the process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def split_grad_accum(gradient_accumulation_steps: int, world_size: int) -> int:
    """The micro-steps each process runs so that all processes together run the configured number."""
    if gradient_accumulation_steps % world_size != 0:
        raise UserError(
            f"gradient_accumulation_steps={gradient_accumulation_steps} does not divide among {world_size} "
            f"processes: use a multiple of {world_size}"
        )
    return gradient_accumulation_steps // world_size


# ---------------------------------------------------------------------------- random number generators


def rng_state(device: str) -> dict:
    """Every RNG a training step may draw from, as tensors and plain lists (weights_only-safe).

    On CUDA only the state of the device this process uses is kept: asking for all devices
    would start a CUDA context on every GPU of the host from every process.
    """
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "python": [py_version, list(py_state), py_gauss],
    }
    if device_type_of(device) == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: str):
    """Restore what rng_state saved."""
    torch.set_rng_state(state["torch"].cpu())
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state), py_gauss))
    if "cuda" in state and device_type_of(device) == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


# ---------------------------------------------------------------------------- token data


def find_data_dir(dataset: str, script_dir: str) -> str:
    """data/<dataset> under the working directory, else beside the script (python /path/to/train.py)."""
    candidates = [os.path.join("data", dataset), os.path.join(script_dir, "data", dataset)]
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, "train.bin")):
            return folder
    raise UserError(
        f"no training data for dataset {dataset!r}: {os.path.join(candidates[0], 'train.bin')} is missing; "
        f"run python data/{dataset}/prepare.py first"
    )


def stream_seed(*parts) -> int:
    """A 63-bit seed that depends on every part (ints and strings) and on nothing else."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


class BatchSource:
    """Random windows of block_size + 1 tokens from <data_dir>/{train,val}.bin (uint16).

    Batch number `key` of a split always holds the same windows: its start positions come
    from a generator seeded by (seed, split, key), so any process can draw any micro-batch
    and a resumed run needs no data RNG. Files up to in_memory_bytes are read into memory
    once; larger ones are memory-mapped afresh for each batch (a long-lived np.memmap keeps
    growing the resident memory). Batches land on `device`, through pinned memory on CUDA.
    """

    splits = ("train", "val")

    def __init__(self, data_dir, block_size, batch_size, device, seed=1337, in_memory_bytes=1 << 30):
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.device = torch.device(device)
        self.paths, self.lengths, self.arrays = {}, {}, {}
        for split in self.splits:
            path = os.path.join(data_dir, f"{split}.bin")
            if not os.path.isfile(path):
                raise UserError(f"{path} is missing: run python data/{os.path.basename(data_dir)}/prepare.py")
            size = os.path.getsize(path)
            if size // 2 < block_size + 1:
                raise UserError(
                    f"{path} holds {size // 2} tokens, fewer than block_size + 1 = {block_size + 1}: "
                    "lower --block_size or prepare more data"
                )
            self.paths[split], self.lengths[split] = path, size // 2
            self.arrays[split] = np.fromfile(path, dtype=np.uint16) if size <= in_memory_bytes else None
        self.offsets = np.arange(block_size + 1, dtype=np.int64)

    def max_token(self) -> int | None:
        """The largest token id in the data, when it is held in memory (else None: too costly)."""
        if any(a is None for a in self.arrays.values()):
            return None
        return max(int(a.max()) for a in self.arrays.values())

    def starts(self, split: str, key) -> torch.Tensor:
        gen = torch.Generator().manual_seed(stream_seed(self.seed, split, key))
        return torch.randint(self.lengths[split] - self.block_size, (self.batch_size,), generator=gen)

    def get_batch(self, split: str, key):
        """Inputs x and targets y (x shifted by one token), both (batch_size, block_size) int64."""
        data = self.arrays[split]
        if data is None:
            data = np.memmap(self.paths[split], dtype=np.uint16, mode="r")
        windows = data[self.starts(split, key).numpy()[:, None] + self.offsets]  # one gather: (B, T+1)
        x = torch.from_numpy(windows[:, :-1].astype(np.int64))
        y = torch.from_numpy(windows[:, 1:].astype(np.int64))
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)
