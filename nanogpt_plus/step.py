"""One training iteration, as train.py's loop runs it and bench.py times it.

micro_steps forward and backward passes add up the gradients of as many micro-batches (the
processes of a DDP or FSDP job synchronise them on the last one only), then the gradients are
clipped and the optimizer steps. Where the plan says so, the micro-step is recorded once as a
CUDA graph and replayed: one launch for its hundreds of kernels.
"""

import torch

from nanogpt_plus import parallel
from nanogpt_plus.cuda_graph import CUDAGraph


class TrainStep:
    """step(it, lr) trains iteration it at learning rate lr and returns the last micro-batch's loss
    (a tensor on the device: reading it waits for the GPU). get_batch(it, k) is micro-batch k of
    iteration it; the next one is fetched while the GPU works on this one."""

    def __init__(self, model, optimizer, plan, micro_steps, grad_clip, get_batch):
        self.model, self.optimizer, self.micro_steps, self.grad_clip = model, optimizer, micro_steps, grad_clip
        self.get_batch, self.ahead = get_batch, None  # ahead: ((it, k), X, Y) of the micro-batch fetched next
        self.autocast = plan.autocast()
        self.scaler = torch.amp.GradScaler(plan.device_type, enabled=plan.dtype == "float16")  # float16's
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self.record = plan.cuda_graph  # at the first call, once the optimizer and RNG states are final
        self.micro_step = self.forward_backward
        # a recorded backward adds into the memory it was recorded with: zero it, never free it
        self.set_to_none = not plan.cuda_graph

    def forward_backward(self, X, Y):
        """Forward and backward of one micro-batch: adds its gradients to .grad, returns its loss."""
        with self.autocast:
            _, loss = self.model(X, Y)
        self.scaler.scale(loss / self.micro_steps).backward()  # scaled, to average over the micro-steps
        return loss.detach()

    def __call__(self, it, lr):
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # (Muon's groups: its own peak, on the same schedule)
        for k in range(self.micro_steps):
            parallel.sync_gradients(self.model, k == self.micro_steps - 1)  # DDP/FSDP: on the last one only
            X, Y = self.ahead[1:] if self.ahead and self.ahead[0] == (it, k) else self.get_batch(it, k)
            if self.record:  # record the micro-step once: from here on each call replays it
                self.micro_step, self.record = CUDAGraph(self.forward_backward, X, Y), False
                self.optimizer.zero_grad(set_to_none=False)  # the recording's warm-up runs left gradients behind
            loss = self.micro_step(X, Y)
            key = (it, k + 1) if k + 1 < self.micro_steps else (it + 1, 0)
            self.ahead = (key, *self.get_batch(*key))  # queued behind the GPU's work on this one
        if self.grad_clip != 0.0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=self.set_to_none)  # no need for this memory anymore
        return loss
