"""The GPT-2 language model, written to match nanoGPT's model math and parameter names exactly.

Read bottom-up: LayerNorm, CausalSelfAttention, MLP, Block, GPTConfig, GPT.
The model never reads a script's globals; scripts pass everything in.
"""

import inspect
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
    """

    def __init__(self, n_layer, batch_size, n_head, block_size, head_size, device, dtype):
        shape = (batch_size, n_head, block_size, head_size)  # (B, nh, block, hs)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.pos = 0


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
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, T)
        att = att.masked_fill(~self.bias[:, :, :T, :T], float("-inf"))
        att = F.softmax(att, dim=-1)
        att = self.attn_dropout(att)
        return att @ v  # (B, nh, T, hs)

    def attend_cached(self, q, k, v, cache, layer):
        """Store this step's keys and values, then attend over everything stored so far."""
        start, T = cache.pos, q.size(-2)
        end = start + T
        cache.k[layer][:, :, start:end] = k
        cache.v[layer][:, :, start:end] = v
        k_all = cache.k[layer][:, :, :end]  # (B, nh, end, hs)
        v_all = cache.v[layer][:, :, :end]  # (B, nh, end, hs)
        # query i sits at absolute position start+i and may see keys 0..start+i
        mask = self.bias[:, :, start:end, :end]  # (1, 1, T, end)
        if self.uses_sdpa(q):
            return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
        att = (q @ k_all.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, end)
        att = att.masked_fill(~mask, float("-inf"))
        return F.softmax(att, dim=-1) @ v_all  # (B, nh, T, hs)


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
        x = self.transformer.ln_f(x)
        if cache is not None:
            cache.pos += T
        if targets is not None:
            logits = self.lm_head(x)  # (B, T, V)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
            return logits, loss
        # inference: only the last position's logits are needed; [-1] keeps the time dim
        logits = self.lm_head(x[:, [-1], :])  # (B, 1, V)
        return logits, None

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
        and LayerNorm gains; the fused kernel on CUDA."""
        params = [p for p in self.parameters() if p.requires_grad]  # tied weights appear once
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        use_fused = device_type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters
        extra = {"fused": True} if use_fused else {}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)

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
        multinomial. temperature=0 means greedy decoding."""
        if temperature == 0:
            return torch.argmax(logits, dim=-1, keepdim=True)  # (B, 1)
        logits = logits / temperature
        if top_k is not None:
            v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
            logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
        probs = F.softmax(logits, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator)  # (B, 1)

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, use_cache=True, generator=None):
        """Extend idx (B, T) by max_new_tokens sampled tokens. Put the model in eval() first.

        With use_cache, each new token costs one position through a KV cache while the
        sequence fits in block_size; past that the context is cropped to the last block_size
        tokens and recomputed each step, exactly as the classic loop does, because every
        token's absolute position (and so every cached key) changes when the window slides.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k={top_k} must be >= 1 (or None for no top-k filtering)")
        block_size = self.config.block_size
        cache = None
        for _ in range(max_new_tokens):
            if use_cache and idx.size(1) <= block_size:
                if cache is None:  # prefill with the whole prompt
                    cache = self.new_cache(idx.size(0))
                    logits, _ = self(idx, cache=cache)
                else:  # one new position
                    logits, _ = self(idx[:, -1:], cache=cache)
            else:
                logits, _ = self(idx if idx.size(1) <= block_size else idx[:, -block_size:])
            idx_next = self.sample_next(logits[:, -1, :], temperature, top_k, generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx

    def new_cache(self, batch_size: int) -> KVCache:
        cfg = self.config
        w = self.lm_head.weight
        dtype = torch.get_autocast_dtype(w.device.type) if torch.is_autocast_enabled(w.device.type) else w.dtype
        hs = cfg.n_embd // cfg.n_head
        return KVCache(cfg.n_layer, batch_size, cfg.n_head, cfg.block_size, hs, w.device, dtype)


def _is_local_dir(path) -> bool:
    return os.path.isdir(str(path))
