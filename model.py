"""The GPT-2 language model, with nanoGPT's math and parameter names.

Read bottom-up: LayerNorm, CausalSelfAttention, MLP, Block, GPTConfig, GPT. Training, evaluation
and every sampling step go through GPT.forward; sampling (engine.py) passes it a KVCache.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

from nanogpt_plus import engine
from nanogpt_plus.muon import MuonAndAdamW


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's own could not turn it off before 2.1)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        # the query, key and value projections of all heads, as one matrix
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.config = config  # read at every call: config.attention picks the path (plan.py sets it)
        self.layer = layer  # which slice of a KVCache is ours
        # the causal mask of the masked-softmax path; not persistent, so state dicts hold
        # parameters only, like nanoGPT's on its flash path
        mask = torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool))
        self.register_buffer("bias", mask, persistent=False)

    def forward(self, x, cache=None):
        B, T, C = x.size()
        nh = self.config.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, nh, C // nh).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, C // nh).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, C // nh).transpose(1, 2)  # (B, nh, T, hs)
        mask = None  # causal: each position sees itself and those before it
        if cache is not None:  # sampling: look at every position stored so far, these T included
            k, v = cache.store(self.layer, k, v)  # (B, nh, span, hs)
            mask = cache.mask  # (T, span)
        y = self.attend(q, k, v, mask)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): the heads side by side again
        return self.resid_dropout(self.c_proj(y))

    def attend(self, q, k, v, mask):
        """softmax(q k^T / sqrt(hs) + mask) v for queries (B, nh, T, hs) over keys and values
        (B, nh, S, hs), where mask (T, S) is 0 for the keys a query may see and -inf for the others
        (None: causal)."""
        dropout = self.config.dropout if self.training else 0.0
        if self.config.attention == "sdpa":  # flash attention and its kin: the (T, S) scores never reach memory
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None)
        T, S = q.size(-2), k.size(-2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, S)
        att = att.masked_fill(~self.bias[:T, :S], float("-inf")) if mask is None else att + mask
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
    # checkpoint's model_args, and the scripts set them from their plan (plan.py).
    attention: str = "sdpa"  # 'sdpa' (flash attention and its kin) or 'manual' (the masked softmax)
    # head_loss: how forward(idx, targets) makes the loss: 'full' makes the (B, T, V) logits, 'chunked'
    # goes chunk by chunk without them (chunked_loss.py) and returns None for them
    head_loss: str = "full"

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
        if self.attention not in ("sdpa", "manual"):
            raise ValueError(f"attention={self.attention!r}: choose sdpa or manual")
        if self.head_loss not in ("chunked", "full"):
            raise ValueError(f"head_loss={self.head_loss!r}: choose chunked or full")


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
        position to leave out (logits None when config.head_loss is 'chunked'); without targets,
        the last position's logits (B, 1, V) only. With a cache, idx continues the tokens already
        stored in it."""
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
        if self.config.head_loss == "chunked":
            from nanogpt_plus import chunked_loss  # here, not at the top: it loads torch's compiler

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
        """OpenAI's GPT-2 weights ('gpt2', ..., 'gpt2-xl') or a local Hugging Face folder, through
        Hugging Face transformers (huggingface.py converts them)."""
        from nanogpt_plus import huggingface

        return huggingface.from_pretrained(model_type, override_args)

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
        # Muon's lr follows the same schedule, scaled to its own peak (step.py applies lr_scale)
        lr_scale = muon["lr"] / learning_rate if learning_rate > 0 else 0.0
        return MuonAndAdamW(
            adamw, torch.optim.Muon([{"params": matrices, "lr_scale": lr_scale}], nesterov=True, **muon)
        )

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops):
        """Model FLOPs utilisation: FLOP/s achieved by fwdbwd_per_iter sequences in dt seconds, as
        a fraction of peak_flops. FLOPs per token as in the PaLM paper, appendix B."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        flops_per_token = 6 * self.get_num_params() + 12 * L * H * Q * T
        return flops_per_token * T * fwdbwd_per_iter / dt / peak_flops

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, on_tokens=None, **options):
        """Extend idx (B, T) by max_new_tokens sampled tokens and return all of them, (B, T + new).
        Put the model in eval() first. Each step samples the next token from the logits of the last
        block_size tokens, as nanoGPT's loop does, through a KV cache and CUDA graphs where they
        apply (engine.py holds the loop and its options)."""
        sampler = engine.Sampler(self, *idx.shape, max_new_tokens, temperature, top_k, **options)
        return sampler(idx, on_tokens)
