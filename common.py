"""What train.py, sample.py and bench.py share: user errors, device and dtype, checkpoints, meta.pkl.

Everything loaded from disk goes through here, so that no checkpoint or meta.pkl can run code.
"""

import io
import os
import pickle
import sys
import tempfile
from contextlib import nullcontext

import torch

CHECKPOINT_NAME = "ckpt.pt"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class UserError(Exception):
    """A mistake the user can fix: reported as one line, without a traceback."""


def run_main(main, *args, **kwargs):
    """Run a script's main; a UserError becomes `error: ...` on stderr and exit status 1."""
    try:
        return main(*args, **kwargs)
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


def autocast_context(device_type: str, dtype: str):
    """Mixed precision for forward passes; float32 runs without autocast."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=DTYPES[dtype])


def enable_tf32():
    """TF32 matmuls and convolutions on Ampere and newer, as nanoGPT does."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


# ---------------------------------------------------------------------------- checkpoints


def save_checkpoint(obj, path: str):
    """Write atomically: a temp file in the same folder, fsync, then rename over the old one.

    A crash at any moment leaves either the previous checkpoint or the new one, never half.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", suffix=".tmp", dir=folder)
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


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Load a checkpoint with weights_only=True, so a crafted file cannot run code."""
    if not os.path.isfile(path):
        raise UserError(
            f"no checkpoint at {path}: train one first (python train.py ...) or point --out_dir at its folder"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower() or "weights_only" in str(e):
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
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def load_meta(path: str) -> dict:
    """Read a char-level meta.pkl ({'vocab_size', 'itos', 'stoi'}) without running code."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    try:
        meta = _PlainUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as e:
        raise UserError(f"refusing to load {path}: {e}; a meta.pkl holds only plain dicts, strings and ints") from None
    except Exception as e:
        raise UserError(f"{path} is corrupt ({first_line(e)}): rerun the dataset's prepare.py") from None
    if not (isinstance(meta, dict) and {"vocab_size", "itos", "stoi"} <= set(meta)):
        raise UserError(f"{path} is not a char-level meta.pkl: it needs vocab_size, itos and stoi")
    return meta
