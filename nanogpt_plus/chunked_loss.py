"""The output head and its cross-entropy, chunk by chunk: the whole (tokens, vocab) logits never exist.

The same math as F.cross_entropy(x @ weight.T, targets, ignore_index=-1): for each chunk of tokens
the logits are made, their loss and its gradient (softmax minus the one-hot target) come out of
one pass in float32, and the gradients of x and weight are taken right there; backward only
scales them. For GPT-2's 50,304-token vocabulary at batch 32 x 1024 the logits alone are 3.3 GB
in bfloat16, and an unfused step keeps them, their float32 softmax and their gradient.

head_loss is the form GPT.head_loss takes; the plan (plan.py) installs it, and says whether the
chunk step runs compiled (on CUDA) or as written.
"""

import functools
import math

import torch

CHUNK_TOKENS = 8192  # tokens per chunk: 0.8 GB of bfloat16 logits for GPT-2's vocabulary


def chunk_loss_and_grad(logits, targets, scale):
    """The summed loss of a chunk of logits (n, V) against targets (n,), and the gradient of scale
    times it with respect to the logits (scale: 1 / the count of targets, a 0-d tensor: the mean's
    gradient), computed in float32 or better and returned in the logits' dtype; a target of -1 adds
    nothing."""
    dtype = logits.dtype
    logits = logits.to(torch.promote_types(dtype, torch.float32))
    keep = (targets != -1)[:, None]  # (n, 1)
    picked = torch.where(keep, targets[:, None], 0)  # (n, 1): a real index where the target is -1
    lse = torch.logsumexp(logits, dim=-1, keepdim=True)  # (n, 1)
    loss = ((lse - logits.gather(1, picked)) * keep).sum()
    one_hot = torch.arange(logits.size(-1), device=logits.device) == picked  # (n, V), made on the fly
    grad = (torch.exp(logits - lse) - one_hot.to(logits.dtype)) * (keep * scale)  # softmax - one-hot: one pass
    return loss, grad.to(dtype)


def add_product(total, a, b, acc):
    """total + a @ b, in the dtype acc (total None: the product alone): the weight's gradient summed over
    the chunks in float32, though each chunk's product is made in the logits' dtype."""
    product = (a @ b).to(acc)
    return product if total is None else total.add_(product)


@functools.cache
def compiled_chunk_loss_and_grad():
    """chunk_loss_and_grad compiled into a few fused kernels (made at first use: importing the
    compiler takes seconds that a run without CUDA need not pay)."""
    return torch.compile(chunk_loss_and_grad, dynamic=False)


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of x (N, C) @ weight (V, C).T against targets (N,), ignoring -1."""

    @staticmethod
    def forward(ctx, x, weight, targets, want_grads, compile_step):
        device_type = x.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else x.dtype
        xs, w = x.to(dtype), weight.to(dtype)  # cast once, not in every chunk's matmuls
        acc = torch.promote_types(dtype, torch.float32)  # sums in float32, or float64 for float64 inputs
        step = compiled_chunk_loss_and_grad() if compile_step else chunk_loss_and_grad
        want_grads = want_grads and (ctx.needs_input_grad[0] or ctx.needs_input_grad[1])
        count = (targets != -1).sum()
        scale = 1 / count.clamp(min=1).to(acc)  # the mean's: no target at all gives zero gradients
        grad_x = torch.empty_like(x) if want_grads else None
        grad_w = None  # (V, C) in acc: the first chunk's product, then each next one added
        loss = torch.zeros((), dtype=acc, device=x.device)
        n = math.ceil(len(x) / math.ceil(len(x) / CHUNK_TOKENS))  # chunks of one size where they can be
        for i in range(0, len(x), n):
            chunk_loss, grad = step(xs[i : i + n] @ w.t(), targets[i : i + n], scale)  # logits (n, V)
            loss += chunk_loss
            if want_grads:
                grad_x[i : i + n] = grad @ w
                grad_w = add_product(grad_w, grad.t(), xs[i : i + n], acc)
        if want_grads:  # (with no target at all the loss is NaN, as F.cross_entropy's)
            ctx.save_for_backward(grad_x, grad_w.to(weight.dtype))
        return loss / count

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w = ctx.saved_tensors
        return grad_x * grad_loss, grad_w * grad_loss, None, None, None


@torch.compiler.disable  # inside a compiled model this runs as written; its chunk step is compiled on its own
def linear_cross_entropy(x, weight, targets, compile_step=False):
    """The mean cross-entropy of the logits x @ weight.T (x: (..., C)) against targets (...); with
    compile_step, each chunk's loss and gradient run as one compiled kernel set (torch.compile)."""
    # (forward runs with autograd off: whether anyone wants the gradients is asked here, so that
    # an evaluation under torch.no_grad() does not work them out)
    x, targets = x.reshape(-1, x.size(-1)), targets.reshape(-1)  # (N, C), (N,): every position as one row
    return LinearCrossEntropy.apply(x, weight, targets, torch.is_grad_enabled(), compile_step)


def head_loss(x, lm_head, targets, compile_step=False):
    """GPT.head_loss chunk by chunk: no logits (None), and the mean cross-entropy of lm_head(x)
    (x: (B, T, C)) against targets (B, T), -1 left out. plan.py installs it as
    functools.partial(head_loss, compile_step=...)."""
    return None, linear_cross_entropy(x, lm_head.weight, targets, compile_step)
