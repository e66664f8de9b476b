"""FSDP for train.py: shard a GPT over the processes of a torchrun job with PyTorch's fully_shard,
and move its state in and out of the classic single-file checkpoint format.

Each transformer block is its own FSDP unit (gathered just before it runs, freed right after);
the embeddings, final LayerNorm and the tied lm_head form the root unit. The checkpoint holds
full, unsharded tensors under the usual names, and the optimizer state keyed by parameter
position as torch.optim's own state_dict() does, so sample.py, a plain resume, or a resume on
another number of GPUs all read it unchanged.
"""

import torch


def shard_model(model, device_type: str):
    """Shard `model` in place over all processes of the default process group."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # Each rank initialised its own copy under its own seed; start all of them from rank 0's
    # weights, as DDP does, so the run is the one a single process would make.
    for t in list(model.parameters()) + list(model.buffers()):
        torch.distributed.broadcast(t.data, src=0)
    mesh = init_device_mesh(device_type, (torch.distributed.get_world_size(),))
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def _param_names(model, optimizer) -> list[str]:
    """The name of each optimizer parameter, in the order torch.optim numbers them."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_model_state(model) -> dict:
    """Full tensors on the CPU of rank 0 (other ranks get an empty dict). Collective: all ranks call it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def full_optimizer_state(model, optimizer) -> dict:
    """The optimizer state in torch.optim's own numbered format, full, on rank 0. Collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    by_name = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    if not by_name:
        return {}
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    groups = []
    for group in by_name["param_groups"]:
        groups.append({**group, "params": [index[n] for n in group["params"]]})
    state = {index[n]: s for n, s in by_name["state"].items()}
    return {"state": state, "param_groups": groups}


def load_optimizer_state(model, optimizer, optim_sd: dict):
    """Scatter a classic checkpoint's full optimizer state into the sharded optimizer. Collective.
    (The model's weights are loaded before sharding, as in a plain resume.)"""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    names = _param_names(model, optimizer)
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in optim_sd["param_groups"]]
    state = {names[int(i)]: s for i, s in optim_sd["state"].items()}
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups}, options=_options())
