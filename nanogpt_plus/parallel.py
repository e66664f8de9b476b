"""Several processes of one job (torchrun): joining the process group, DDP's gradient sync, and FSDP.

Under FSDP each transformer block is its own unit (gathered just before it runs, freed right after), the rest
the root unit. Checkpoints hold full tensors under the usual names and the optimizer state numbered as
torch.optim's state_dict() numbers it: sample.py and a resume on any number of GPUs read them unchanged.
"""

import gc
import inspect
import os
from dataclasses import dataclass

import torch

from nanogpt_plus.errors import UserError, first_line
from nanogpt_plus.plan import device_for_rank


@dataclass(frozen=True)
class Processes:
    """Where this process stands in a torchrun job; the defaults describe a single process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    enabled: bool = False

    @property
    def master(self):
        return self.rank == 0


def torchrun_rank():
    """The rank torchrun gave this process, or None when torchrun did not start it."""
    return int(os.environ["RANK"]) if "RANK" in os.environ else None


def world_size():
    """The number of processes of this torchrun job (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", 1)) if torchrun_rank() is not None else 1


def split_grad_accum(gradient_accumulation_steps, world_size):
    """The micro-steps each process runs so that all of them together run the configured number."""
    if gradient_accumulation_steps % world_size != 0:
        raise UserError(
            f"gradient_accumulation_steps={gradient_accumulation_steps} does not divide among {world_size} "
            f"processes: use a multiple of {world_size}"
        )
    return gradient_accumulation_steps // world_size


def init(backend, device):
    """Join the torchrun job's process group, if any; return it and this process's device (plan.device_for_rank):
    cuda:LOCAL_RANK with the configured backend, made current first (NCCL binds to it), or the CPU with gloo."""
    if torchrun_rank() is None:
        return Processes(), device
    rank, local_rank, processes = torchrun_rank(), int(os.environ.get("LOCAL_RANK", 0)), world_size()
    device = device_for_rank(device, local_rank)
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    elif backend != "gloo":
        if rank == 0:
            print(f"note: backend {backend!r} needs CUDA; using gloo on {device}")
        backend = "gloo"
    try:
        torch.distributed.init_process_group(backend=backend, **this_attempt_store(rank, processes))
    except (RuntimeError, ValueError) as e:
        raise UserError(f"cannot start the {backend} process group ({first_line(e)}): check --backend") from None
    return Processes(rank, local_rank, processes, True), device


def this_attempt_store(rank, world_size):
    """The store of this attempt of a torchrun job, as init_process_group's keywords. Workers that torchrun
    --max-restarts starts again share the killed ones' store, their keys still in it (torch 2.13), and would dial
    the dead processes: each attempt's keys go under a prefix of their own, as torch once did."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {}
    store = torch.distributed.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size)
    prefix = f"/worker/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return dict(store=torch.distributed.PrefixStore(prefix, store), rank=rank, world_size=world_size)


def close():
    """Leave the process group once every rank has arrived (rank 0 may still be saving). Any DDP wrapper must be
    gone first: its reducer outliving the group can abort the process at exit."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


# DDP's option not to broadcast the buffers (the causal masks, the same on every rank) at every
# forward: forward_sync_buffers=False from torch 2.13 on, which deprecates broadcast_buffers=False
_ddp_options = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters
NO_BUFFER_SYNC = {"forward_sync_buffers" if "forward_sync_buffers" in _ddp_options else "broadcast_buffers": False}


def sync_gradients(model, now):
    """Whether the next backward all-reduces (DDP) or reduce-scatters (FSDP) the gradients: only on an
    iteration's last micro-step."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model.require_backward_grad_sync = now
    elif hasattr(model, "set_requires_gradient_sync"):  # fully_shard's
        model.set_requires_gradient_sync(now)


def gather_rng_states(state, processes):
    """Every rank's RNG state, in rank order (a collective)."""
    if not processes.enabled:
        return [state]
    states = [None] * processes.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def shard(model, device_type):
    """Shard the model in place over all processes with fully_shard, one unit per block."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # each rank initialised its own copy under its own seed: all start from rank 0's, as under DDP
    for t in list(model.parameters()) + list(model.buffers()):
        torch.distributed.broadcast(t.data, src=0)
    mesh = init_device_mesh(device_type, (torch.distributed.get_world_size(),))
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def state_dict_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def torch_optimizers(optimizer):
    """The torch.optim optimizers behind ours: muon.MuonAndAdamW's two (in the order of its param groups, in
    which torch.distributed.checkpoint joins their states), or AdamW alone."""
    return getattr(optimizer, "optimizers", (optimizer,))


def param_names(model, optimizer):
    """The name of each optimizer parameter, in the order torch.optim numbers them."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_state(model, optimizer):
    """The full model and optimizer state dicts (classic layout) on rank 0's CPU, empty dicts on the other ranks
    (a collective)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    model_sd = get_model_state_dict(model, options=state_dict_options(cpu_offload=True))
    by_name = get_optimizer_state_dict(model, torch_optimizers(optimizer), options=state_dict_options(cpu_offload=True))
    if not by_name:
        return model_sd, {}
    index = {name: i for i, name in enumerate(param_names(model, optimizer))}
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in by_name["param_groups"]]
    return model_sd, {"state": {index[n]: s for n, s in by_name["state"].items()}, "param_groups": groups}


def load_optimizer_state(model, optimizer, optim_sd):
    """A classic checkpoint's full optimizer state into the sharded optimizer (a collective; the model's weights
    are loaded before sharding, as in a plain resume)."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = param_names(model, optimizer)
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in optim_sd["param_groups"]]
    state = {names[int(i)]: s for i, s in optim_sd["state"].items()}
    by_name = {"state": state, "param_groups": groups}
    set_optimizer_state_dict(model, torch_optimizers(optimizer), by_name, options=state_dict_options())
