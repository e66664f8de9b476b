"""--optimizer=muon: Muon for the matrices inside the transformer blocks, AdamW for the rest.

Muon steps each 2-D weight along its Nesterov momentum orthogonalised by a Newton-Schulz iteration;
the embeddings (wte, tied to lm_head, and wpe), LayerNorm gains and biases stay with AdamW, as in the
public speedruns. muon_and_adamw builds the two from a GPT (GPT.configure_optimizers makes AdamW
alone); MuonAndAdamW holds them and is what train.py steps, zeroes, clips, GradScaler-steps and
saves, as it would one torch optimizer.

Muon here is our own, with the update rule of torch.optim.Muon (PyTorch 2.9+) but batched: that one
orthogonalises the matrices one after another, some twenty small kernels each, launched from Python.
Ours updates every momentum buffer in one multi-tensor (torch._foreach_*) op, stacks the matrices of
one shape into an (N, rows, cols) tensor and runs the Newton-Schulz iteration once on the stack, in
bfloat16 batched matmuls, then applies the decay and the updates with multi-tensor ops again. The
step reads no value back to the host and branches only on shapes and hyperparameters; the learning
rate reaches the kernels as a tensor, so it may change at every step.

Its state_dict has torch.optim.Muon's layout, so either one's checkpoints load into the other:
each param group holds lr, weight_decay, momentum, nesterov, ns_coefficients, eps, ns_steps and
adjust_lr_fn (muon_and_adamw adds lr_scale, read by step.py), and the state of each parameter p is
{"momentum_buffer": a tensor shaped as p}, updated as buf = momentum * buf + (1 - momentum) * grad.

Under FSDP the parameters and gradients are DTensors sharded on dim 0, which do not stack: each
matrix is orthogonalised on its own, its Newton-Schulz matmuls run as DTensor ops, which compute
the product of the whole matrices (their collectives gather what each needs).
"""

import math
import sys

import torch

# Keller Jordan's quintic Newton-Schulz iteration, as torch.optim.Muon runs it by default
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
EPS = 1e-7


def orthogonalise(G, coefficients=NS_COEFFICIENTS, steps=NS_STEPS, eps=EPS):
    """About U V^T of G = U S V^T (the singular values brought near 1, not onto it: Keller Jordan's
    coefficients trade that for fewer steps), for a matrix or a stack of them (..., rows, cols), in
    bfloat16: X = G / |G|_F, then `steps` times X <- a X + (b A + c A^2) X with A = X X^T. A tall
    matrix takes the same steps through the smaller A = X^T X, as X <- a X + X (b A + c A^2), since
    (X X^T)^k X = X (X^T X)^k: what torch.optim.Muon computes on the transpose, without transposing."""
    a, b, c = coefficients
    X = G.bfloat16()
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    mad = torch.baddbmm if X.dim() == 3 else torch.addmm  # beta * C + alpha * (A @ B), in the matmul's epilogue
    tall = X.size(-2) > X.size(-1)
    for _ in range(steps):
        if tall:
            A = X.mT @ X
            X = mad(X, X, mad(A, A, A, beta=b, alpha=c), beta=a)
        else:
            A = X @ X.mT
            X = mad(X, mad(A, A, A, beta=b, alpha=c), X, beta=a)
    return X


def is_dtensor(t):
    """Whether t is a DTensor (FSDP's), without importing DTensor's module (half a second) when no
    DTensor can exist."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def lr_ratio(shape, adjust_lr_fn=None):
    """What torch.optim.Muon multiplies a matrix's learning rate by, for an update of the same size
    whatever its shape: sqrt(max(1, rows / cols)) (None, 'original': Keller Jordan's), or
    0.2 sqrt(max(rows, cols)) ('match_rms_adamw': Moonshot's, an update as large as AdamW's)."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1, rows / cols))


class Muon(torch.optim.Optimizer):
    """torch.optim.Muon's update, with its arguments and defaults, for 2-D parameters: each step

        buf <- momentum * buf + (1 - momentum) * grad
        update = orthogonalise(grad + momentum * (buf - grad) if nesterov else buf)
        p <- p * (1 - lr * weight_decay) - lr * lr_ratio(p.shape) * update

    batched over the matrices of each shape (see the module's docstring)."""

    def __init__(
        self,
        params,
        lr=1e-3,
        weight_decay=0.1,
        momentum=0.95,
        nesterov=True,
        ns_coefficients=NS_COEFFICIENTS,
        eps=EPS,
        ns_steps=NS_STEPS,
        adjust_lr_fn=None,
    ):
        if lr < 0 or weight_decay < 0 or momentum < 0:
            raise ValueError(f"lr={lr}, weight_decay={weight_decay} and momentum={momentum} must not be negative")
        if adjust_lr_fn not in (None, "original", "match_rms_adamw"):
            raise ValueError(f"adjust_lr_fn={adjust_lr_fn!r}: use None, 'original' or 'match_rms_adamw'")
        defaults = dict(
            lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
            ns_coefficients=tuple(ns_coefficients), eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn,
        )  # fmt: skip
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon trains 2-D parameters only, not one of shape {tuple(p.shape)}")
        self.lr_tensors = {}  # device -> the learning rate as a 0-d float32 tensor, written at each step

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            buffers = [self.momentum_buffer(p) for p in params]
            if any(map(is_dtensor, params)):  # FSDP's shards: one matrix at a time
                self.step_one_by_one(group, params, grads, buffers)
                continue
            lr = group["lr"]  # a float (train.py's, changing at each step), or a tensor the caller updates
            if not isinstance(lr, torch.Tensor):
                device = params[0].device
                if device not in self.lr_tensors:  # (made once: setdefault would allocate one at every step)
                    self.lr_tensors[device] = params[0].new_zeros((), dtype=torch.float32)
                lr = self.lr_tensors[device]
                lr.fill_(group["lr"])  # in place: no host-to-device copy, nothing waits
            self.step_stacked(group, params, grads, buffers, lr.reshape(()))
        return loss

    def momentum_buffer(self, p):
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
        return state["momentum_buffer"]

    @staticmethod
    def step_stacked(group, params, grads, buffers, lr):
        """One step of the matrices `params` (their grads and momentum buffers) at learning rate lr,
        a 0-d tensor: a few multi-tensor ops and one Newton-Schulz iteration per shape. Nothing is
        read back to the host: the step can be recorded as a CUDA graph (lr then a tensor of the
        caller's, updated in place between replays) or compiled."""
        momentum, a_b_c, steps, eps = group["momentum"], group["ns_coefficients"], group["ns_steps"], group["eps"]
        torch._foreach_lerp_(buffers, grads, 1 - momentum)
        updates = torch._foreach_lerp(grads, buffers, momentum) if group["nesterov"] else buffers
        torch._foreach_mul_(params, 1 - lr * group["weight_decay"])  # decoupled weight decay
        by_shape = {}  # shape -> (its parameters, their updates)
        for p, u in zip(params, updates):
            ps, us = by_shape.setdefault(p.shape, ([], []))
            ps.append(p)
            us.append(u)
        del updates
        for shape, (ps, us) in by_shape.items():
            stack = torch.stack(us, out=us[0].new_empty((len(us), *shape), dtype=torch.bfloat16))  # (N, rows, cols)
            us.clear()  # (their memory goes as soon as it is stacked)
            ortho = orthogonalise(stack, a_b_c, steps, eps)
            # a (1, 1, 1) float32 factor: the product is float32, p gets bfloat16's update unrounded
            factor = lr.view(1, 1, 1) * -lr_ratio(shape, group["adjust_lr_fn"])
            torch._foreach_add_(ps, (ortho * factor).unbind(0))

    @staticmethod
    def step_one_by_one(group, params, grads, buffers):
        """The same step, a matrix at a time: for DTensors, which neither stack nor take a learning
        rate as a plain tensor (one given as a tensor is read back here)."""
        momentum, lr = group["momentum"], float(group["lr"])
        for p, g, buf in zip(params, grads, buffers):
            buf.lerp_(g, 1 - momentum)
            update = g.lerp(buf, momentum) if group["nesterov"] else buf
            ortho = orthogonalise(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
            p.mul_(1 - lr * group["weight_decay"])
            p.add_(ortho, alpha=-lr * lr_ratio(p.shape, group["adjust_lr_fn"]))


def muon_and_adamw(model, weight_decay, learning_rate, betas, fused, muon):
    """Muon for the 2-D weights inside the transformer blocks (muon: Muon's keyword arguments, as
    lr, momentum, weight_decay), and for every other parameter AdamW as GPT.configure_optimizers
    makes it (decay on dim >= 2 only; fused as the caller says), as one optimizer: AdamW's two
    groups, then Muon's."""
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
    return MuonAndAdamW(adamw, Muon([{"params": matrices, "lr_scale": lr_scale}], nesterov=True, **muon))


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
