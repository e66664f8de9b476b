"""The GPT-2 language model, written to match nanoGPT's model math and parameter names exactly.

Read bottom-up: LayerNorm, CausalSelfAttention, MLP, Block, GPTConfig, GPT.
The model never reads a script's globals; scripts pass everything in.
"""

import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

ATTENTION_KINDS = ("auto", "sdpa", "manual")


class LayerNorm(nn.Module):
    """LayerNorm whose bias can be switched off (torch's own cannot, in older versions)."""

    def __init__(self, ndim: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class KVCache:
    """Keys and values of every layer for the positions seen so far, preallocated to block_size.

    `pos` is the number of positions already stored; a forward with a cache writes T new
    positions at pos..pos+T-1 and attends over 0..pos+T-1.

    GPT.generate's static decode step (the one CUDA graphs replay) keeps the position on the
    device instead: `index` (1,) is where the one new token goes, `visible` (1, 1, 1, block)
    marks the positions 0..index it may attend to, and attention runs over whole buffers, so
    every step has the same shapes and the same memory addresses.
    """

    def __init__(self, n_layer, batch_size, n_head, block_size, head_size, device, dtype):
        shape = (batch_size, n_head, block_size, head_size)  # (B, nh, block, hs)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.pos = 0
        self.index = None  # static step only: (1,) long tensor
        self.visible = None  # static step only: (1, 1, 1, block_size) bool tensor


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        # one fused projection for query, key and value of all heads
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.attention = config.attention
        # The causal mask for the masked-softmax path. Not persistent, so state dicts hold
        # parameters only and stay interchangeable with nanoGPT's flash-path checkpoints.
        mask = torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool))
        self.register_buffer("bias", mask.view(1, 1, config.block_size, config.block_size), persistent=False)

    def uses_sdpa(self, x) -> bool:
        if self.attention == "auto":
            return x.device.type == "cuda"
        return self.attention == "sdpa"

    def forward(self, x, cache=None, layer=0):
        B, T, C = x.size()
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if cache is None:
            y = self.attend_causal(q, k, v)
        else:
            y = self.attend_cached(q, k, v, cache, layer)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side again
        return self.resid_dropout(self.c_proj(y))

    def attend_causal(self, q, k, v):
        """Every position attends to itself and the positions before it."""
        if self.uses_sdpa(q):
            p = self.dropout if self.training else 0.0
            return F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=p, is_causal=True)
        T = q.size(-2)
        return self.attend_masked(q, k, v, self.bias[:, :, :T, :T], dropout=True)

    def attend_cached(self, q, k, v, cache, layer):
        """Store this step's keys and values at cache.pos.., then attend over everything stored so far."""
        if cache.index is not None:  # the static decode step: one token, positions on the device
            cache.k[layer].index_copy_(2, cache.index, k)
            cache.v[layer].index_copy_(2, cache.index, v)
            return self.attend_keys(q, cache.k[layer], cache.v[layer], cache.visible)
        start, T = cache.pos, q.size(-2)
        end = start + T
        cache.k[layer][:, :, start:end] = k
        cache.v[layer][:, :, start:end] = v
        if start == 0:
            # prefill: nothing earlier is stored, so this is plain causal attention (the very same
            # computation as the uncached forward, hence the same numbers)
            return self.attend_causal(q, k, v)
        k_all = cache.k[layer][:, :, :end]  # (B, nh, end, hs)
        v_all = cache.v[layer][:, :, :end]  # (B, nh, end, hs)
        # query i sits at absolute position start+i and may see keys 0..start+i; a single new
        # query (the decode step) sees every stored key, so it needs no mask at all
        mask = None if T == 1 else self.bias[:, :, start:end, :end]  # (1, 1, T, end)
        return self.attend_keys(q, k_all, v_all, mask)

    def attend_keys(self, q, k, v, mask=None):
        """Queries (B, nh, T, hs) over keys and values (B, nh, S, hs); mask (1, 1, T, S) is True
        where a query may look, None for everywhere."""
        if self.uses_sdpa(q):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.attend_masked(q, k, v, mask)

    def attend_masked(self, q, k, v, mask=None, dropout=False):
        """The masked-softmax path: softmax(q k^T / sqrt(hs), -inf where mask is False) v, with
        attention dropout if asked. Queries (B, nh, T, hs), keys and values (B, nh, S, hs), mask
        (1, 1, T, S). The KV-cache paths take no dropout, as their SDPA twin."""
        B, nh, T, hs = q.size()
        S = k.size(-2)
        # The -inf fill of the masked positions rides along in the score matmul (baddbmm adds it
        # to scale * q @ k^T): one kernel instead of a scale and a fill pass, forward and backward.
        fill = torch.zeros((T, S), dtype=q.dtype, device=q.device)
        if mask is not None:
            fill.masked_fill_(~mask[0, 0], float("-inf"))
        q3, k3, v3 = q.reshape(B * nh, T, hs), k.reshape(B * nh, S, hs), v.reshape(B * nh, S, hs)  # (B*nh, T|S, hs)
        att = torch.baddbmm(fill, q3, k3.transpose(1, 2), alpha=1.0 / math.sqrt(hs))  # (B*nh, T, S)
        att = F.softmax(att, dim=-1)
        if dropout:
            att = self.attn_dropout(att)
        return (att @ v3).view(B, nh, T, hs)  # (B, nh, T, hs)


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()  # exact erf GELU, as nanoGPT (GPT-2 itself used the tanh form)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: attention then MLP, each added to the residual stream."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


@dataclass
class GPTConfig:
    block_size: int = 1024  # longest context the model sees (GPT-2: 1024)
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for faster matmuls
    n_layer: int = 12  # transformer blocks (GPT-2 124M: 12)
    n_head: int = 12  # attention heads per block; must divide n_embd
    n_embd: int = 768  # width of the residual stream
    dropout: float = 0.0  # 0 for pretraining; 0.1+ helps when finetuning small data
    bias: bool = True  # biases in Linear and LayerNorm, as GPT-2; False is a bit better and faster
    # 'auto': flash SDPA on CUDA, masked softmax elsewhere; 'sdpa' or 'manual' force one path.
    # Not a model hyperparameter: it never enters a checkpoint's model_args.
    attention: str = "auto"

    def __post_init__(self):
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: pick n_embd as a multiple of n_head"
            )
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention={self.attention!r}: choose one of {', '.join(ATTENTION_KINDS)}")
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")


# The keys of GPTConfig that define a checkpoint's architecture (nanoGPT's model_args, less dropout).
ARCH_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")

# Dense bf16 tensor-core peaks in FLOP/s, by a substring of torch.cuda.get_device_name().
# Checked in order, so more specific names come first.
GPU_PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("A10G", 70e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
    ("V100", 125e12),  # fp16; V100 has no bf16
    ("T4", 65e12),  # fp16
)

PRETRAINED_SHAPES = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M params
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M params
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M params
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M params
}


def device_peak_flops(device) -> tuple[float | None, str]:
    """The dense bf16 peak of `device` and a label saying where the figure comes from."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None, f"no reference peak for {device.type}"
    name = torch.cuda.get_device_name(device)
    for key, flops in GPU_PEAK_FLOPS:
        if key in name:
            return flops, f"{flops / 1e12:.0f} TFLOP/s dense bf16 peak of {name}"
    return None, f"no reference peak known for {name}"


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the token embedding and the output projection are one tensor.
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

    def get_num_params(self, non_embedding=True) -> int:
        """Parameter count; position embeddings are left out by default, token embeddings stay
        in because they are tied to lm_head, whose weights do count."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def set_attention(self, kind: str):
        """Force an attention path ('sdpa', 'manual') or go back to choosing by device ('auto')."""
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"attention={kind!r}: choose one of {', '.join(ATTENTION_KINDS)}")
        self.config.attention = kind
        for block in self.transformer.h:
            block.attn.attention = kind

    def forward(self, idx, targets=None, cache=None):
        """Logits for every position and the mean cross-entropy when `targets` is given;
        otherwise logits for the last position only, shape (B, 1, vocab_size)."""
        B, T = idx.size()
        start = 0 if cache is None else cache.pos
        if start + T > self.config.block_size:
            raise ValueError(f"cannot forward a sequence of length {start + T}: block_size is {self.config.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        tok_emb = self.transformer.wte(idx)  # (B, T, C)
        pos_emb = self.transformer.wpe(pos)  # (T, C)
        x = self.transformer.drop(tok_emb + pos_emb)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i)
        if cache is not None:
            cache.pos += T
        if targets is not None:
            return self.head_with_loss(x, targets)
        x = self.transformer.ln_f(x)
        # inference: only the last position's logits are needed; -1: keeps the time dim
        logits = self.lm_head(x[:, -1:, :])  # (B, 1, V)
        return logits, None

    def head_with_loss(self, x, targets):
        """The final LayerNorm, the logits (B, T, V) of every position and their mean cross-entropy
        against targets (B, T), where -1 marks a position to ignore. A method of its own so that
        train.py can compile it apart from the blocks (see train.compile_blocks)."""
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def crop_block_size(self, block_size: int):
        """Shrink the context length, e.g. to finetune GPT-2 (1024) with a shorter block."""
        if not 1 <= block_size <= self.config.block_size:
            raise ValueError(f"block_size={block_size} must be between 1 and the model's {self.config.block_size}")
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])
        for block in self.transformer.h:
            block.attn.bias = block.attn.bias[:, :, :block_size, :block_size]

    @classmethod
    def from_pretrained(cls, model_type, override_args=None):
        """GPT-2 weights from Hugging Face: a name in PRETRAINED_SHAPES or a local model directory."""
        override_args = override_args or {}
        unknown = set(override_args) - {"dropout"}
        if unknown:
            raise ValueError(f"only 'dropout' can be overridden for pretrained models, not {sorted(unknown)}")
        try:
            from transformers import GPT2LMHeadModel
        except ImportError as e:
            raise ImportError(
                "loading GPT-2 weights needs Hugging Face transformers: pip install 'nanogpt-plus[transformers]'"
            ) from e
        if model_type not in PRETRAINED_SHAPES and not _is_local_dir(model_type):
            raise ValueError(
                f"unknown pretrained model {model_type!r}: use one of {', '.join(PRETRAINED_SHAPES)} "
                "or a local Hugging Face model directory"
            )
        hf = GPT2LMHeadModel.from_pretrained(model_type)
        hc = hf.config
        config = GPTConfig(
            n_layer=hc.n_layer,
            n_head=hc.n_head,
            n_embd=hc.n_embd,
            block_size=hc.n_positions,
            vocab_size=hc.vocab_size,
            bias=True,  # GPT-2 checkpoints always have biases
            dropout=override_args.get("dropout", 0.0),
        )
        model = cls(config)
        model.load_hf_state_dict(hf.state_dict())
        return model

    @torch.no_grad()
    def load_hf_state_dict(self, hf_sd):
        """Copy a Hugging Face GPT2LMHeadModel state dict in, transposing its Conv1D weights."""
        # HF keeps the attention mask as a buffer; it holds no weights.
        hf_sd = {k: v for k, v in hf_sd.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
        sd = self.state_dict()
        if set(hf_sd) != set(sd):
            missing, extra = sorted(set(sd) - set(hf_sd)), sorted(set(hf_sd) - set(sd))
            raise ValueError(f"Hugging Face weights do not match: missing {missing[:4]}, unexpected {extra[:4]}")
        conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        for k, v in hf_sd.items():
            # HF's Conv1D stores (in, out); nn.Linear wants (out, in)
            v = v.t() if k.endswith(conv1d) else v
            if v.shape != sd[k].shape:
                raise ValueError(f"shape mismatch for {k}: {tuple(v.shape)} vs {tuple(sd[k].shape)}")
            sd[k].copy_(v)

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        """AdamW with weight decay on matrices and embeddings (dim >= 2) only, never on biases
        and LayerNorm gains; the fused kernel (the same update in one pass) on CUDA and CPU."""
        params = [p for p in self.parameters() if p.requires_grad]  # tied weights appear once
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if device_type in ("cuda", "cpu"):
            try:
                return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=True)
            except (RuntimeError, TypeError):  # a torch without the fused kernel for this device
                pass
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)

    def flops_per_token(self) -> float:
        """Training FLOPs per token, PaLM appendix B: 6N for the matmuls plus 12*L*H*Q*T for attention."""
        cfg = self.config
        N = self.get_num_params()
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        return 6 * N + 12 * L * H * Q * T

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops=None):
        """Model FLOPs utilisation: achieved FLOP/s over the device's peak.

        fwdbwd_per_iter sequences of block_size tokens each take dt seconds. peak_flops defaults
        to the dense bf16 peak of the device holding the model (see device_peak_flops); returns
        None when no peak is known (CPU, MPS, an unlisted GPU).
        """
        if peak_flops is None:
            peak_flops, _ = device_peak_flops(self.lm_head.weight.device)
            if peak_flops is None:
                return None
        flops_per_iter = self.flops_per_token() * self.config.block_size * fwdbwd_per_iter
        return flops_per_iter / dt / peak_flops

    def sample_next(self, logits, temperature=1.0, top_k=None, generator=None):
        """One token per row from last-position logits (B, V): temperature, top-k, softmax,
        multinomial. temperature=0 means greedy decoding.

        The draw is torch.multinomial(probs, 1)'s own algorithm for one sample, argmax(probs / q)
        with q ~ Exp(1), written out: the same tokens from the same generator state, minus the
        validity check that multinomial reads back to the host, which would stall every step
        and cannot be captured in a CUDA graph."""
        if temperature == 0:
            return torch.argmax(logits, dim=-1, keepdim=True)  # (B, 1)
        logits = logits / temperature
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits = logits.masked_fill(logits < v[:, -1:], float("-inf"))
        probs = F.softmax(logits, dim=-1)
        q = torch.empty_like(probs).exponential_(1, generator=generator)
        return torch.argmax(probs / q, dim=-1, keepdim=True)  # (B, 1)

    @torch.no_grad()
    def generate(
        self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True, generator=None, cuda_graph=None
    ):
        """Extend idx (B, T) by max_new_tokens sampled tokens. Put the model in eval() first.

        Sampling is the classic loop's: the context is the last block_size tokens, the last
        position's logits are divided by temperature (0 means greedy), cut to the top_k, and
        one token is drawn per row from their softmax.

        With use_cache, each new token costs one position through a KV cache while the
        sequence fits in block_size; past that the context is cropped to the last block_size
        tokens and recomputed each step, exactly as the classic loop does, because every
        token's absolute position (and so every cached key) changes when the window slides.
        use_cache=False is the classic loop itself.

        On CUDA the cached path records one decode step (and one sliding-window step) as a CUDA
        graph and replays it, since a small model's step is bound by kernel launches;
        cuda_graph=False keeps it eager. Graphs need the default generator.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k={top_k} must be >= 1 (or None for no top-k filtering)")
        if temperature < 0:
            raise ValueError(f"temperature={temperature} must be >= 0 (0 means greedy decoding)")
        B, T = idx.size()
        if T < 1:
            raise ValueError("idx must hold at least one token per row to start from")
        if cuda_graph is None:
            cuda_graph = use_cache and idx.is_cuda and generator is None and not torch.compiler.is_compiling()
        elif cuda_graph and not (use_cache and idx.is_cuda and generator is None):
            raise ValueError("cuda_graph=True needs use_cache=True, idx on a CUDA device and generator=None")
        # tokens are written into one preallocated buffer, not concatenated step by step
        out = idx.new_empty((B, T + max_new_tokens))
        out[:, :T] = idx
        if cuda_graph:
            self.generate_static(out, T, temperature, top_k, capture=True)
            return out
        block_size = self.config.block_size
        cache = None
        for t in range(T, T + max_new_tokens):  # t: tokens so far, and where the next one goes
            if use_cache and t <= block_size:
                if cache is None:  # prefill with the whole prompt
                    cache = self.new_cache(B)
                    logits, _ = self(out[:, :t], cache=cache)
                else:  # one new position: the token sampled last step
                    logits, _ = self(out[:, t - 1 : t], cache=cache)
            else:  # the classic step: the last block_size tokens, recomputed
                logits, _ = self(out[:, max(0, t - block_size) : t])
            out[:, t : t + 1] = self.sample_next(logits[:, -1, :], temperature, top_k, generator)
        return out

    @torch.no_grad()
    def generate_static(self, out, T, temperature=1.0, top_k=None, generator=None, capture=False):
        """Fill out[:, T:] with sampled tokens, given the prompt in out[:, :T]: generate's cached
        path built from steps whose shapes never change, so that CUDA can replay them.

        After an eager prefill, the decode step reads the newest token and its position from
        device memory, writes its keys and values into the cache, attends over the whole cache
        through a mask and writes the sampled token back into `out`; past block_size the window
        step recomputes the last block_size tokens, as the classic loop does. With capture (CUDA
        only), each kind of step runs once eagerly, is recorded as a graph, and is replayed.
        """
        B, end = out.size()
        block_size = self.config.block_size
        t = T
        if T <= block_size and t < end:
            cache = self.new_cache(B)
            logits, _ = self(out[:, :T], cache=cache)  # prefill: any length, run eagerly
            out[:, T : T + 1] = self.sample_next(logits[:, -1, :], temperature, top_k, generator)
            t += 1
            steps = min(end, block_size + 1) - t  # steps while the newest token's position < block_size
            if steps > 0:
                cache.index = torch.full((1,), t - 1, dtype=torch.long, device=out.device)
                positions = torch.arange(block_size, device=out.device).view(1, 1, 1, block_size)

                def decode_step():
                    pos = cache.index
                    cache.visible = positions <= pos
                    x = self.transformer.wte(out.index_select(1, pos)) + self.transformer.wpe(pos)  # (B, 1, C)
                    x = self.transformer.drop(x)
                    for i, block in enumerate(self.transformer.h):
                        x = block(x, cache, i)
                    logits = self.lm_head(self.transformer.ln_f(x))  # (B, 1, V)
                    out.index_copy_(1, pos + 1, self.sample_next(logits[:, -1, :], temperature, top_k, generator))
                    pos += 1

                _run_steps(decode_step, steps, capture and out.device)
                t += steps
        if t < end:
            window = torch.arange(t - block_size, t, device=out.device)  # where the context lies in out

            def window_step():
                logits, _ = self(out.index_select(1, window))  # (B, 1, V): the uncached forward
                out.index_copy_(1, window[-1:] + 1, self.sample_next(logits[:, -1, :], temperature, top_k, generator))
                window.add_(1)

            _run_steps(window_step, end - t, capture and out.device)
        return out

    def new_cache(self, batch_size: int) -> KVCache:
        cfg = self.config
        w = self.lm_head.weight
        dtype = torch.get_autocast_dtype(w.device.type) if torch.is_autocast_enabled(w.device.type) else w.dtype
        hs = cfg.n_embd // cfg.n_head
        return KVCache(cfg.n_layer, batch_size, cfg.n_head, cfg.block_size, hs, w.device, dtype)


# Fewer steps than this are not worth recording a CUDA graph for.
MIN_GRAPH_STEPS = 4


def record_cuda_graph(fn, device, warmup=1, before_each=lambda: None):
    """Run fn() `warmup` times on a side stream of `device` (lazy initialisation and compilation
    must not happen while recording), then record one more call as a CUDA graph, not run.
    before_each() goes ahead of every call. Returns the graph and what the recorded call returned.
    Everything happens on `device`, which need not be the current one: recording on another
    device's stream would capture nothing."""
    with torch.cuda.device(device):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                before_each()
                fn()
        torch.cuda.current_stream().wait_stream(side)
        before_each()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=side):
            out = fn()
    return graph, out


def _run_steps(step, n, capture_device=None):
    """Call step() n times; given a CUDA device, once eagerly, then recorded as a CUDA graph
    and replayed n - 1 times."""
    if not capture_device or n < MIN_GRAPH_STEPS:
        for _ in range(n):
            step()
        return
    graph, _ = record_cuda_graph(step, capture_device)  # the warm-up call is the first step
    with torch.cuda.device(capture_device):
        for _ in range(n - 1):
            graph.replay()


def _is_local_dir(path) -> bool:
    return os.path.isdir(str(path))
