"""The GPT-2 language model, with nanoGPT's math and parameter names, on torch and the standard library alone.

Read bottom-up: LayerNorm, CausalSelfAttention, MLP, Block, GPTConfig, GPT. Training, evaluation and every
sampling step go through GPT.forward; fast sampling (nanogpt_plus/engine.py) passes it a KV cache. GPTConfig is
the architecture; how the same math runs is set from outside by the scripts' plan (nanogpt_plus/plan.py): the
attention path (GPT.set_attention) and the head and loss (GPT.head_loss). Neither enters a checkpoint.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


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
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.layer = layer  # which slice of a KV cache is ours
        self.attention = "sdpa"  # or 'manual' (the masked softmax): GPT.set_attention sets it in every block
        # the causal mask of the masked-softmax path; not persistent, so state dicts hold parameters only, like
        # nanoGPT's on its flash path
        mask = torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool))
        self.register_buffer("bias", mask, persistent=False)

    def forward(self, x, cache=None):
        B, T, C = x.size()  # batch, sequence length, embedding width (n_embd)
        nh = self.n_head  # heads, each of size hs = C // nh
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
        """softmax(q k^T / sqrt(hs) + mask) v for queries (B, nh, T, hs) over keys and values (B, nh, S, hs),
        where mask (T, S) is 0 for the keys a query may see and -inf for the others (None: causal)."""
        dropout = self.dropout if self.training else 0.0
        if self.attention == "sdpa":  # flash attention and its kin: the (T, S) scores never reach memory
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


# The GPTConfig fields that make a checkpoint's architecture (nanoGPT's model_args, less dropout)
ARCH_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")

# The attention masks that old nanoGPT checkpoints and Hugging Face's GPT-2 keep among their weights
MASK_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def head_apart_from_embedding(state):
    """Whether a state dict's lm_head.weight differs from its transformer.wte.weight: GPT ties the two into
    one tensor, so loading both would keep only one of them."""
    head, wte = state.get("lm_head.weight"), state.get("transformer.wte.weight")
    return head is not None and wte is not None and not torch.equal(head, wte)


def full_logits_loss(x, lm_head, targets):
    """nanoGPT's head and loss: the logits (B, T, V) of the final hidden states x (B, T, C), and their mean
    cross-entropy against targets (B, T), where -1 marks a position to leave out."""
    logits = lm_head(x)  # (B, T, V)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
    return logits, loss


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
        # forward(idx, targets)'s head and loss: head_loss(x, lm_head, targets) -> (logits or None, loss); a plan
        # may install another, e.g. chunked_loss.py's (no whole logits)
        self.head_loss = full_logits_loss
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

    def set_attention(self, kind):
        """Every block's attention as 'sdpa' (flash attention and its kin) or 'manual' (the masked softmax)."""
        if kind not in ("sdpa", "manual"):
            raise ValueError(f"attention={kind!r}: choose sdpa or manual")
        for block in self.transformer.h:
            block.attn.attention = kind

    def get_num_params(self, non_embedding=True):
        """The parameter count, by default without the position embeddings; the token embeddings
        stay in, since they are also the weights of lm_head."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx, targets=None, cache=None):
        """Logits (B, T, V) and the mean cross-entropy against targets (B, T), -1 left out, as self.head_loss
        makes them (logits None for a head that never makes them whole); without targets, the last position's
        logits (B, 1, V) only. With a cache (engine.KVCache), idx continues the tokens stored in it."""
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
        return self.head_loss(x, self.lm_head, targets)

    def crop_block_size(self, block_size):
        """Shrink the context, e.g. to finetune GPT-2 (1024) on shorter blocks."""
        if not 1 <= block_size <= self.config.block_size:
            raise ValueError(f"block_size={block_size} must be between 1 and the model's {self.config.block_size}")
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])
        for block in self.transformer.h:
            block.attn.bias = block.attn.bias[:block_size, :block_size]

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type, fused=None):
        """AdamW with weight decay on the matrices and embeddings only (dim >= 2), never on biases and LayerNorm
        gains. device_type is nanoGPT's argument, kept so that its calls work; the fused kernel runs where the
        caller says (fused=True: the scripts' plan decides), torch's default otherwise."""
        params = [p for p in self.parameters() if p.requires_grad]  # the tied weight once
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        # (fused=False would mean the for-loop kernel; None leaves the choice to torch: foreach where it can)
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=True if fused else None)

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops):
        """Model FLOPs utilisation: the FLOP/s of fwdbwd_per_iter sequences in dt seconds as a fraction of
        peak_flops. FLOPs per token as in the PaLM paper, appendix B."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        flops_per_token = 6 * self.get_num_params() + 12 * L * H * Q * T
        return flops_per_token * T * fwdbwd_per_iter / dt / peak_flops

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """nanoGPT's sampling loop: extend idx (B, T) by max_new_tokens tokens, each drawn from the logits of
        the last block_size tokens, scaled by 1/temperature (0: the most likely token) and cut to the top_k;
        returns (B, T + max_new_tokens). Put the model in eval() first. engine.Sampler, which sample.py runs,
        draws the same tokens through a KV cache and CUDA graphs."""
        for _ in range(max_new_tokens):
            # crop the context to the last block_size tokens if it has grown longer
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size :]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :]  # (B, V): the last position's
            if temperature == 0:
                idx_next = torch.argmax(logits, dim=-1, keepdim=True)  # (B, 1)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("Inf")
                probs = F.softmax(logits, dim=-1)
                idx_next = torch.multinomial(probs, num_samples=1)  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)  # (B, T + 1)
        return idx
