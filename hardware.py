"""The device a script runs on and the number format it computes in: defaults, checks, autocast,
and the peak FLOP/s that MFU is measured against."""

import time
from contextlib import nullcontext

import torch

from errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Dense bf16 tensor-core peaks in FLOP/s, by a substring of torch.cuda.get_device_name(); the first
# match counts, so longer names come first
PEAK_FLOPS = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("A10G", 70e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),  # after the L40s, whose names contain it
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # float16: no bf16 on a V100
    ("T4", 65e12),  # float16
)


def check_compile_mode(mode, ours=()):
    """A one-line error unless mode is one of `ours` or a mode this torch.compile knows."""
    if mode in ours or mode == "default":
        return
    from torch._inductor import list_mode_options  # (the compiler's import: only for other modes)

    known = [*ours, *list_mode_options()]
    if mode not in known:
        raise UserError(f"unknown compile_mode={mode!r}: use one of {', '.join(known)}")


def default_device():
    """The best device there is: a CUDA GPU, Apple's MPS, or the CPU."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def default_dtype(device):
    """bfloat16 on CUDA GPUs that have it, float16 on older ones, float32 elsewhere."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def check_device(device, dtype):
    """Fail with one line if the device or dtype cannot be used here; return the device type."""
    try:
        device_type = torch.device(device).type
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps") from None
    if device_type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for but no CUDA GPU is available: use --device=cpu")
    if device_type == "cuda" and torch.device(device).index is not None:
        if torch.device(device).index >= torch.cuda.device_count():
            raise UserError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
    if device_type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {device!r} asked for but MPS is not available: use --device=cpu")
    if device_type not in ("cuda", "mps", "cpu"):
        raise UserError(f"unsupported device {device!r}: use cpu, cuda, cuda:N or mps")
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if dtype == "bfloat16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("this GPU does not support bfloat16: use --dtype=float16 (or float32)")
    return device_type


def autocast(device_type, dtype):
    """Mixed precision for forward passes; float32 runs as it is. The cast cache stays off: a
    recorded CUDA graph would otherwise keep casts made for the first call."""
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=DTYPES[dtype], cache_enabled=False)


def cpu_matmul_flops(n=1024):
    """The float32 FLOP/s of this CPU in an n x n matmul, the best of 3: more than training reaches on it."""
    a = torch.full((n, n), 0.5)  # (not drawn at random: training's RNG stays where it was)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def peak_flops(device):
    """The dense bf16 peak FLOP/s of a CUDA device, and a line saying what it is (None where unknown)."""
    if torch.device(device).type != "cuda":
        return None, "no MFU on the CPU: no reference peak"
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_FLOPS:
        if key in name:
            return flops, f"MFU against the {flops / 1e12:.0f} TFLOP/s dense bf16 peak of an {name}"
    return None, f"no MFU: no reference peak known for {name}"
