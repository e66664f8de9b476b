"""CUDAGraph: a function recorded once as a CUDA graph (torch.cuda.graph) and replayed, one launch for all its
kernels, where a small model's step would wait on hundreds of launches: train.py's micro-step, the Sampler's
decode steps. The recorded function is the very code that runs eagerly elsewhere.
"""

import torch


class CUDAGraph:
    """fn(*inputs) recorded once, then replayed at every call, which copies its inputs into the recorded ones
    and returns the recorded outputs (the next call overwrites them). fn first runs `warmup` times on a side
    stream (CUDA's rule: libraries and torch.compile set themselves up there), then is recorded, which runs
    nothing. With rewind_rng the CUDA random state is put back after, so that the replays draw what eager calls
    would have drawn (dropout); without it, the warm-up calls count as real ones."""

    def __init__(self, fn, *inputs, warmup=2, rewind_rng=True, device=None):
        self.inputs = [x.clone() for x in inputs]
        self.device = device or self.inputs[0].device  # not always the current GPU (--device=cuda:1)
        rng = torch.cuda.get_rng_state(self.device)
        with torch.cuda.device(self.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    fn(*self.inputs)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=side):
                self.outputs = fn(*self.inputs)
        if rewind_rng:
            torch.cuda.set_rng_state(rng, self.device)

    def __call__(self, *inputs):
        for recorded, x in zip(self.inputs, inputs, strict=True):
            if x.shape != recorded.shape:  # copy_ would broadcast
                raise ValueError(f"recorded for shape {tuple(recorded.shape)}, given {tuple(x.shape)}")
            recorded.copy_(x)
        with torch.cuda.device(self.device):
            self.graph.replay()
        return self.outputs
