"""The bridge to Hugging Face's GPT-2, both ways: OpenAI's weights in, our checkpoints out. GPT2LMHeadModel has
our parameter names, but keeps four weights of each block as Conv1D, (in, out): transposed from nn.Linear.
`transformers` is imported only here, and only when a GPT-2 model is asked for.
"""

import json
import os
import pickle
import traceback

import torch
import torch.nn as nn

from model import GPT, MASK_SUFFIXES, GPTConfig, LayerNorm, head_apart_from_embedding
from nanogpt_plus.errors import UserError, first_line, reason, unpickling_problem
from nanogpt_plus.tokenizer import EOT

# OpenAI's GPT-2 checkpoints, by their Hugging Face names
PRETRAINED = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M params
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M params
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M params
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M params
}

# the weights Hugging Face keeps as Conv1D, (in, out)
TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def is_model_name(name):
    """Whether init_from names a GPT-2 checkpoint or a local Hugging Face model folder."""
    return name in PRETRAINED or os.path.isdir(name)


def check_init_from(init_from, own):
    """A one-line error unless init_from is one of the script's own choices (own), a GPT-2 name or a folder."""
    if init_from not in own and not is_model_name(init_from):
        choices = ", ".join((*own, *PRETRAINED))
        raise UserError(f"unknown init_from={init_from!r}: use {choices} or the path of a Hugging Face model folder")


@torch.no_grad()
def load_hf_state_dict(model, hf_sd):
    """Copy a Hugging Face GPT2LMHeadModel state dict into model (same names, Conv1D transposed)."""
    hf_sd = {k: v for k, v in hf_sd.items() if not k.endswith(MASK_SUFFIXES)}
    sd = model.state_dict()
    if set(hf_sd) != set(sd):
        missing, extra = sorted(set(sd) - set(hf_sd)), sorted(set(hf_sd) - set(sd))
        raise ValueError(f"Hugging Face weights do not match: missing {missing[:4]}, unexpected {extra[:4]}")
    if head_apart_from_embedding(hf_sd):
        untied = "its output head is apart from its token embedding (tie_word_embeddings=False)"
        raise ValueError(f"{untied}; GPT ties the two")
    for k, v in hf_sd.items():
        v = v.t() if k.endswith(TRANSPOSED) else v
        if v.shape != sd[k].shape:
            raise ValueError(f"shape mismatch for {k}: {tuple(v.shape)} vs {tuple(sd[k].shape)}")
        sd[k].copy_(v)


def from_pretrained(model_type, override_args=None):
    """nanoGPT's GPT.from_pretrained, which lives here: a GPT with OpenAI's GPT-2 weights through transformers,
    from a name of PRETRAINED or a folder GPT2LMHeadModel reads; override_args may set dropout only."""
    override_args = override_args or {}
    if set(override_args) - {"dropout"}:
        raise ValueError(f"only 'dropout' can be overridden for pretrained models, not {sorted(override_args)}")
    if not is_model_name(model_type):
        raise ValueError(f"unknown pretrained model {model_type!r}: use one of {', '.join(PRETRAINED)}")
    try:
        from transformers import GPT2LMHeadModel
    except ImportError:
        raise ImportError("GPT-2 weights need Hugging Face transformers: pip install transformers") from None
    # transformers fills the weights a folder lacks with a random init, and stops at one of another shape with a
    # RuntimeError: both are said here (a folder holding the files of two models, a config.json edited by hand)
    hf, info = GPT2LMHeadModel.from_pretrained(model_type, ignore_mismatched_sizes=True, output_loading_info=True)
    wrong = [f"{k} is missing" for k in sorted(info["missing_keys"])]
    wrong += [f"{key} is of another shape" for key, *_ in sorted(info["mismatched_keys"])]
    if wrong:
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise ValueError(f"its weights do not fit its config.json: {wrong[0]}{more}")
    c = hf.config
    config = GPTConfig(
        block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd,
        dropout=override_args.get("dropout", 0.0), bias=True,
    )  # fmt: skip
    model = GPT(config)
    load_hf_state_dict(model, hf.state_dict())
    return model


def load_pretrained(name, dropout=0.0):
    """from_pretrained for the scripts: from the Hugging Face cache, a download or a folder; offline, a one-line
    error within seconds."""
    try:
        import huggingface_hub
        import requests  # here, not at the top: it costs every script's start-up for this one check
        import transformers  # noqa: F401
    except ImportError:
        raise UserError(f"{name} needs Hugging Face transformers: pip install transformers") from None
    if name in PRETRAINED and huggingface_hub.try_to_load_from_cache(name, "config.json") is None:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        try:
            if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", ""):
                raise OSError("HF_HUB_OFFLINE is set")
            requests.head(endpoint, timeout=5)
        except (OSError, requests.RequestException) as e:
            why = str(e) if "HF_HUB_OFFLINE" in str(e) else reason(e)
            raise UserError(
                f"cannot load {name}: it is not in the Hugging Face cache and {endpoint} cannot be reached "
                f"({why}); connect once to download it, or give the folder of a saved model"
            ) from None
    if name not in PRETRAINED:
        check_model_folder(name)
    try:
        return from_pretrained(name, dict(dropout=dropout))
    except pickle.UnpicklingError as e:  # (transformers loads a pytorch_model.bin with weights_only=True)
        if "GLOBAL" in str(e):
            raise UserError(
                f"refusing to load {name}: its weights file holds objects other than tensors, which could run code; "
                "only load models you trust with plain contents"
            ) from None
        raise UserError(f"cannot load {name}: its weights file is corrupt ({unpickling_problem(e)})") from None
    except OSError as e:  # the hub's errors, or transformers' on a folder
        raise UserError(f"cannot load {name} ({reason(e)}): check the name, the folder or the network") from None
    except ValueError as e:  # the weights do not fit a GPT
        raise UserError(f"cannot load {name} ({first_line(e)}): check the name or the folder") from None
    except Exception as e:  # a folder's config.json edited by hand, say (transformers' errors vary by version)
        if name in PRETRAINED or not raised_by(e, ("transformers", "huggingface_hub")):
            raise  # ours, torch's (running out of memory: the script's own line) or a bug: as it is
        raise UserError(f"cannot load {name} ({first_line(e)}): export the model again") from None


def raised_by(e, packages):
    """Whether exception e was raised in the code of one of these packages (its traceback's last frame)."""
    frames = traceback.extract_tb(e.__traceback__)
    parts = os.path.normpath(frames[-1].filename).split(os.sep) if frames else []
    return any(package in parts for package in packages)


def check_model_folder(folder):
    """A local model folder, checked before transformers reads it: a training run's folder, a folder without a
    model or one whose files are cut short is one line that says which."""
    config = os.path.join(folder, "config.json")
    if not os.path.isfile(config):
        if os.path.isfile(os.path.join(folder, "ckpt.pt")):
            raise UserError(
                f"{folder} holds a training checkpoint, not a Hugging Face model: "
                f"use --init_from=resume --out_dir={folder}"
            )
        raise UserError(f"{folder} has no config.json: give a Hugging Face model folder (export_hf.py writes one)")
    try:
        with open(config, encoding="utf-8") as f:
            if not isinstance(json.load(f), dict):  # transformers would fail with a TypeError
                raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise UserError(f"{config} is cut short or corrupt ({reason(e)}): export the model again") from None
    weights = os.path.join(folder, "model.safetensors")
    if os.path.isfile(weights):
        from safetensors import safe_open

        try:
            with safe_open(weights, framework="pt"):  # reads the header: it must cover the whole file
                pass
        except Exception as e:  # safetensors' own error (the header), or an OS error
            raise UserError(f"{weights} is cut short or corrupt ({reason(e)}): export the model again") from None


@torch.no_grad()
def hf_state_dict(model):
    """The inverse of load_hf_state_dict: model's weights as GPT2LMHeadModel names them, Conv1D transposed, the
    tied head once (as transformer.wte.weight), zero biases for a model without them (the same math)."""
    sd = {k: v.t() if k.endswith(TRANSPOSED) else v for k, v in model.state_dict().items()}
    del sd["lm_head.weight"]
    for name, module in model.transformer.named_modules(prefix="transformer"):
        if isinstance(module, (nn.Linear, LayerNorm)) and module.bias is None:
            sd[f"{name}.bias"] = module.weight.new_zeros(module.weight.size(0))
    return {k: v.contiguous() for k, v in sd.items()}


def hf_config(c, gpt2_tokens):
    """config.json of Hugging Face's GPT-2 with the shape and math of GPTConfig c."""
    config = dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=c.vocab_size)
    config |= dict(n_positions=c.block_size, n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, n_inner=None)
    config["activation_function"] = "gelu"  # the exact erf GELU of nanoGPT; GPT-2's "gelu_new" is the tanh one
    config |= dict(layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.02)
    config |= dict(scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False)
    config["tie_word_embeddings"] = True  # lm_head is the token embedding, stored once
    # GPT-2's end-of-text token, or none for characters (transformers' default 50256 is no character)
    config |= dict(bos_token_id=EOT, eos_token_id=EOT) if gpt2_tokens else dict(bos_token_id=None, eos_token_id=None)
    return config


def tokenizer_config(block_size):
    """What AutoTokenizer needs beside vocab.json and merges.txt to build GPT-2's tokenizer offline."""
    eot = "<|endoftext|>"
    special = dict(bos_token=eot, eos_token=eot, unk_token=eot)
    return dict(tokenizer_class="GPT2Tokenizer", model_max_length=block_size, add_prefix_space=False, **special)
