"""How a script runs on this machine, decided once and printed in one line: the Plan.

make_plan turns the config's device, dtype, compile, compile_mode, head_loss and attention ('auto' or a choice),
the processes and the micro-steps into a frozen Plan, which train.py, bench.py, sample.py and eval_hellaswag.py
print and follow. Also decided here: the device and its default dtype, each torchrun process's device, how
HellaSwag's forward passes run (scoring), autocast, and the GPU peaks behind MFU.
"""

import functools
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from model import full_logits_loss
from nanogpt_plus.errors import UserError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Dense bf16 tensor-core peaks in FLOP/s, by a substring of torch.cuda.get_device_name(); the first
# match counts, so longer names come first
PEAK_FLOPS = (
    ("GH200", 989e12), ("H200", 989e12), ("H100", 989e12), ("H800", 989e12), ("B200", 2250e12),
    ("A100", 312e12), ("A800", 312e12), ("A10G", 70e12), ("L40S", 362e12), ("L40", 181e12),
    ("L4", 121e12),  # after the L40s, whose names contain it
    ("RTX 4090", 165e12), ("RTX 3090", 71e12),
    ("V100", 125e12), ("T4", 65e12),  # float16: no bf16 on these
)  # fmt: skip


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


def chosen_dtype(device, dtype, changed):
    """The dtype a script runs in: the one a config file or flag gave (dtype in changed), else the
    default of the device finally chosen (the config block's default was made for the default device)."""
    return dtype if "dtype" in changed else default_dtype(device)


def device_for_rank(device, local_rank):
    """The device of the process with this LOCAL_RANK in a torchrun job (parallel.init asks): its own
    GPU, cuda:LOCAL_RANK, whichever CUDA device was asked for; elsewhere the device asked for."""
    if torch.device(device).type != "cuda":
        return device
    if local_rank >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} GPU(s)")
    return f"cuda:{local_rank}"


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


@contextmanager
def scoring(model):
    """How HellaSwag's forward passes run, whatever the plan: in eval mode, and compiled parts as plain Python,
    since they would recompile for every new batch length (torch.compiler.set_stance, torch 2.6 on; only where
    the compiler is imported already, as importing it takes seconds). The model's mode is put back after."""
    was_training = model.training
    model.eval()
    eager = "torch._dynamo" in sys.modules and hasattr(torch.compiler, "set_stance")
    try:
        with torch.compiler.set_stance("force_eager") if eager else nullcontext():
            yield
    finally:
        model.train(was_training)


def peak_flops(device):
    """The dense bf16 peak FLOP/s of a CUDA device, and a line saying what it is (None where unknown)."""
    if torch.device(device).type != "cuda":
        return None, "no MFU on the CPU: no reference peak"
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_FLOPS:
        if key in name:
            return flops, f"MFU against the {flops / 1e12:.0f} TFLOP/s dense bf16 peak of an {name}"
    return None, f"no MFU: no reference peak known for {name}"


@dataclass(frozen=True)
class Plan:
    device: str  # 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype: str  # 'float32', 'bfloat16' or 'float16' (autocast for the last two)
    compile: str  # 'none', 'blocks' (each transformer block on its own) or 'model' (torch.compile)
    compile_mode: str  # torch.compile's mode, for compile='model'
    cuda_graph: bool  # training: the micro-step recorded once and replayed; sampling: the decode steps
    head_loss: str  # 'chunked' (no whole logits; chunked_loss.py) or 'full'
    attention: str  # 'sdpa' (flash attention and its kin) or 'manual' (the masked softmax)
    processes: int = 1  # processes of a torchrun job
    fsdp: bool = False  # shard over them instead of DDP
    task: str = "train"  # 'train', 'sample' or 'eval' (forward passes only)
    chunk_step_compiled: bool = False  # the chunked loss's step as compiled kernels (CUDA) or as written
    fused_optimizer: bool = False  # AdamW's fused kernel (where torch has one), else torch's default

    @property
    def training(self):
        return self.task == "train"

    @property
    def device_type(self):
        return torch.device(self.device).type

    def autocast(self):
        return autocast(self.device_type, self.dtype)

    @property
    def peak_flops(self):  # (peak FLOP/s or None, a line saying what MFU is measured against)
        return peak_flops(self.device)

    def describe(self):
        """The plan as one line, e.g. 'cuda bfloat16, each block compiled, ..., SDPA attention'."""
        parts = [f"{self.device} {self.dtype}"]
        if self.processes > 1:
            parts.append(f"{'FSDP' if self.fsdp else 'DDP'} over {self.processes} processes")
        compiled = {"none": "not compiled", "blocks": "each block compiled"}
        parts.append(compiled.get(self.compile, f"model compiled (mode {self.compile_mode})"))
        if self.cuda_graph:
            parts.append("micro-step replayed as a CUDA graph" if self.training else "decode replayed as CUDA graphs")
        if self.cast_dtype is not None:
            parts.append(f"block weights held in {self.dtype}")
        if self.training:
            parts.append("chunked head+loss" if self.head_loss == "chunked" else "full logits")
        parts.append("SDPA attention" if self.attention == "sdpa" else "masked-softmax attention")
        return ", ".join(parts)

    @property
    def cast_dtype(self):
        """Sampling or evaluating under autocast: the dtype the blocks' Linear weights are held in (apply) and
        the Sampler casts the others to once per call (its cast_to), not autocast at every forward pass (the same
        values: autocast rounds them alike); None where weights are not cast."""
        return DTYPES[self.dtype] if not self.training and self.dtype != "float32" else None

    @property
    def build_device(self):
        """Where sampling builds a checkpoint's model (checkpoint.model_from's device): on CUDA the GPU, where its
        random init, which the weights then replace, takes milliseconds, not a quarter of a second of
        sample.py's start for GPT-2 124M; elsewhere None, the CPU."""
        return self.device if self.task == "sample" and self.device_type == "cuda" else None

    def apply(self, model):
        """Give model this plan's attention, head and loss and weights' dtype (how its math runs, not what it
        computes), and compile it in place (its state dict keeps its names)."""
        model.set_attention(self.attention)
        if self.head_loss == "chunked":  # (imported here: chunked_loss loads torch's compiler, which takes seconds)
            from nanogpt_plus import chunked_loss

            model.head_loss = functools.partial(chunked_loss.head_loss, compile_step=self.chunk_step_compiled)
        else:
            model.head_loss = full_logits_loss  # nanoGPT's, model.py's own
        if self.cast_dtype is not None:  # (LayerNorm and the embeddings stay: autocast computes those in float32)
            for module in model.transformer.h.modules():
                if isinstance(module, torch.nn.Linear):
                    module.to(self.cast_dtype)
        if self.compile == "blocks":  # all blocks share one graph: compiled in seconds
            for block in model.transformer.h:
                block.compile(dynamic=False)
        elif self.compile == "model":  # dynamic=False: eval passes take more sequences than training ones
            model.compile(mode=self.compile_mode, dynamic=False if self.training else None)
        return model


def make_plan(
    device, dtype, compile=False, compile_mode="auto", head_loss="auto", attention="auto", vocab_size=50304,
    micro_steps=1, processes=1, fsdp=False, task="train",
):  # fmt: skip
    """The Plan for these settings, with every 'auto' decided; a one-line error for what cannot work.

    compile_mode 'auto': a small model on one GPU waits on kernel launches, so without gradient
    accumulation each block is compiled and the whole micro-step is recorded as a CUDA graph
    (float16's gradient scaler is not recorded); elsewhere torch.compile's default mode.
    head_loss 'auto': chunked on CUDA for a vocabulary of 8,192 or more (measured slower on the
    CPU), its chunk step compiled on CUDA. attention 'auto': SDPA on CUDA, the masked softmax
    elsewhere. AdamW fused on CUDA and the CPU."""
    device_type, training = check_device(device, dtype), task == "train"
    for key, value, choices in (
        ("head_loss", head_loss, ("chunked", "full")),
        ("attention", attention, ("sdpa", "manual")),
    ):
        if value not in ("auto", *choices):
            raise UserError(f"{key}={value!r}: choose auto, {' or '.join(choices)}")
    one_gpu = device_type == "cuda" and processes == 1 and micro_steps == 1
    if not compile:
        how, mode = "none", compile_mode
    elif compile_mode in ("auto", "regional"):
        how, mode = ("blocks" if compile_mode == "regional" or one_gpu and training else "model"), "default"
    else:
        if compile_mode != "default":  # (the compiler's import, which takes seconds: only for other modes)
            from torch._inductor import list_mode_options

            known = list_mode_options()
            if compile_mode not in known:
                raise UserError(f"unknown compile_mode={compile_mode!r}: use one of {', '.join(known)}")
        how, mode = "model", compile_mode
    if how == "model" and mode in ("reduce-overhead", "max-autotune") and micro_steps > 1 and device_type == "cuda":
        raise UserError(
            f"compile_mode={mode!r} records CUDA graphs, which cannot accumulate gradients over {micro_steps} "
            "micro-steps: use --compile_mode=auto, or --gradient_accumulation_steps=1"
        )
    if fsdp and dtype == "float16" and processes > 1:
        raise UserError("fsdp=True trains with --dtype=bfloat16 or float32, not float16 (no sharded gradient scaler)")
    if training:
        cuda_graph = compile and compile_mode == "auto" and one_gpu and dtype != "float16"
    else:  # sampling's decode steps on CUDA
        cuda_graph = task == "sample" and device_type == "cuda"
    if head_loss == "auto":
        head_loss = "chunked" if device_type == "cuda" and vocab_size >= 8192 else "full"
    if attention == "auto":
        attention = "sdpa" if device_type == "cuda" else "manual"
    return Plan(
        device, dtype, how, mode, cuda_graph, head_loss, attention, processes, fsdp and processes > 1, task,
        chunk_step_compiled=head_loss == "chunked" and device_type == "cuda",  # (measured slower on the CPU)
        fused_optimizer=device_type in ("cuda", "cpu"),  # (on MPS: torch's default)
    )  # fmt: skip


def prepare_torch(seed):
    """What every script sets before it builds a model: the seed, and TF32 for float32 matmuls and
    convolutions on CUDA (the precision nanoGPT trains with)."""
    if not -(2**63) <= seed < 2**64:  # what torch.manual_seed takes
        raise UserError(f"seed={seed} is out of range: give an integer from 0 to 2**64 - 1")
    torch.manual_seed(seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
