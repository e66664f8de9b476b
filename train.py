"""Train a GPT: from scratch, from a checkpoint (resume) or from OpenAI's GPT-2 weights (finetune).

One process (a GPU, or the CPU):
    python train.py config/train_shakespeare_char.py --device=cpu --compile=False
Several GPUs of one node, or several CPU processes (gloo), with torchrun:
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py

Every module-level value below is a config key; config files and --key=value flags override
them (see configurator.py). Rank 0 alone prints, logs and saves. out_dir receives
    ckpt.pt        the classic checkpoint, plus the RNG and gradient-scaler states that an
                   exact resume needs; saved when val loss improves, or at every eval if
                   always_save_checkpoint
    train_log.csv  iter,loss,val_loss,lr,time_ms,mfu: one row per log step (training loss of
                   the last micro-batch, mean ms per step since the last row, running MFU in %)
                   and one per eval (estimated train loss in `loss`, and val_loss)
The loop trains iter_num = 0 .. max_iters-1, evaluates at every multiple of eval_interval
and always at max_iters, where it ends. Stopped and resumed (init_from=resume), a run goes
on exactly as if it had never stopped: every micro-batch is drawn from its own seeded stream.
"""

import gc
import math
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from functools import partial
from types import SimpleNamespace

import bytecode_cache  # noqa: F401  (before torch: caches its bytecode when the install has none)

# isort: split
import torch

import common
import parallel
from common import (
    BatchSource,
    UserError,
    autocast_context,
    check_device,
    check_dtype,
    default_device,
    default_dtype,
    run_main,
)
from configurator import configure
from model import ARCH_KEYS, GPT, PRETRAINED_SHAPES, GPTConfig, device_peak_flops

# ---------------------------------------------------------------------------- defaults: GPT-2 124M on OpenWebText
# I/O
out_dir = "out"
eval_interval = 2000
log_interval = 1
eval_iters = 200
eval_only = False  # evaluate once, then exit without saving
always_save_checkpoint = True  # save at every eval, not only when val loss improves
init_from = "scratch"  # 'scratch', 'resume' (out_dir/ckpt.pt) or a GPT-2 name: 'gpt2', 'gpt2-medium', ...
# wandb logging
wandb_log = False
wandb_project = "owt"
wandb_run_name = "gpt2"
# data
dataset = "openwebtext"
gradient_accumulation_steps = 5 * 8  # micro-batches per step, over all processes together
batch_size = 12  # sequences per micro-batch
block_size = 1024
# model
n_layer = 12
n_head = 12
n_embd = 768
dropout = 0.0  # 0 for pretraining; 0.1+ for finetuning
bias = False  # biases in Linear and LayerNorm layers
# AdamW
learning_rate = 6e-4
max_iters = 600000
weight_decay = 1e-1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0  # clip gradients at this norm; 0.0 turns clipping off
# learning rate schedule
decay_lr = True
warmup_iters = 2000
lr_decay_iters = 600000  # ~ max_iters, per Chinchilla
min_lr = 6e-5  # ~ learning_rate / 10, per Chinchilla
# DDP
backend = "nccl"  # on CPU, gloo is used instead
fsdp = False  # under torchrun: shard parameters, gradients and optimizer state (FSDP) instead of DDP
# system
device = default_device()  # 'cuda', 'cuda:1', 'mps' or 'cpu'
dtype = default_dtype(device)  # 'float32', 'bfloat16' or 'float16' (the last with a gradient scaler)
compile = True  # torch.compile the model
# torch.compile mode: 'default', 'reduce-overhead', ... (torch's), or 'regional': each block compiled
# alone, and on one GPU without accumulation the train step and eval pass replayed as CUDA graphs.
# 'auto' (the same math either way): 'regional' for one process on a GPU without gradient
# accumulation (small models, bound by kernel launches and compile time), 'default' elsewhere
compile_mode = "auto"

_SEED = 1337
_LOG_NAME = "train_log.csv"
_LOG_HEADER = ("iter", "loss", "val_loss", "lr", "time_ms", "mfu")
_PRETRAINED = tuple(PRETRAINED_SHAPES)  # gpt2, gpt2-medium, gpt2-large, gpt2-xl
_SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))


# ---------------------------------------------------------------------------- configuration


def read_config(argv=None) -> tuple[dict, set]:
    """The module defaults with config files and flags applied; dtype follows the final device
    unless it was set. Works on a copy, so the module keeps its defaults."""
    rank = common.torchrun_rank()
    config, changed = configure(dict(globals()), argv, verbose=rank in (None, 0))
    if "dtype" not in changed:
        config["dtype"] = default_dtype(config["device"])
    check_config(config)
    return config, changed


def check_config(c: dict):
    for key in ("eval_interval", "log_interval", "eval_iters", "gradient_accumulation_steps", "batch_size"):
        if c[key] < 1:
            raise UserError(f"{key}={c[key]} must be at least 1")
    for key in ("max_iters", "warmup_iters", "lr_decay_iters", "learning_rate", "min_lr", "grad_clip"):
        if c[key] < 0:
            raise UserError(f"{key}={c[key]} must not be negative")
    known = ("scratch", "resume") + _PRETRAINED
    if c["init_from"] not in known and not os.path.isdir(c["init_from"]):
        raise UserError(f"unknown init_from={c['init_from']!r}: use one of {', '.join(known)}")
    check_device(c["device"])
    check_dtype(c["device"], c["dtype"])


def resolve_compile(want: bool, device_type: str, say) -> bool:
    """torch.compile where it can work; otherwise off, with a note."""
    if not want:
        return False
    if device_type == "mps":
        say("note: compile=True turned off: torch.compile does not support mps")
        return False
    if not hasattr(torch, "compile"):
        say(f"note: compile=True turned off: torch {torch.__version__} has no torch.compile")
        return False
    if device_type == "cpu" and not any(shutil.which(cc) for cc in ("c++", "g++", "clang++")):
        say("note: compile=True turned off: torch.compile needs a C++ compiler on the CPU")
        return False
    return True


_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the torch.compile modes that add CUDA graphs


def resolve_compile_mode(mode: str, device_type: str, distributed: bool, micro_steps: int, dtype: str) -> str:
    """'auto' becomes 'regional' for one process on a GPU that takes one micro-step per iteration
    ('reduce-overhead' under float16, whose gradient scaler train.py does not record), else
    'default'. torch's CUDA-graph modes cannot accumulate gradients: each backward replay
    rewrites the very buffers the previous micro-step's gradients live in."""
    if mode == "auto":
        if device_type != "cuda" or distributed or micro_steps > 1:
            return "default"
        return "reduce-overhead" if dtype == "float16" else "regional"
    if mode in _GRAPH_MODES and micro_steps > 1 and device_type == "cuda":
        raise UserError(
            f"compile_mode={mode!r} uses CUDA graphs, which cannot accumulate gradients over "
            f"{micro_steps} micro-steps: use --compile_mode=default (or auto), or --gradient_accumulation_steps=1"
        )
    return mode


def records_graphs(mode: str, device_type: str, distributed: bool, micro_steps: int, dtype: str) -> bool:
    """Whether train.py itself records the train step and the eval pass as CUDA graphs: in
    'regional' mode, for one process on a GPU with one micro-step and no gradient scaler."""
    return mode == "regional" and device_type == "cuda" and not distributed and micro_steps == 1 and dtype != "float16"


def compile_model(model, say, mode="default"):
    """The compiled model, or None (with a note) where torch.compile cannot work."""
    say(f"compiling the model (mode {mode})... (takes a ~minute)")
    # dynamic=False: eval batches (grouped, see eval_group_size) differ in size from training
    # batches, and without it the second shape seen turns the training graph dynamic (slower)
    try:
        if mode == "regional":
            return compile_blocks(model)
        return torch.compile(model, mode=mode, dynamic=False)
    except RuntimeError as e:  # e.g. a Python version this torch cannot compile for
        say(f"note: compile=True turned off: {common.first_line(e)}")
        return None


# Regional compilation compiles the head and loss too from this vocabulary size up: GPT-2's eager
# 50K-way cross-entropy made the 124M step 11% slower, while for a character vocabulary (65)
# compiling them cost 3-5 s of a cold start and saved under 1 s of 5000 steps (H200)
_COMPILED_HEAD_VOCAB = 4096


def compile_blocks(model):
    """Compile every transformer block on its own, in place (and the head with the loss, for a
    large vocabulary). All blocks run the same code, so torch.compile makes one graph per mode
    (train, eval) that every layer reuses: for a 6-layer model, 5 s of compilation instead of
    16 s for the whole model (measured on an H200, fresh cache). The embeddings stay eager."""
    # Pointwise kernels take Inductor's heuristic launch config instead of benchmarking several:
    # 1-2 s less compilation, the same step time (H200, shakespeare_char and GPT-2 124M).
    options = {"triton.autotune_pointwise": False}
    on_gpu = next(model.parameters()).device.type == "cuda"
    if on_gpu and "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
        # Inductor's pool of compile workers (each imports torch) costs more than it saves for a
        # block's few dozen Triton kernels: without it a warm start is 1.5-2 s shorter (the pool
        # took 0.7-1.1 s to shut down at exit) and a cold one about even (H200, shakespeare_char).
        # CPU kernels (C++, seconds each) keep the pool. Set globally: Dynamo starts the pool
        # before a compile's own `options` take effect.
        from torch._inductor import config as inductor_config

        inductor_config.compile_threads = 1
    for block in model.transformer.h:
        block.compile(dynamic=False, options=options)
    if model.config.vocab_size >= _COMPILED_HEAD_VOCAB:
        model.head_with_loss = torch.compile(model.head_with_loss, dynamic=False, options=options)
    return model


# ---------------------------------------------------------------------------- model


def build_model(run, changed: set, meta_vocab_size):
    """The GPT for init_from, on run.device; also sets run.model_args (the classic 7 keys)."""
    c = run.config
    if c["init_from"] == "scratch":
        run.say("Initializing a new model from scratch")
        vocab_size = meta_vocab_size if meta_vocab_size is not None else 50304
        if meta_vocab_size is None:
            run.say("defaulting to vocab_size of GPT-2 to 50304 (50257 rounded up for efficiency)")
        args = {k: c[k] for k in ARCH_KEYS if k != "vocab_size"}
        try:
            model = GPT(GPTConfig(**args, vocab_size=vocab_size, dropout=c["dropout"]))
        except ValueError as e:
            raise UserError(str(e)) from None
    elif c["init_from"] == "resume":
        run.say(f"Resuming training from {c['out_dir']}")
        model = common.model_from_checkpoint(run.ckpt, dropout=c["dropout"])
    else:
        run.say(f"Initializing from OpenAI GPT-2 weights: {c['init_from']}")
        try:
            model = GPT.from_pretrained(c["init_from"], dict(dropout=c["dropout"]))
        except (ImportError, OSError, ValueError) as e:
            raise UserError(f"cannot load {c['init_from']}: {common.first_line(e)}") from None
    adopt_architecture(run, model, changed)
    run.model_args = {k: getattr(model.config, k) for k in ARCH_KEYS} | {"dropout": c["dropout"]}
    return model.to(run.device)


def adopt_architecture(run, model, changed: set):
    """A resumed or pretrained model fixes the architecture; block_size may only shrink (crop).
    An architecture key set (by a file or flag) to a value the model does not have is an error;
    keys left alone, or set to the model's own values (classic configs), are taken as they are."""
    c = run.config
    if c["init_from"] == "scratch":
        return
    have = model.config.block_size
    if "block_size" not in changed or c["block_size"] == have:
        c["block_size"] = have
    elif c["block_size"] > have or c["init_from"] == "resume":
        raise UserError(
            f"block_size={c['block_size']} does not fit the {c['init_from']} model, whose block_size is {have}: "
            f"use --block_size={have}" + (" (or smaller)" if c["init_from"] != "resume" else "")
        )
    else:
        model.crop_block_size(c["block_size"])
    for k in ("n_layer", "n_head", "n_embd", "bias"):
        have = getattr(model.config, k)
        if k in changed and c[k] != have:
            source = "checkpoint" if c["init_from"] == "resume" else f"{c['init_from']} model"
            raise UserError(
                f"{k}={c[k]} contradicts the {source}, which has {k}={have}: "
                f"drop --{k} (the architecture comes from the {source}) or set --{k}={have}"
            )
        c[k] = have


def check_vocab(run, meta_vocab_size):
    vocab = run.model_args["vocab_size"]
    if meta_vocab_size is not None and meta_vocab_size > vocab:
        raise UserError(
            f"the dataset's meta.pkl has vocab_size={meta_vocab_size} but the model has {vocab}: "
            "train this dataset from scratch (--init_from=scratch) or use a model with a large enough vocabulary"
        )
    top = run.batches.max_token()
    if top is not None and top >= vocab:
        raise UserError(
            f"the data holds token id {top} but the model's vocab_size is {vocab}: "
            f"the data does not belong to this model; check --dataset={run.config['dataset']}"
        )


def load_resume_checkpoint(c: dict):
    if c["init_from"] != "resume":
        return None
    return common.load_checkpoint(os.path.join(c["out_dir"], common.CHECKPOINT_NAME), map_location="cpu")


def restore_training_state(run):
    """Optimizer, scaler, counters and RNGs from a resumed checkpoint."""
    ckpt = run.ckpt
    try:
        if run.sharded:
            parallel.load_optimizer_state(run.raw_model, run.optimizer, ckpt["optimizer"])
        else:
            run.optimizer.load_state_dict(ckpt["optimizer"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise UserError(f"the checkpoint's optimizer state does not fit the model: {common.first_line(e)}") from None
    if ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    run.iter_num = int(ckpt["iter_num"])
    run.best_val_loss = float(ckpt["best_val_loss"])
    states = ckpt.get("rng_state")
    if isinstance(states, list) and run.dist.rank < len(states):
        common.set_rng_state(states[run.dist.rank], run.device)
    else:
        run.say("note: the checkpoint holds no RNG state for this rank: dropout will not repeat the original run")
    run.ckpt = None  # free the memory


# ---------------------------------------------------------------------------- evaluation and saving


def eval_group_size(n_batches: int, batch_tokens: int, vocab_size: int, cap: int = 32) -> int:
    """How many eval batches one forward pass takes: the largest divisor of n_batches (so every
    pass has one shape) whose logits fit in about 256 MB of float32. Small models then evaluate
    in a few large passes instead of eval_iters launch-bound small ones; big-vocabulary models
    keep one batch per pass. The mean loss is the same either way, as all batches are equal in size."""
    budget = max(1, (1 << 26) // (batch_tokens * vocab_size))
    limit = min(cap, budget, n_batches)
    return max(g for g in range(1, limit + 1) if n_batches % g == 0) if n_batches else 1


@torch.no_grad()
def estimate_loss(run) -> dict:
    """Mean loss over eval_iters batches of each split."""
    c = run.config
    out = {}
    run.eval_model.eval()
    # The ranks share the batches out, except under FSDP: there every forward pass gathers
    # weights from all ranks, so all of them must run the same passes (they all run all).
    split_up = run.dist.enabled and not run.sharded
    mine = (
        list(range(run.dist.rank, c["eval_iters"], run.dist.world_size)) if split_up else list(range(c["eval_iters"]))
    )
    group = eval_group_size(len(mine), c["batch_size"] * c["block_size"], run.model_args["vocab_size"])
    for split in BatchSource.splits:
        total = torch.zeros((), device=run.device)
        for i in range(0, len(mine), group):
            batches = [run.batches.get_batch(split, ("eval", run.iter_num, k)) for k in mine[i : i + group]]
            x = torch.cat([b[0] for b in batches]) if group > 1 else batches[0][0]
            y = torch.cat([b[1] for b in batches]) if group > 1 else batches[0][1]
            total += eval_pass_loss(run, x, y).float() * len(batches)
        if split_up:
            torch.distributed.all_reduce(total)
        out[split] = total.item() / c["eval_iters"]
    run.eval_model.train()
    return out


def eval_pass_loss(run, x, y):
    """The mean loss of one eval pass; replayed from a CUDA graph when the run records them
    (every pass has the same shape: see eval_group_size)."""
    if not run.graphs:
        with run.ctx:
            return run.eval_model(x, y)[1]
    if run.eval_graph is None:

        def forward(x, y):
            with run.record_ctx:
                return run.eval_model(x, y)[1]

        run.eval_graph = common.CapturedCall(forward, (x, y))
    return run.eval_graph(x, y)


def evaluate(run):
    """Eval, print, log and save (when val loss improved, or always if always_save_checkpoint)."""
    c = run.config
    run.writer.poll()  # a checkpoint that failed to write stops the run now, not at the end
    with timed(run, "eval" if run.evals else "first eval"):
        losses = estimate_loss(run)
    run.evals += 1
    run.say(f"step {run.iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
    if not all(map(math.isfinite, losses.values())):
        raise diverged(run, run.iter_num, "eval loss")
    run.watch.check(run)
    lr = lr_at(c, run.iter_num)
    run.log.row(run.iter_num, losses["train"], losses["val"], lr, None, None)
    if run.wandb is not None:
        run.wandb.log(
            {"iter": run.iter_num, "train/loss": losses["train"], "val/loss": losses["val"], "lr": lr, "mfu": run.mfu}
        )
    if c["eval_only"]:
        return
    improved = losses["val"] < run.best_val_loss
    run.best_val_loss = min(run.best_val_loss, losses["val"])
    if (improved or c["always_save_checkpoint"]) and run.iter_num > 0:
        with timed(run, "save"):
            save(run)


def save(run):
    states = [common.rng_state(run.device)]
    if run.dist.enabled:  # every rank's dropout stream, so that a resumed DDP run repeats too
        gathered = [None] * run.dist.world_size
        torch.distributed.all_gather_object(gathered, states[0])
        states = gathered
    if run.sharded:  # every rank takes part in gathering the full tensors onto rank 0
        model_state = parallel.full_model_state(run.raw_model)
        optimizer_state = parallel.full_optimizer_state(run.raw_model, run.optimizer)
    if not run.dist.master:
        return
    if not run.sharded:
        model_state, optimizer_state = run.raw_model.state_dict(), run.optimizer.state_dict()
    ckpt = {
        "model": model_state,
        "optimizer": optimizer_state,
        "model_args": run.model_args,
        "iter_num": run.iter_num,
        "best_val_loss": run.best_val_loss,
        "config": run.config,
        "rng_state": states,
        "scaler": run.scaler.state_dict(),
    }
    run.say(f"saving checkpoint to {run.config['out_dir']}")
    run.writer.submit(ckpt, os.path.join(run.config["out_dir"], common.CHECKPOINT_NAME))


def diverged(run, it: int, what: str) -> UserError:
    ckpt = os.path.join(run.config["out_dir"], common.CHECKPOINT_NAME)
    kept = f"; {ckpt} was left as it was" if os.path.exists(ckpt) else ""
    return UserError(
        f"{what} is not finite at iter {it}: training diverged; lower --learning_rate "
        f"(now {run.config['learning_rate']}) or use --dtype=bfloat16 instead of float16{kept}"
    )


class NonFiniteWatch:
    """Remembers, on the device and without a sync, the first iteration whose loss was NaN/inf."""

    def __init__(self, device):
        self.first = torch.full((), -1, dtype=torch.long, device=device)

    def update(self, loss, it: int):
        self.first = torch.where((self.first < 0) & ~torch.isfinite(loss), it, self.first)

    def check(self, run):
        it = int(self.first)
        if it >= 0:
            raise diverged(run, it, "training loss")


class TrainLog:
    """out_dir/train_log.csv, one flushed row per log or eval step; rank 0 only (others get path=None)."""

    def __init__(self, path, append: bool):
        self.f = None
        if path is None:
            return
        fresh = not append or not os.path.exists(path) or os.path.getsize(path) == 0
        self.f = open(path, "w" if not append else "a", encoding="utf-8")
        if fresh:
            self.f.write(",".join(_LOG_HEADER) + "\n")
            self.f.flush()

    def row(self, it, loss, val_loss, lr, time_ms, mfu):
        if self.f is None:
            return
        cells = [str(it), _cell(loss), _cell(val_loss), _cell(lr), _cell(time_ms, ".2f"), _cell(mfu, ".2f")]
        self.f.write(",".join(cells) + "\n")
        self.f.flush()

    def close(self):
        if self.f is not None:
            self.f.close()


def _cell(x, fmt=None) -> str:
    if x is None:
        return ""
    return format(x, fmt) if fmt else repr(float(x))


# ---------------------------------------------------------------------------- training


def lr_at(c: dict, it: int) -> float:
    if not c["decay_lr"]:
        return c["learning_rate"]
    return common.get_lr(it, c["learning_rate"], c["warmup_iters"], c["lr_decay_iters"], c["min_lr"])


def train_step(run, it: int):
    """One optimizer step over this process's micro-batches; returns the last micro-batch's loss.

    Micro-batch k of process r at step `it` is global micro-batch it*total + r*steps + k, so
    the processes of a DDP run together see exactly the batches of one process accumulating
    over all of them. Gradients are all-reduced on the last micro-step only.
    """
    steps = run.micro_steps
    first = it * run.config["gradient_accumulation_steps"] + run.dist.rank * steps
    x, y = run.batches.get_batch("train", first)
    if run.graphs:
        loss = replay_forward_backward(run, x, y)
        finish_step(run, zero_grad=False)  # the next replay overwrites the gradients in place
        return loss
    for k in range(steps):
        last = k == steps - 1
        with grad_sync(run, last):
            with run.ctx:
                _, loss = run.model(x, y)
            if not last:  # fetch the next batch while the accelerator works on this one
                x, y = run.batches.get_batch("train", first + k + 1)
            run.scaler.scale(loss / steps).backward()
    finish_step(run, zero_grad=True)
    return loss.detach()


def finish_step(run, zero_grad: bool):
    """Clip the gradients, step the optimizer (and the float16 gradient scaler)."""
    if run.config["grad_clip"] != 0.0:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.raw_model.parameters(), run.config["grad_clip"])
    run.scaler.step(run.optimizer)
    run.scaler.update()
    if zero_grad:
        run.optimizer.zero_grad(set_to_none=True)


def replay_forward_backward(run, x, y):
    """Forward and backward of one micro-batch as one CUDA graph (recorded at the first call).
    The gradients it writes are the graph's own tensors, left in the parameters' .grad and
    overwritten by the next replay; the loss returned is valid until then."""
    if run.step_graph is None:

        def forward_backward(x, y):
            with run.record_ctx:
                _, loss = run.model(x, y)
            loss.backward()
            return loss.detach()

        # no .grad before the recording, so that the graph writes fresh gradients, not sums
        reset = partial(run.optimizer.zero_grad, set_to_none=True)
        run.step_graph = common.CapturedCall(forward_backward, (x, y), before_each=reset)
    return run.step_graph(x, y)


def log_step(run, it: int, loss, lr: float):
    """Print and log the step's loss, the mean time per step since the last row, and the running MFU."""
    lossf = loss.item()  # the one sync per log step
    now = time.perf_counter()
    dt = (now - run.t_last) / max(run.steps_since, 1)
    run.t_last, run.steps_since = now, 0
    if not math.isfinite(lossf):
        run.watch.check(run)
        raise diverged(run, it, "training loss")
    if run.local_iter >= 5:  # let the first steps (compilation, warm-up) pass
        mfu = run.raw_model.estimate_mfu(run.config["batch_size"] * run.micro_steps, dt)
        if mfu is not None:
            run.mfu = mfu * 100 if run.mfu is None else 0.9 * run.mfu + 0.1 * mfu * 100
    shown = f", mfu {run.mfu:.2f}%" if run.mfu is not None else ""
    run.say(f"iter {it}: loss {lossf:.4f}, time {dt * 1000:.2f}ms{shown}")
    run.log.row(it, lossf, None, lr, dt * 1000, run.mfu)


def train_loop(run):
    c = run.config
    skip_eval = run.resumed and not c["eval_only"]  # the resumed checkpoint was saved right after this eval
    if run.iter_num >= c["max_iters"] and skip_eval:
        run.say(f"nothing to train: the checkpoint is at iter {run.iter_num}, max_iters is {c['max_iters']}")
    run.t_last, run.steps_since = time.perf_counter(), 0
    while True:
        it = run.iter_num
        if not skip_eval and (it % c["eval_interval"] == 0 or it >= c["max_iters"] or c["eval_only"]):
            evaluate(run)
            run.t_last, run.steps_since = time.perf_counter(), 0
        skip_eval = False
        if c["eval_only"] or it >= c["max_iters"]:
            break
        lr = lr_at(c, it)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        if run.local_iter == 0:  # timed apart: compilation (and recording CUDA graphs) happens here
            with timed(run, "first step"):
                loss = train_step(run, it)
                loss.item()
        else:
            loss = train_step(run, it)
        run.watch.update(loss, it)
        run.steps_since += 1
        if it % c["log_interval"] == 0 and run.dist.master:
            log_step(run, it, loss, lr)
        run.iter_num += 1
        run.local_iter += 1


# ---------------------------------------------------------------------------- setup


def prepare_out_dir(run):
    out = run.config["out_dir"]
    if not run.dist.master:
        return
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create out_dir {out}: {e.strerror}; choose another --out_dir") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"out_dir {out} is not writable: choose another --out_dir")
    for name in common.remove_stale_checkpoint_temps(out):
        run.say(f"note: removed {os.path.join(out, name)}, a partial checkpoint of a killed run")


def find_data(c: dict, say):
    """The dataset's folder and the vocabulary size from its meta.pkl (None when it has none)."""
    folder = common.find_data_dir(c["dataset"], _SCRIPT_DIR)
    meta_path = os.path.join(folder, "meta.pkl")
    if not os.path.exists(meta_path):
        return folder, None
    meta_vocab_size = common.load_meta(meta_path, required=("vocab_size",))["vocab_size"]
    say(f"found vocab_size = {meta_vocab_size} (inside {meta_path})")
    return folder, meta_vocab_size


def use_fsdp(run) -> bool:
    c = run.config
    if not c["fsdp"]:
        return False
    if not run.dist.enabled:
        run.say("note: fsdp=True ignored: it shards over the processes of a torchrun job, and this is one process")
        return False
    if c["dtype"] == "float16":
        raise UserError("fsdp=True trains with --dtype=bfloat16 or float32, not float16 (no sharded gradient scaler)")
    return True


def grad_sync(run, last: bool):
    """All-reduce (DDP) or reduce-scatter (FSDP) gradients on the last micro-step only."""
    if not run.dist.enabled or last and not run.sharded:
        return nullcontext()
    if run.sharded:
        run.raw_model.set_requires_gradient_sync(last)
        return nullcontext()
    return run.model.no_sync()


def setup(run, changed: set):
    """Everything before the first step: seed, data, model, optimizer, resume, compile, DDP."""
    c = run.config
    device_type = common.device_type_of(run.device)
    torch.manual_seed(_SEED + run.dist.rank)
    common.enable_tf32()
    if device_type == "cpu":
        common.retain_freed_memory()  # no page faults for the activations of every step
    run.ckpt = load_resume_checkpoint(c)
    folder, meta_vocab_size = find_data(c, run.say)
    model = build_model(run, changed, meta_vocab_size)  # settles block_size for resume and gpt2*
    run.batches = BatchSource(folder, c["block_size"], c["batch_size"], run.device, seed=_SEED)
    check_vocab(run, meta_vocab_size)
    prepare_out_dir(run)  # only once the run is known to be able to start
    run.say(f"number of parameters: {model.get_num_params() / 1e6:.2f}M")
    run.raw_model = model
    run.sharded = use_fsdp(run)
    if run.sharded:  # before the optimizer exists: it must hold the sharded parameters
        parallel.shard_model(model, device_type)
    betas = (c["beta1"], c["beta2"])
    run.optimizer = model.configure_optimizers(c["weight_decay"], c["learning_rate"], betas, device_type)
    run.scaler = torch.amp.GradScaler(device_type, enabled=c["dtype"] == "float16")
    if run.ckpt is not None:
        restore_training_state(run)
    run.eval_model = run.model = model
    compiled = None
    if resolve_compile(c["compile"], device_type, run.say):
        compiled = compile_model(model, run.say, run.compile_mode)
    if compiled is not None:
        run.eval_model = run.model = compiled
    where = (device_type, run.dist.enabled, run.micro_steps, c["dtype"])
    run.graphs = compiled is not None and records_graphs(run.compile_mode, *where)
    run.step_graph = run.eval_graph = None  # recorded at the first step and the first eval
    if run.dist.enabled and not run.sharded:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [run.dist.local_rank] if device_type == "cuda" else None
        run.model = DDP(run.eval_model, device_ids=ids)
    run.ctx = autocast_context(device_type, c["dtype"])
    run.record_ctx = autocast_context(device_type, c["dtype"], cache=False)  # inside CUDA-graph recordings
    run.watch = NonFiniteWatch(run.device)


def open_outputs(run):
    """The training log (appended to on resume and eval_only, fresh otherwise) and wandb."""
    c = run.config
    path = os.path.join(c["out_dir"], _LOG_NAME) if run.dist.master else None
    run.log = TrainLog(path, append=run.resumed or c["eval_only"])
    run.wandb = None
    if c["wandb_log"] and run.dist.master:
        try:
            import wandb
        except ImportError:
            raise UserError("wandb_log=True needs wandb: pip install wandb (or pass --wandb_log=False)") from None
        wandb.init(project=c["wandb_project"], name=c["wandb_run_name"], config=c)
        run.wandb = wandb


_PHASES = ("first eval", "first step", "eval", "save")


@contextmanager
def timed(run, phase: str):
    """Add the wall time of the block to run.seconds[phase] (one of _PHASES)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        run.seconds[phase] += time.perf_counter() - t0


def timing_summary(run, loop_seconds: float, total_seconds: float) -> str:
    """Where the time went: setup, the first eval and step (they include compilation), the other
    evals, checkpoint saves and the other train steps."""
    t = run.seconds
    steps = loop_seconds - sum(t.values())
    parts = [
        f"setup {total_seconds - loop_seconds:.1f}s",
        f"first eval {t['first eval']:.1f}s",
        f"first step {t['first step']:.1f}s",
        f"{max(run.evals - 1, 0)} more evals {t['eval']:.1f}s",
        f"checkpoints {t['save']:.1f}s",
        f"{max(run.local_iter - 1, 0)} more steps {steps:.1f}s",
    ]
    return "time: " + ", ".join(parts)


def main(argv=None):
    config, changed = read_config(argv)
    if common.torchrun_rank() is not None:  # fail before joining the process group, on every rank
        common.split_grad_accum(config["gradient_accumulation_steps"], int(os.environ.get("WORLD_SIZE", 1)))
    dist, run_device = common.init_distributed(config["backend"], config["device"])
    run = SimpleNamespace(config=config, dist=dist, device=run_device, iter_num=0, best_val_loss=1e9)
    run.seconds, run.evals, t_setup = dict.fromkeys(_PHASES, 0.0), 0, time.perf_counter()
    run.writer = common.CheckpointWriter()
    finished = False
    try:
        run.local_iter, run.mfu, run.resumed = 0, None, config["init_from"] == "resume"
        run.say = print if dist.master else (lambda *a, **k: None)
        run.micro_steps = common.split_grad_accum(config["gradient_accumulation_steps"], dist.world_size)
        device_type = common.device_type_of(run.device)
        if config["compile"]:  # checked before any setup work: a contradiction fails fast
            where = (device_type, dist.enabled, run.micro_steps, config["dtype"])
            run.compile_mode = resolve_compile_mode(config["compile_mode"], *where)
        setup(run, changed)
        run.say("final config: " + ", ".join(f"{k}={v!r}" for k, v in sorted(config.items())))
        tokens = config["gradient_accumulation_steps"] * config["batch_size"] * config["block_size"]
        run.say(f"tokens per iteration will be: {tokens:,}")
        run.say(f"MFU reference: {device_peak_flops(run.device)[1]}")
        open_outputs(run)
        start, first_iter = time.perf_counter(), run.iter_num
        try:
            train_loop(run)
            with timed(run, "save"):
                run.writer.wait()  # the last checkpoint is on disk before the run reports success
        finally:
            run.log.close()
        if not config["eval_only"]:
            seconds = time.perf_counter() - start
            run.say(f"iters {first_iter}..{run.iter_num} in {seconds:.1f}s, best val loss {run.best_val_loss:.4f}")
            run.say(timing_summary(run, seconds, time.perf_counter() - t_setup))
            if device_type == "cuda":
                run.say(f"peak GPU memory on rank 0: {torch.cuda.max_memory_allocated(run.device) / 2**30:.2f} GiB")
        finished = True
    finally:
        # DDP's reducer must go before its process group, or gloo can abort the process at exit;
        # after an error, leave without waiting for the other ranks
        run.model = run.eval_model = run.raw_model = None
        if dist.enabled:
            gc.collect()  # 0.2 s after a compiled run: only where the process group needs it
        common.close_distributed(wait=finished)


if __name__ == "__main__":
    run_main(main)
