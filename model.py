"""The GPT-2 language model, with nanoGPT's math and parameter names.

Read bottom-up: LayerNorm, CausalSelfAttention, MLP, Block, GPTConfig, GPT. Training, evaluation
and every sampling step go through GPT.forward; sampling passes it a KVCache.
"""

import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from cuda_graph import CUDAGraph
from muon import MuonAndAdamW


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's own could not turn it off before 2.1)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class KVCache:
    """The keys and values of every layer for positions 0..block_size-1, filled as sampling goes.

    `pos` is the number of positions stored, kept on the device as a (1,) tensor: a forward with
    the cache reads it, stores the new keys and values there and advances it, without the host
    ever looking. So a decode step has the same shapes and memory addresses every time, and CUDA
    can record it once and replay it (see GPT.generate).
    """

    def __init__(self, config, batch_size, device, dtype):
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, config.block_size, hs)  # (L, B, nh, block, hs)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.slots = torch.arange(config.block_size, device=device)  # (block,): the position of each slot

    def begin(self, positions):
        """Get ready for a forward of the tokens at `positions` (T,)."""
        self.positions = positions
        # query t may look at every stored position up to its own: (T, block), True where it may look
        self.visible = self.slots[None, :] <= positions[:, None]

    def store(self, layer, k, v):
        """Put one layer's new keys and values (B, nh, T, hs) at their positions; return all of that
        layer's keys and values (B, nh, block, hs)."""
        self.k[layer].index_copy_(2, self.positions, k.to(self.k.dtype))
        self.v[layer].index_copy_(2, self.positions, v.to(self.v.dtype))
        return self.k[layer], self.v[layer]


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        # the query, key and value projections of all heads, as one matrix
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.config = config  # read at every call: config.attention picks the path
        self.layer = layer  # which slice of a KVCache is ours
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        # the causal mask of the masked-softmax path; not persistent, so state dicts hold
        # parameters only, like nanoGPT's on its flash path
        mask = torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool))
        self.register_buffer("bias", mask, persistent=False)

    def forward(self, x, cache=None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        mask = None  # causal: each position sees itself and those before it
        if cache is not None:  # sampling: look at every position stored so far, these T included
            k, v = cache.store(self.layer, k, v)  # (B, nh, block, hs)
            mask = cache.visible  # (T, block)
        y = self.attend(q, k, v, mask)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): the heads side by side again
        return self.resid_dropout(self.c_proj(y))

    def attend(self, q, k, v, mask):
        """softmax(q k^T / sqrt(hs)) v for queries (B, nh, T, hs) over keys and values (B, nh, S, hs),
        where mask (T, S) is True for the keys a query may see (None: causal)."""
        dropout = self.dropout if self.training else 0.0
        use_sdpa = self.config.attention == "sdpa" or self.config.attention == "auto" and q.is_cuda
        if use_sdpa:  # flash attention and its kin: the (T, S) scores never reach memory
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None)
        T, S = q.size(-2), k.size(-2)
        if mask is None:
            mask = self.bias[:T, :S]
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, S)
        att = att.masked_fill(~mask, float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        return att @ v  # (B, nh, T, hs)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()  # the exact erf form, as nanoGPT (GPT-2 itself used the tanh one)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: attention, then the MLP, each added to the residual stream."""

    def __init__(self, config, layer):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        x = x + self.mlp(self.ln_2(x))
        return x


@dataclass
class GPTConfig:
    block_size: int = 1024  # the longest context the model sees (GPT-2: 1024)
    vocab_size: int = 50304  # GPT-2's 50257 tokens, padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12  # transformer blocks (GPT-2 124M: 12)
    n_head: int = 12  # attention heads per block; must divide n_embd
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0  # 0 for pretraining; 0.1+ helps when finetuning on little data
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2; False is a bit better and faster
    # The two fields below choose how the same math runs, not the architecture: they never enter a
    # checkpoint's model_args. attention: 'auto' is SDPA on CUDA and the masked softmax elsewhere;
    # 'sdpa' or 'manual' force one.
    attention: str = "auto"
    # head_loss: how forward(idx, targets) makes the loss: 'chunked' goes chunk by chunk without the
    # whole (B, T, V) logits (and returns None for them), 'full' makes them; 'auto' is chunked on CUDA
    # for a vocabulary of 8,192 or more (see chunked_loss.py), full elsewhere.
    head_loss: str = "auto"

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: pick n_embd as a multiple of n_head"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.attention not in ("auto", "sdpa", "manual"):
            raise ValueError(f"attention={self.attention!r}: choose auto, sdpa or manual")
        if self.head_loss not in ("auto", "chunked", "full"):
            raise ValueError(f"head_loss={self.head_loss!r}: choose auto, chunked or full")


# The GPTConfig fields that make a checkpoint's architecture (nanoGPT's model_args, less dropout)
ARCH_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")

# The attention masks that old nanoGPT checkpoints and Hugging Face's GPT-2 keep among their
# weights (the names end so; c_attn.bias does not)
MASK_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def head_apart_from_embedding(state):
    """Whether a state dict's lm_head.weight differs from its transformer.wte.weight: GPT ties the
    two into one tensor, so loading both would keep only one of them."""
    head, wte = state.get("lm_head.weight"), state.get("transformer.wte.weight")
    return head is not None and wte is not None and not torch.equal(head, wte)


# OpenAI's GPT-2 checkpoints, by their Hugging Face names
PRETRAINED = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M params
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M params
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M params
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M params
}


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, layer) for layer in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # weight tying: the token embedding and the output projection are one tensor
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init of the projections that write into the residual stream
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        """The parameter count, by default without the position embeddings; the token embeddings
        stay in, since they are also the weights of lm_head."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx, targets=None, cache=None):
        """Logits (B, T, V) and the mean cross-entropy against targets (B, T), where -1 marks a
        position to leave out (logits None if config.head_loss made the loss chunk by chunk);
        without targets, the last position's logits (B, 1, V) only. With a cache, idx continues
        the tokens already stored in it."""
        B, T = idx.size()
        if T > self.config.block_size:
            raise ValueError(f"cannot forward a sequence of length {T}: block_size is {self.config.block_size}")
        pos = torch.arange(T, dtype=torch.long, device=idx.device)  # (T,)
        if cache is not None:
            pos = pos + cache.pos  # after the positions already stored (read on the device: no sync)
            cache.begin(pos)
        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        pos_emb = self.transformer.wpe(pos)  # (T, C)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x, cache)
        if cache is not None:
            cache.pos += T
        x = self.transformer.ln_f(x)
        if targets is None:  # inference: only the last position's logits are needed
            return self.lm_head(x[:, -1:, :]), None  # (B, 1, V)
        how = self.config.head_loss
        if how == "chunked" or how == "auto" and x.is_cuda and self.config.vocab_size >= 8192:
            import chunked_loss  # here, not at the top: it loads torch's compiler, which sampling never needs

            return None, chunked_loss.linear_cross_entropy(x, self.lm_head.weight, targets)
        logits = self.lm_head(x)  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def crop_block_size(self, block_size):
        """Shrink the context, e.g. to finetune GPT-2 (1024) on shorter blocks."""
        if not 1 <= block_size <= self.config.block_size:
            raise ValueError(f"block_size={block_size} must be between 1 and the model's {self.config.block_size}")
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])
        for block in self.transformer.h:
            block.attn.bias = block.attn.bias[:block_size, :block_size]

    @classmethod
    def from_pretrained(cls, model_type, override_args=None):
        """OpenAI's GPT-2 weights through Hugging Face transformers: a name of PRETRAINED, or a
        local folder that GPT2LMHeadModel.from_pretrained reads."""
        override_args = override_args or {}
        if set(override_args) - {"dropout"}:
            raise ValueError(f"only 'dropout' can be overridden for pretrained models, not {sorted(override_args)}")
        if model_type not in PRETRAINED and not os.path.isdir(model_type):
            raise ValueError(f"unknown pretrained model {model_type!r}: use one of {', '.join(PRETRAINED)}")
        try:
            from transformers import GPT2LMHeadModel
        except ImportError:
            raise ImportError("GPT-2 weights need Hugging Face transformers: pip install transformers") from None
        hf = GPT2LMHeadModel.from_pretrained(model_type)
        c = hf.config
        dropout = override_args.get("dropout", 0.0)
        config = GPTConfig(c.n_positions, c.vocab_size, c.n_layer, c.n_head, c.n_embd, dropout, bias=True)
        model = cls(config)
        model.load_hf_state_dict(hf.state_dict())
        return model

    # Hugging Face's GPT-2 keeps these four weights as Conv1D, (in, out): transposed from nn.Linear
    HF_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

    @torch.no_grad()
    def load_hf_state_dict(self, hf_sd):
        """Copy in a Hugging Face GPT2LMHeadModel state dict (same names, Conv1D weights transposed)."""
        hf_sd = {k: v for k, v in hf_sd.items() if not k.endswith(MASK_SUFFIXES)}
        sd = self.state_dict()
        if set(hf_sd) != set(sd):
            missing, extra = sorted(set(sd) - set(hf_sd)), sorted(set(hf_sd) - set(sd))
            raise ValueError(f"Hugging Face weights do not match: missing {missing[:4]}, unexpected {extra[:4]}")
        if head_apart_from_embedding(hf_sd):
            untied = "its output head is apart from its token embedding (tie_word_embeddings=False)"
            raise ValueError(f"{untied}; GPT ties the two")
        for k, v in hf_sd.items():
            v = v.t() if k.endswith(self.HF_TRANSPOSED) else v
            if v.shape != sd[k].shape:
                raise ValueError(f"shape mismatch for {k}: {tuple(v.shape)} vs {tuple(sd[k].shape)}")
            sd[k].copy_(v)

    @torch.no_grad()
    def hf_state_dict(self):
        """The inverse of load_hf_state_dict: these weights as GPT2LMHeadModel names them, the Conv1D
        weights transposed and the tied head once (as transformer.wte.weight; Hugging Face ties it).
        Its GPT-2 always has biases: a model without them gets zeros, which is the same math."""
        sd = {k: v.t() if k.endswith(self.HF_TRANSPOSED) else v for k, v in self.state_dict().items()}
        del sd["lm_head.weight"]
        for name, module in self.transformer.named_modules(prefix="transformer"):
            if isinstance(module, (nn.Linear, LayerNorm)) and module.bias is None:
                sd[f"{name}.bias"] = module.weight.new_zeros(module.weight.size(0))
        return {k: v.contiguous() for k, v in sd.items()}

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, muon=None):
        """AdamW with weight decay on the matrices and embeddings only (dim >= 2), never on biases
        and LayerNorm gains; the fused kernel where torch has one for the device. Given muon (the
        keyword arguments of torch.optim.Muon), Muon takes the 2-D weights inside the transformer
        blocks instead, and the two come as one optimizer (muon.py)."""
        matrices = [p for p in self.transformer.h.parameters() if p.requires_grad and p.dim() == 2] if muon else []
        taken = set(map(id, matrices))
        params = [p for p in self.parameters() if p.requires_grad and id(p) not in taken]  # the tied weight once
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        fused = device_type in ("cuda", "cpu") or None  # None: torch's default (foreach) elsewhere
        adamw = torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)
        if not muon:
            return adamw
        return MuonAndAdamW(adamw, torch.optim.Muon(matrices, nesterov=True, **muon))

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops):
        """Model FLOPs utilisation: FLOP/s achieved by fwdbwd_per_iter sequences in dt seconds, as
        a fraction of peak_flops. FLOPs per token as in the PaLM paper, appendix B."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        flops_per_token = 6 * self.get_num_params() + 12 * L * H * Q * T
        return flops_per_token * T * fwdbwd_per_iter / dt / peak_flops

    # ------------------------------------------------------------------------ sampling

    @staticmethod
    def check_sampling(max_new_tokens, temperature, top_k):
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be 0 or more")
        if temperature < 0:
            raise ValueError(f"temperature={temperature} must be 0 or more (0 means greedy decoding)")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k={top_k} must be at least 1, or None to keep every token (--top_k=None)")

    def sample_next(self, logits, temperature=1.0, top_k=None, generator=None):
        """One token per row (B, 1) from last-position logits (B, V): scaled by 1/temperature (0
        means greedy), cut to the top_k, then drawn from their softmax.

        The draw is torch.multinomial's own algorithm for one sample, argmax(probs / q) with
        q ~ Exp(1), written out: the same tokens from the same generator state, without the check
        that multinomial reads back to the host, which would stall every step."""
        if temperature == 0:
            return torch.argmax(logits, dim=-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits = logits.masked_fill(logits < v[:, -1:], float("-inf"))
        probs = F.softmax(logits, dim=-1)
        q = torch.empty_like(probs).exponential_(1, generator=generator)
        return torch.argmax(probs / q, dim=-1, keepdim=True)

    def kv_cache(self, batch_size):
        """An empty KVCache on the model's device, in the dtype its keys come out in (autocast's, if on)."""
        w = self.lm_head.weight
        dtype = torch.get_autocast_dtype(w.device.type) if torch.is_autocast_enabled(w.device.type) else w.dtype
        return KVCache(self.config, batch_size, w.device, dtype)

    @torch.no_grad()
    def generate(
        self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True, cuda_graph=None, generator=None,
        on_tokens=None,
    ):  # fmt: skip
        """Extend idx (B, T) by max_new_tokens sampled tokens; return all of them, (B, T + new).
        Put the model in eval() first.

        Each step samples the next token from the logits of the last block_size tokens, as in
        nanoGPT. With use_cache, the prompt goes through forward once into a KVCache, then each
        new token costs one position until the sequence fills block_size; from there the last
        block_size tokens are recomputed at every step, because every token's position (and so
        every cached key) changes as the window slides. use_cache=False recomputes every step.
        On CUDA (cuda_graph None or True, no generator) each kind of step runs once for real,
        is recorded as a CUDA graph and replayed: a small model's step is bound by launches.
        on_tokens(out, t) is called whenever out[:, :t] has grown by a token.
        """
        self.check_sampling(max_new_tokens, temperature, top_k)
        B, T = idx.size()
        if T < 1:
            raise ValueError("idx must hold at least one token per row to start from")
        if cuda_graph is None:
            cuda_graph = idx.is_cuda and generator is None
        elif cuda_graph and not (idx.is_cuda and generator is None):
            raise ValueError("cuda_graph=True needs idx on a CUDA device and generator=None")
        graph_device = idx.device if cuda_graph else None
        block, end = self.config.block_size, T + max_new_tokens
        out = idx.new_empty((B, end), dtype=torch.long)  # every token lands here, nothing is concatenated
        out[:, :T] = idx
        told = on_tokens or (lambda out, t: None)

        def sample(logits):
            return self.sample_next(logits[:, -1, :], temperature, top_k, generator)  # (B, 1)

        t = T  # tokens so far: the next one goes to out[:, t]
        if use_cache and T <= block and T < end:
            cache = self.kv_cache(B)
            out[:, T : T + 1] = sample(self(out[:, :T], cache=cache)[0])  # the whole prompt at once
            t = T + 1
            told(out, t)

            def decode_step():  # the newest token, at position cache.pos, through the cache
                logits, _ = self(out.gather(1, cache.pos.expand(B, 1)), cache=cache)  # advances cache.pos
                out.scatter_(1, cache.pos.expand(B, 1), sample(logits))  # the next token goes right after it

            t = repeat(decode_step, t, min(end, block + 1), graph_device, lambda t: told(out, t))
        while t < min(end, block):  # the classic step while the context is still growing
            out[:, t : t + 1] = sample(self(out[:, :t])[0])
            t += 1
            told(out, t)
        if t < end:
            window = torch.arange(t - block, t, device=out.device)  # where the last block_size tokens are

            def window_step():  # the classic step over the last block_size tokens
                logits, _ = self(out.index_select(1, window))
                out.index_copy_(1, window[-1:] + 1, sample(logits))
                window.add_(1)

            repeat(window_step, t, end, graph_device, lambda t: told(out, t))
        return out


def repeat(step, t, end, graph_device, told):
    """Call step() once per token until there are `end` tokens (told(t) after each); given a CUDA
    graph_device, the first call is recorded as a graph there that the others replay."""
    replay = None
    while t < end:
        if replay is not None:
            replay()
        elif graph_device is not None and end - t >= 4:  # recording costs about as much as a few eager steps
            replay = CUDAGraph(step, warmup=1, rewind_rng=False, device=graph_device)  # the warm-up is this step
        else:
            step()
        t += 1
        told(t)
    return end
