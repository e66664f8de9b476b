"""Train a GPT: from scratch, from a checkpoint (resume) or from OpenAI's GPT-2 weights (finetune).

    python train.py config/train_shakespeare_char.py                        # one GPU, or the CPU
    torchrun --standalone --nproc_per_node=8 train.py config/train_gpt2.py   # the GPUs of one node
    python train.py --help                                                  # every key, explained

Every value of the config block below can be set by a config file or a --key=value flag. Rank 0 alone prints,
logs and saves, into out_dir, which the run holds: ckpt.pt (nanoGPT's checkpoint, plus what an exact resume
needs), train_log.csv and, with matplotlib, loss.png. A run trains iterations 0..max_iters-1, evaluates at every
multiple of eval_interval and at max_iters; stopped and resumed (--init_from=resume), it goes on exactly as if it
had never stopped.
"""

import time

_STARTED = time.time()  # the time split printed at the end counts start-up from here, imports included

import importlib.util
import math
import os
import sys

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from configurator import adopt_architecture, adopt_saved, check_ranges, configure
from model import ARCH_KEYS, GPT, GPTConfig
from nanogpt_plus import checkpoint, hellaswag, parallel
from nanogpt_plus.dataloader import Batches, find_data_file, how_to_prepare
from nanogpt_plus.errors import UserError, on_interrupt, report_user_errors
from nanogpt_plus.huggingface import check_init_from, load_pretrained
from nanogpt_plus.muon import muon_and_adamw
from nanogpt_plus.plan import check_device, chosen_dtype, default_device, default_dtype, make_plan, prepare_torch
from nanogpt_plus.progress import Progress, TimeLeft, TimeSplit
from nanogpt_plus.step import TrainStep
from nanogpt_plus.tokenizer import check_resumed_vocabulary, load_meta
from nanogpt_plus.training_log import TrainingLog

report_user_errors()  # a mistake ends the run with one `error:` line, not a traceback

# -----------------------------------------------------------------------------
# default config values designed to train a gpt2 (124M) on OpenWebText
# I/O
out_dir = "out"  # where ckpt.pt, train_log.csv and loss.png go
eval_interval = 2000  # evaluate (and maybe save) every this many iterations
log_interval = 1  # print and log the training loss every this many iterations
eval_iters = 200  # batches of each split per evaluation
eval_only = False  # evaluate once, then exit without saving
always_save_checkpoint = True  # save at every eval, not only when the val loss improved
init_from = "scratch"  # scratch, resume (the run in out_dir), auto (resume if any), gpt2*, or a Hugging Face folder
overwrite = False  # let a run that does not resume replace the checkpoint already in out_dir
# wandb logging
wandb_log = False  # log to Weights & Biases (pip install wandb)
wandb_project = "owt"  # the wandb project
wandb_run_name = "gpt2"  # the wandb run's name
# HellaSwag zero-shot (a model on GPT-2's tokens): acc_norm into train_log.csv, wandb and loss.png
hellaswag_interval = 0  # score HellaSwag every this many iterations and at the end; 0 = never
hellaswag_file = ""  # a local hellaswag_val.jsonl; "" = data/hellaswag/hellaswag_val.jsonl, fetched once
# data
dataset = "openwebtext"  # data/<dataset>/train.bin and val.bin, from data/<dataset>/prepare.py
gradient_accumulation_steps = 5 * 8  # micro-batches per iteration, over all processes together
batch_size = 12  # sequences per micro-batch
block_size = 1024  # tokens per sequence: the context length
# model
n_layer = 12  # transformer blocks
n_head = 12  # attention heads per block
n_embd = 768  # width of the residual stream
dropout = 0.0  # for pretraining 0 is good, for finetuning try 0.1+
bias = False  # biases inside the LayerNorm and Linear layers (GPT-2 had them)
# adamw optimizer
learning_rate = 6e-4  # the peak learning rate
max_iters = 600000  # total number of training iterations
weight_decay = 1e-1  # AdamW's weight decay, on matrices and embeddings only
beta1 = 0.9  # AdamW's beta1
beta2 = 0.95  # AdamW's beta2
grad_clip = 1.0  # clip gradients at this norm, or disable if == 0.0
# muon optimizer (--optimizer=muon): defaults from the example in Keller Jordan's Muon repository
optimizer = "adamw"  # 'adamw', or 'muon': Muon (nanogpt_plus/muon.py) for the blocks' matrices, AdamW the rest
muon_lr = 0.02  # Muon's peak learning rate; it follows learning_rate's warmup and decay, scaled by the ratio
muon_momentum = 0.95  # Muon's (Nesterov) momentum
muon_weight_decay = 0.01  # Muon's decoupled weight decay (times its learning rate at each step)
# learning rate decay settings
decay_lr = True  # warm up, then decay along a cosine; False keeps learning_rate throughout
warmup_iters = 2000  # how many steps to warm up for
lr_decay_iters = 600000  # where the cosine reaches min_lr: should be ~= max_iters per Chinchilla
min_lr = 6e-5  # minimum learning rate: should be ~= learning_rate/10 per Chinchilla
# DDP settings
backend = "nccl"  # torchrun's process group on GPUs: 'nccl', 'gloo', etc. (gloo on CPUs anyway)
fsdp = False  # under torchrun, shard parameters, gradients and optimizer state (FSDP) instead of DDP
# system
device = default_device()  # 'cpu', 'cuda', 'cuda:0', 'cuda:1' etc., or 'mps' on macbooks
dtype = default_dtype(device)  # 'float32', 'bfloat16' or 'float16' (the latter with a gradient scaler)
compile = True  # use PyTorch 2.0 to compile the model to be faster
compile_mode = "auto"  # 'auto', 'regional' (each block) or a torch.compile mode such as 'max-autotune' (README)
head_loss = "auto"  # 'chunked' (no whole logits: bigger batches fit), 'full' (nanoGPT's), 'auto' (plan.py)
attention = "auto"  # 'sdpa' (flash attention), 'manual' (the masked softmax), 'auto': sdpa on CUDA only
# -----------------------------------------------------------------------------
config, changed = configure(globals())  # config files and --key=value flags, in order
ckpt = checkpoint.resume_from(out_dir, init_from, config)  # the checkpoint this run goes on from, if any
if init_from == "auto":  # torchrun --max-restarts: resume if out_dir holds this run's checkpoint, else start
    init_from = config["init_from"] = "resume" if ckpt else "scratch"
# a resumed run goes on as it was: its checkpoint's config, but for what is given now and this command's own keys
THIS_COMMAND = ("init_from", "out_dir", "eval_only", "overwrite", "device", "dtype")
if ckpt:
    config = adopt_saved(globals(), ckpt.get("config", {}), changed, keep=THIS_COMMAND)
config["dtype"] = dtype = chosen_dtype(device, dtype, changed)  # the default dtype follows the device finally chosen
# -----------------------------------------------------------------------------

# what cannot work is an error now, before anything is set up or written
check_ranges(
    config, at_least_1=("eval_interval", "log_interval", "eval_iters", "gradient_accumulation_steps", "batch_size"),
    not_negative=("max_iters", "warmup_iters", "lr_decay_iters", "learning_rate", "min_lr", "grad_clip", "weight_decay",
                  "muon_lr", "muon_weight_decay"),
    fractions=("dropout", "beta1", "beta2", "muon_momentum"),
)  # fmt: skip
if optimizer not in ("adamw", "muon"):
    raise UserError(f"unknown optimizer={optimizer!r}: use adamw (nanoGPT's) or muon")
use_muon = optimizer == "muon"  # (from the optimizer's setup on, `optimizer` is the torch optimizer itself)
check_init_from(init_from, own=("scratch", "resume", "auto"))
check_device(device, dtype)
micro_steps = parallel.split_grad_accum(gradient_accumulation_steps, parallel.world_size())  # per process
if wandb_log and importlib.util.find_spec("wandb") is None:
    raise UserError("wandb_log=True needs wandb: pip install wandb (or pass --wandb_log=False)")
if find_data_file(dataset, "train.bin") is None:
    raise UserError(f"no training data for dataset {dataset!r}: {how_to_prepare(dataset)}")
meta_path = find_data_file(dataset, "meta.pkl")  # a character-level dataset's, with its vocabulary size
hellaswag.check_interval(hellaswag_interval, dataset, meta_path)
meta_vocab_size = load_meta(meta_path)["vocab_size"] if meta_path else None
if ckpt:  # the data as prepared now must be what the model learned, before anything trains or is saved
    check_resumed_vocabulary(dataset, meta_path, meta_vocab_size, ckpt["model_args"].get("vocab_size"))

# -----------------------------------------------------------------------------
# setup: the processes of a torchrun job (DDP), then how this run computes, decided once
procs, device = parallel.init(backend, device)
master_process = procs.master  # this process prints, logs and saves
say = print if master_process else lambda *args, **kwargs: None
plan = make_plan(
    device, dtype, compile=compile, compile_mode=compile_mode, head_loss=head_loss, attention=attention,
    vocab_size=ckpt["model_args"]["vocab_size"] if ckpt else meta_vocab_size or 50304, micro_steps=micro_steps,
    processes=procs.world_size, fsdp=fsdp,
)  # fmt: skip
say(f"plan: {plan.describe()}")
if plan.device_type == "cpu":  # on a machine busy with other work, a thread per core can run many times slower
    threads = torch.get_num_threads()
    say(f"threads: torch uses {threads} thread{'s' * (threads != 1)} on this CPU; OMP_NUM_THREADS=N sets it (on a "
        "machine busy with other work, fewer threads can be much faster)")  # fmt: skip
if fsdp and not procs.enabled:
    say("note: fsdp=True ignored: it shards over the processes of a torchrun job, and this is one process")
fresh_run = init_from != "resume" and not eval_only
if master_process and not eval_only:  # never replace another run's work by surprise (eval_only writes nothing)
    checkpoint.prepare_out_dir(out_dir, fresh_run, overwrite, say)
prepare_torch(seed=1337 + procs.rank)
if meta_vocab_size is not None:
    say(f"found vocab_size = {meta_vocab_size} (inside {meta_path})")


# -----------------------------------------------------------------------------
# model: from scratch, from the checkpoint in out_dir, or from OpenAI's GPT-2 weights
iter_num = 0  # the iteration about to run
best_val_loss = 1e9
if init_from == "scratch":
    say("Initializing a new model from scratch")
    if meta_vocab_size is None:
        say("defaulting to vocab_size of GPT-2 to 50304 (50257 rounded up for efficiency)")
    arch = dict(n_layer=n_layer, n_head=n_head, n_embd=n_embd, block_size=block_size, bias=bias, dropout=dropout)
    try:
        model = GPT(GPTConfig(vocab_size=meta_vocab_size or 50304, **arch))
    except ValueError as e:
        raise UserError(str(e)) from None
elif init_from == "resume":
    say(f"Resuming training from {out_dir}")
    model = checkpoint.model_from(ckpt, dropout=dropout)
    iter_num, best_val_loss = int(ckpt["iter_num"]), float(ckpt["best_val_loss"])
    if iter_num >= max_iters and not eval_only:
        say(f"note: the run in {out_dir} is at iter {iter_num}, past max_iters={max_iters}: raise --max_iters to go on")
    trained_with = (ckpt.get("config") or {}).get("optimizer", "adamw")  # nanoGPT's checkpoints: AdamW
    if trained_with != optimizer:
        raise UserError(
            f"the checkpoint in {out_dir} was trained with optimizer={trained_with!r}, whose state does not carry "
            f"over to {optimizer!r}: resume with --optimizer={trained_with}, or start anew with --out_dir=NEW_DIR"
        )
else:
    say(f"Initializing from OpenAI GPT-2 weights: {init_from}")
    model = load_pretrained(init_from, dropout=dropout)
if init_from != "scratch":  # the architecture is the model's (a smaller block_size crops GPT-2)
    block_size = adopt_architecture(config, changed, model, init_from)
model_args = {k: getattr(model.config, k) for k in ARCH_KEYS} | {"dropout": dropout}  # what the checkpoint keeps
model.to(device)
say(f"number of parameters: {model.get_num_params() / 1e6:.2f}M")
batches = Batches(dataset, block_size, batch_size, device)  # (block_size is final now)
batches.check_vocabulary(meta_vocab_size, model_args["vocab_size"])  # the ids of the bins: meta.pkl's, the model's
hellaswag_items = None  # loaded once (and downloaded, the first time) for every HellaSwag eval
if hellaswag_interval:
    hellaswag_items = hellaswag.prepare(hellaswag_file, procs, say)
    hellaswag.check_model(hellaswag_items, model_args["vocab_size"], block_size, say)


def micro_batch(it, k):  # the processes of a DDP run draw between them the batches one process would draw alone
    return batches.get("train", it * gradient_accumulation_steps + procs.rank * micro_steps + k)


eta = TimeLeft(max_iters, eval_interval, eval_iters, micro_steps, hellaswag_interval, plan.device_type == "cpu", say)
if plan.device_type == "cpu" and not eval_only:  # a model too big for a CPU says so now, before anything compiles
    step_flops = model.estimate_mfu(batch_size * micro_steps, 1.0, 1.0)  # (FLOP/s at a step a second)
    eta.note_before_start(iter_num, step_flops)


# -----------------------------------------------------------------------------
# optimizer, the plan applied (attention, head and loss, compilation), the wrapper and the step
raw_model = model  # the plain module, whatever wraps it below: what is saved
if plan.fsdp:  # before the optimizer exists: it must hold the sharded parameters
    parallel.shard(model, plan.device_type)
if use_muon:  # Muon for the blocks' matrices, AdamW for the rest (nanogpt_plus/muon.py)
    muon_args = dict(lr=muon_lr, momentum=muon_momentum, weight_decay=muon_weight_decay)
    optimizer = muon_and_adamw(model, weight_decay, learning_rate, (beta1, beta2), plan.fused_optimizer, muon_args)
else:  # nanoGPT's AdamW, fused where the plan says
    optimizer = model.configure_optimizers(
        weight_decay, learning_rate, (beta1, beta2), plan.device_type, plan.fused_optimizer
    )
plan.apply(model)  # compiled in place: the first step and the first eval take longer
if procs.enabled and not plan.fsdp:
    device_ids = [procs.local_rank] if plan.device_type == "cuda" else None
    model = DDP(model, device_ids=device_ids, **parallel.NO_BUFFER_SYNC)
train_step = TrainStep(model, optimizer, plan, micro_steps, grad_clip, micro_batch)
if ckpt is not None:  # the optimizer, the gradient scaler and the RNGs where the run stopped
    fsdp_model = raw_model if plan.fsdp else None
    checkpoint.restore_training_state(ckpt, optimizer, train_step.scaler, procs.rank, device, say, fsdp_model)
    ckpt = None  # free up memory
ctx = plan.autocast()  # mixed precision in the forward passes
evals_shared = procs.enabled and not plan.fsdp  # DDP's ranks share eval batches out (FSDP's forwards need every rank)


# -----------------------------------------------------------------------------
# helps estimate an arbitrarily accurate loss over either split using many batches
@torch.no_grad()
def estimate_loss():
    """The mean loss over eval_iters batches of each split. Small batches go through several at a
    time, the largest divisor of their number up to 32 whose float32 logits stay under 256 MB: the
    same mean, in fewer and larger forward passes."""
    out = {}
    model.eval()
    mine = range(procs.rank, eval_iters, procs.world_size) if evals_shared else range(eval_iters)
    limit = max(1, min(32, len(mine), 2**26 // (batch_size * block_size * model_args["vocab_size"])))
    group = max(g for g in range(1, limit + 1) if len(mine) % g == 0)
    progress = Progress("  evaluating", 2 * len(mine), unit="batches", file=sys.stdout) if master_process else None
    for s, split in enumerate(("train", "val")):
        total = torch.zeros((), device=device)
        for i in range(0, len(mine), group):
            X, Y = zip(*(batches.get(split, ("eval", iter_num, k)) for k in mine[i : i + group]))
            with ctx:
                _, loss = model(torch.cat(X), torch.cat(Y))
            total += loss.float() * len(X)
            if progress:  # a long eval says how far it is
                progress.update(s * len(mine) + i + group)
        if evals_shared:
            torch.distributed.all_reduce(total)
        out[split] = total.item() / eval_iters
    if progress:
        progress.close()
    model.train()
    return out


def hellaswag_eval():
    rank, world = (procs.rank, procs.world_size) if evals_shared else (0, 1)
    bar = Progress("  hellaswag", len(hellaswag_items), unit="items") if master_process else None
    return hellaswag.evaluate(raw_model, hellaswag_items, device, ctx, rank=rank, world_size=world, progress=bar)


# learning rate decay scheduler (cosine with warmup)
def get_lr(it):
    # 1) linear warmup for warmup_iters steps
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    # 2) if it > lr_decay_iters, return min learning rate (also when no room is left to decay)
    if it > lr_decay_iters or lr_decay_iters <= warmup_iters:
        return min_lr
    # 3) in between, use cosine decay down to min learning rate
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # coeff ranges 0..1
    return min_lr + coeff * (learning_rate - min_lr)


def save_checkpoint():
    """Every rank takes part (their RNG states, FSDP's gather); rank 0 writes, in the background."""
    rng_states = parallel.gather_rng_states(checkpoint.rng_state(device), procs)
    if plan.fsdp:
        model_state, optimizer_state = parallel.full_state(raw_model, optimizer)
    else:
        model_state, optimizer_state = raw_model.state_dict(), optimizer.state_dict()
    if master_process:
        say(f"saving checkpoint to {out_dir}")
        ckpt = dict(model=model_state, optimizer=optimizer_state, model_args=model_args, iter_num=iter_num)
        ckpt |= dict(best_val_loss=best_val_loss, config=config, rng_state=rng_states)
        ckpt["scaler"] = train_step.scaler.state_dict()
        writer.submit(ckpt, os.path.join(out_dir, checkpoint.CKPT_NAME), label=iter_num)


def diverged(what, it):
    other = {"float16": " or use --dtype=bfloat16 instead of float16", "bfloat16": " or use --dtype=float32"}
    return UserError(
        f"{what} is not finite at iter {it}: training diverged; lower --learning_rate (now {learning_rate})"
        f"{other.get(dtype, '')}; {out_dir}/{checkpoint.CKPT_NAME}, if any, was left as it was"
    )


# -----------------------------------------------------------------------------
# training loop
resumed_at = iter_num if init_from == "resume" else None  # what ckpt.pt holds now
# train_log.csv and loss.png, kept by rank 0; an eval_only run leaves them as they are
log = TrainingLog(out_dir, fresh_run, say, resumed_at) if master_process and not eval_only else None
if wandb_log and master_process:
    import wandb

    wandb.init(project=wandb_project, name=wandb_run_name, config=config)
writer = checkpoint.BackgroundWriter(written=resumed_at, on_written=log.adopt if log else None)  # (a new log's turn)
if not eval_only:  # Ctrl-C says where the run stopped and the command that goes on from its checkpoint (rank 0)
    on_interrupt(lambda: checkpoint.interrupt_note(writer, out_dir, iter_num, procs.enabled) if log else "")
peak, mfu_note = plan.peak_flops
say(f"tokens per iteration will be: {gradient_accumulation_steps * batch_size * block_size:,}; {mfu_note}")
skip_eval = init_from == "resume" and not eval_only  # its checkpoint was saved right after this eval
time_split = TimeSplit(_STARTED, iter_num)  # where the time went, said at the end (the loop starts now)
local_iter_num = 0  # number of iterations in the lifetime of this process
running_mfu = -1.0
while True:
    lr = get_lr(iter_num) if decay_lr else learning_rate
    # evaluate the loss on train/val sets, log it and write checkpoints: every eval_interval
    # iterations and at the end (once, with eval_only)
    if (iter_num % eval_interval == 0 or iter_num >= max_iters or eval_only) and not skip_eval:
        writer.poll()  # a checkpoint that failed to write stops the run now, not at the end
        with time_split.timed("evaluations", iter_num):
            losses = estimate_loss()
        eta.eval_seconds = time_split.durations["evaluations"][-1]
        say(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        if not all(math.isfinite(v) for v in losses.values()):
            raise diverged("eval loss", iter_num)
        if log:
            log.eval_row(iter_num, losses, lr, running_mfu, last=eval_only or iter_num >= max_iters)
        if wandb_log and master_process:
            wandb.log({"iter": iter_num, "train/loss": losses["train"], "val/loss": losses["val"], "lr": lr})
        if not eval_only and (losses["val"] < best_val_loss or always_save_checkpoint):
            best_val_loss = min(best_val_loss, losses["val"])
            if iter_num > 0:
                with time_split.timed("checkpoints", iter_num):
                    save_checkpoint()
    skip_eval = False
    # HellaSwag: every hellaswag_interval iterations and at the end (a run resumed where one was due
    # redoes it: its checkpoint was saved before it, and the log dropped its row)
    if hellaswag_interval and (iter_num % hellaswag_interval == 0 or iter_num >= max_iters or eval_only):
        with time_split.timed("HellaSwag", iter_num):
            result = hellaswag_eval()
        eta.hellaswag_seconds = time_split.durations["HellaSwag"][-1]
        say(f"step {iter_num}: hellaswag acc_norm {result['acc_norm']:.4f}, acc {result['acc']:.4f}")
        if log:
            log.hellaswag_row(iter_num, result["acc_norm"], last=eval_only or iter_num >= max_iters)
        if wandb_log and master_process:
            wandb.log({"iter": iter_num, "hellaswag": result["acc_norm"]})
    if eval_only or iter_num >= max_iters:
        break

    # forward, backward and update at this iteration's learning rate, with gradient accumulation
    # over micro_steps micro-batches to simulate a larger batch (step.py)
    loss = train_step(iter_num, lr)

    # timing and logging
    if iter_num % log_interval == 0 and master_process:
        writer.poll()  # a checkpoint that failed to write stops the run now, not at the next eval
        lossf = loss.item()  # the one CPU-GPU sync point of an iteration
        dt, steps = time_split.steps_done(iter_num)  # seconds per step of the steps since the last log or eval
        if not math.isfinite(lossf):
            raise diverged("training loss", iter_num)
        if local_iter_num >= 5 and peak is not None:  # let the training loop settle a bit
            mfu = raw_model.estimate_mfu(batch_size * micro_steps, dt, peak)
            running_mfu = mfu if running_mfu == -1.0 else 0.9 * running_mfu + 0.1 * mfu
        mfu_text = f", mfu {running_mfu * 100:.2f}%" if running_mfu >= 0 else ""
        say(f"iter {iter_num}: loss {lossf:.4f}, time {dt * 1000:.2f}ms{mfu_text}{eta.estimate(iter_num, dt, steps)}")
        log.step_row(iter_num, lossf, lr, dt, running_mfu)
    iter_num += 1
    local_iter_num += 1

with time_split.timed("checkpoints", iter_num):
    writer.wait()  # the last checkpoint is on disk before the run reports success
    if log:
        log.wait()
if not eval_only:
    looped = time.time() - time_split.loop_started
    say(f"iters {time_split.first_iter}..{iter_num} in {looped:.1f}s, best val loss {best_val_loss:.4f}")
    say(time_split.line(iter_num))
if plan.device_type == "cuda":
    say(f"peak GPU memory on rank 0: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
model = None  # DDP's reducer must go before the process group
parallel.close()
