"""Sampling from a GPT: the KV cache, the next-token draw, and the generation loop.

Every step calls the model's own forward. With a KVCache the prompt goes through once and each new token costs
one position, until the sequence fills block_size; from there the last block_size tokens are recomputed at every
step, as in nanoGPT, since every cached key's position changes as the window slides. A decode step's attention
reads the cache up to a power of two past the tokens so far (its span). On CUDA each kind of step (each span of
decode step) runs once, is recorded as a CUDA graph and replayed: a small model's step waits on kernel launches.
"""

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from nanogpt_plus.cuda_graph import CUDAGraph

# The shortest span a decode step attends over. Each span is one more CUDA graph to record, which
# costs about what a few steps save; below 256 positions the reads saved are too few to pay for it.
MIN_SPAN = 256


class KVCache:
    """The keys and values of every layer for positions 0..block_size-1, filled as sampling goes.

    `pos`, the number of positions stored, stays on the device as a (1,) tensor: a forward with the cache reads
    it, stores the new keys and values there and advances it, the host never looking, so that a decode step has
    the same shapes and addresses every time and CUDA can replay it. `span` (set by the host) is how many leading
    slots attention reads: at least every position stored, the whole block unless the Sampler says less."""

    def __init__(self, config, batch_size, device, dtype):
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, hs)  # (L, B, nh, block, hs)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.slots = torch.arange(config.block_size, device=device)  # (block,): the position of each slot
        self.span = config.block_size

    def begin(self, positions):
        """Get ready for a forward of the tokens at `positions` (T,)."""
        self.positions = positions
        # query t may look at every stored position up to its own: the mask (T, span) added to the scores is 0
        # there and -inf elsewhere. Made once per forward: attention would turn a boolean mask into this in
        # every layer, 5% of a decode step.
        visible = self.slots[None, : self.span] <= positions[:, None]
        self.mask = torch.zeros(visible.shape, dtype=self.k.dtype, device=visible.device)
        self.mask.masked_fill_(~visible, float("-inf"))

    def store(self, layer, k, v):
        """Store one layer's new keys and values (B, nh, T, hs); return its first span slots (B, nh, span, hs)."""
        self.k[layer].index_copy_(2, self.positions, k.to(self.k.dtype))
        self.v[layer].index_copy_(2, self.positions, v.to(self.v.dtype))
        return self.k[layer][:, :, : self.span], self.v[layer][:, :, : self.span]


def kv_cache(model, batch_size):
    """An empty KVCache on the model's device, in the dtype its keys come out in (autocast's, if on)."""
    w, device_type = model.lm_head.weight, model.lm_head.weight.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else w.dtype
    return KVCache(model.config, batch_size, w.device, dtype)


def linear_weights(model, dtype):
    """The weights and biases of model's Linear layers cast to dtype, by parameter name."""
    return {
        f"{prefix}.{name}": p.to(dtype)
        for prefix, module in model.named_modules()
        if isinstance(module, nn.Linear)
        for name, p in module.named_parameters(recurse=False)
    }


MAX_TOKENS = 2**62  # a bound no sample reaches, under which the prompt and the new tokens count in int64


def check_sampling(max_new_tokens, temperature, top_k):
    if not 0 <= max_new_tokens < MAX_TOKENS:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be 0 or more, and below 2**62")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be 0 or more (0 means greedy decoding)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be at least 1, or None to keep every token (--top_k=None)")


def sample_next(logits, temperature=1.0, top_k=None, generator=None):
    """One token per row (B, 1) from last-position logits (B, V): scaled by 1/temperature (0: greedy), cut to
    the top_k, drawn from their softmax. The draw is torch.multinomial's own for one sample, argmax(probs / q)
    with q ~ Exp(1), written out: the same tokens from the same generator state, without the check multinomial
    reads back to the host, which would stall every step."""
    if temperature < torch.finfo(logits.dtype).tiny:  # 0, or as good as 0 for dividing the logits by it
        return torch.argmax(logits, dim=-1, keepdim=True)
    scaled = logits / temperature  # nanoGPT's, and its draws
    if temperature * torch.finfo(logits.dtype).max < 1e6:  # so small that a logit of 1e6 or less could overflow:
        # then (on such rows) the limit, the largest logits' softmax, with the largest at 0 (no inf - inf: NaN)
        shifted = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
        scaled = torch.where(torch.isfinite(scaled).all(dim=-1, keepdim=True), scaled, shifted)
    logits = scaled
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits = logits.masked_fill(logits < v[:, -1:], float("-inf"))
    probs = F.softmax(logits, dim=-1)
    q = torch.empty_like(probs).exponential_(1, generator=generator)
    return torch.argmax(probs / q, dim=-1, keepdim=True)


class Sampler:
    """Continuations of prompts of one shape: (B, T) tokens extended by max_new_tokens sampled from model (in
    eval mode), again and again; the output buffer, the KV cache and the CUDA graphs made at the first call serve
    the next ones. use_cache=False recomputes every step. Two choices are the plan's: cuda_graph (plan.cuda_graph)
    records the decode and window steps as CUDA graphs (the model on a CUDA device, no generator), and cast_to
    (plan.cast_dtype, the dtype of the autocast the calls run under) has each call cast the Linear weights to it
    once for all its steps (torch.func.functional_call), where autocast, its cast cache off, would cast them at
    every step: a tenth of a GPT-2 124M decode step on an H100, for the same tokens."""

    def __init__(
        self, model, batch_size, prompt_len, max_new_tokens, temperature=1.0, top_k=None, use_cache=True,
        cuda_graph=False, cast_to=None, generator=None,
    ):  # fmt: skip
        check_sampling(max_new_tokens, temperature, top_k)
        if prompt_len < 1:
            raise ValueError("idx must hold at least one token per row to start from")
        device = model.lm_head.weight.device
        if cuda_graph and not (device.type == "cuda" and generator is None):
            raise ValueError("cuda_graph=True needs the model on a CUDA device and generator=None")
        self.model, self.B, self.T, self.end = model, batch_size, prompt_len, prompt_len + max_new_tokens
        self.temperature, self.top_k, self.generator, self.cast_to = temperature, top_k, generator, cast_to
        self.graph_device = device if cuda_graph else None
        self.block = model.config.block_size
        self.out = torch.empty((batch_size, self.end), dtype=torch.long, device=device)  # every token lands here
        self.cached = use_cache and prompt_len <= self.block and prompt_len < self.end
        self.cache = None  # made at the first call: in the dtype of the autocast that sampling runs under
        self.weights = None  # the Linear weights in cast_to (or {}, not cast): made at the first call
        self.window = torch.arange(self.block, device=device)  # where the last block_size tokens are
        self.replays = {}  # the recorded decode and window steps

    def forward(self, idx, cache=None):
        if not self.weights:
            return self.model(idx, cache=cache)
        # tie_weights=False: lm_head's weight is cast, the token embedding it is tied to is not
        return functional_call(self.model, self.weights, (idx,), {"cache": cache}, tie_weights=False)

    def cast_weights(self):
        """Cast the model's Linear weights for this call's steps, into the tensors that the first
        call made (the recorded CUDA graphs read those)."""
        if self.weights is None:
            self.weights = linear_weights(self.model, self.cast_to) if self.cast_to is not None else {}
        else:
            for name, w in self.weights.items():
                w.copy_(self.model.get_parameter(name))

    def sample(self, logits):
        return sample_next(logits[:, -1, :], self.temperature, self.top_k, self.generator)  # (B, 1)

    def decode_step(self):  # the newest token, at position cache.pos, through the cache
        B, cache = self.B, self.cache
        logits, _ = self.forward(self.out.gather(1, cache.pos.expand(B, 1)), cache=cache)  # advances cache.pos
        self.out.scatter_(1, cache.pos.expand(B, 1), self.sample(logits))  # the next token goes right after it

    def window_step(self):  # the classic step over the last block_size tokens
        logits, _ = self.forward(self.out.index_select(1, self.window))
        self.out.index_copy_(1, self.window[-1:] + 1, self.sample(logits))
        self.window.add_(1)

    @torch.no_grad()
    def __call__(self, idx, on_tokens=None):
        """idx (B, T) and its continuation, (B, T + max_new_tokens): a new tensor. on_tokens(out, t) is
        called whenever out[:, :t] has grown by a token."""
        if tuple(idx.shape) != (self.B, self.T):
            raise ValueError(f"this Sampler continues prompts of shape {(self.B, self.T)}, not {tuple(idx.shape)}")
        out, T, end, block = self.out, self.T, self.end, self.block
        out[:, :T] = idx
        told = on_tokens or (lambda out, t: None)
        self.cast_weights()
        t = T  # tokens so far: the next one goes to out[:, t]
        if self.cached:
            self.cache = self.cache or kv_cache(self.model, self.B)
            self.cache.pos.zero_()
            self.cache.span = block
            out[:, T : T + 1] = self.sample(self.forward(out[:, :T], cache=self.cache)[0])  # prefill: the whole prompt
            t = T + 1
            told(out, t)
            t = self.repeat("decode", t, min(end, block + 1), told)
        while t < min(end, block):  # the classic step while the context is still growing
            out[:, t : t + 1] = self.sample(self.forward(out[:, :t])[0])
            t += 1
            told(out, t)
        if t < end:
            self.window.copy_(torch.arange(t - block, t, device=out.device))
            self.repeat("window", t, end, told)
        return out.clone()

    def repeat(self, kind, t, end, told):
        """Run the step of this kind once per token until there are `end` tokens (told after each);
        on CUDA it is recorded as a graph the first time, and replayed from then on."""
        step = self.decode_step if kind == "decode" else self.window_step
        while t < end:
            key = kind
            if kind == "decode":  # the newest token is at t - 1: attend up to the next power of two past it
                self.cache.span = min(self.block, max(MIN_SPAN, 1 << (t - 1).bit_length()))
                key = (kind, self.cache.span)
            if key in self.replays:
                self.replays[key]()
            elif self.graph_device is not None and end - t >= 4:  # recording costs about a few eager steps
                self.replays[key] = CUDAGraph(step, warmup=1, rewind_rng=False, device=self.graph_device)  # (it ran)
            else:
                step()
            t += 1
            told(self.out, t)
        return end
