"""--optimizer=muon: torch.optim.Muon for the matrices inside the transformer blocks, AdamW for the rest.

Muon steps each 2-D weight along its momentum orthogonalised by a Newton-Schulz iteration; the
embeddings (wte, tied to lm_head, and wpe), LayerNorm gains and biases stay with AdamW, as in the
public speedruns. muon_and_adamw builds the two from a GPT (GPT.configure_optimizers makes
AdamW alone); MuonAndAdamW holds them and is what train.py steps, zeroes, clips, GradScaler-steps
and saves, as it would one torch optimizer. Under FSDP the parameters and
gradients are DTensors sharded on dim 0: Muon's Newton-Schulz matmuls run on them as DTensor ops,
which compute the product of the whole matrices (their collectives gather what each needs).
"""

import torch

from nanogpt_plus.errors import UserError


def require_muon():
    """A one-line error on a torch too old to have torch.optim.Muon."""
    if not hasattr(torch.optim, "Muon"):
        raise UserError(
            f"optimizer='muon' needs torch.optim.Muon, new in PyTorch 2.9 (this is {torch.__version__}): "
            "upgrade torch, or use --optimizer=adamw"
        )


def muon_and_adamw(model, weight_decay, learning_rate, betas, fused, muon):
    """Muon for the 2-D weights inside the transformer blocks (muon: the keyword arguments of
    torch.optim.Muon: lr, momentum, weight_decay), and for every other parameter AdamW as
    GPT.configure_optimizers makes it (decay on dim >= 2 only; fused as the caller says), as one
    optimizer: AdamW's two groups, then Muon's."""
    matrices = [p for p in model.transformer.h.parameters() if p.requires_grad and p.dim() == 2]
    taken = set(map(id, matrices))
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]  # the tied weight once
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    adamw = torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=True if fused else None)
    # Muon's lr follows the same schedule, scaled to its own peak (step.py applies lr_scale)
    lr_scale = muon["lr"] / learning_rate if learning_rate > 0 else 0.0
    return MuonAndAdamW(adamw, torch.optim.Muon([{"params": matrices, "lr_scale": lr_scale}], nesterov=True, **muon))


class MuonAndAdamW:
    """AdamW and Muon stepped as one optimizer. Its state_dict() has torch.optim's own layout:
    AdamW's groups, then Muon's, the parameters numbered across both in that order (the order of
    param_groups, as parallel.param_names reads it)."""

    def __init__(self, adamw, muon):
        self.adamw, self.muon = adamw, muon
        self.optimizers = (adamw, muon)  # what torch.distributed.checkpoint takes apart under FSDP

    @property
    def param_groups(self):  # the groups themselves: setting an lr or unscaling gradients reaches both
        return [group for opt in self.optimizers for group in opt.param_groups]

    def step(self):
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none=True):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        state, groups, offset = {}, [], 0
        for opt in self.optimizers:
            sd = opt.state_dict()
            state |= {offset + i: s for i, s in sd["state"].items()}
            groups += [{**g, "params": [offset + i for i in g["params"]]} for g in sd["param_groups"]]
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"{len(groups)} parameter groups saved, {len(self.param_groups)} expected")
        for opt in self.optimizers:  # torch.optim matches saved numbers to parameters by their order
            mine, groups = groups[: len(opt.param_groups)], groups[len(opt.param_groups) :]
            ids = {i for g in mine for i in g["params"]}
            opt.load_state_dict(
                {"state": {i: s for i, s in state_dict["state"].items() if i in ids}, "param_groups": mine}
            )
