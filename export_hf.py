"""Hand a trained model to Hugging Face: a folder that transformers.GPT2LMHeadModel loads as it is.

    python export_hf.py --out_dir=out-shakespeare --hf_dir=hf-shakespeare
    python export_hf.py --help

The folder holds config.json, model.safetensors and, for a model on GPT-2's tokens, GPT-2's tokenizer (vocab.json,
merges.txt, tokenizer_config.json): transformers.pipeline("text-generation", model=hf_dir) works. A character-level
model's vocabulary is no Hugging Face tokenizer: chars.json lists its characters by id (sample.py reads it).
"""

import json
import os

from configurator import configure
from model import ARCH_KEYS
from nanogpt_plus import checkpoint
from nanogpt_plus.atomic import atomic_folder, usual_permissions
from nanogpt_plus.errors import UserError, cannot_write, os_errno, report_user_errors
from nanogpt_plus.huggingface import hf_config, hf_state_dict, tokenizer_config
from nanogpt_plus.tokenizer import (
    GPT2_FILES,
    GPT2_VOCAB,
    char_vocabulary,
    dataset_meta,
    gpt2_tokenizer_files,
    load_meta,
)

report_user_errors()  # a mistake ends the run with one `error:` line, not a traceback

# -----------------------------------------------------------------------------
out_dir = "out"  # the folder whose ckpt.pt is exported
hf_dir = ""  # the Hugging Face model folder to write; empty: out_dir + '-hf'
overwrite = False  # replace what hf_dir already holds
# -----------------------------------------------------------------------------
configure(globals())
if not hf_dir:  # beside the checkpoint's folder, named after it (also for --out_dir=.)
    hf_dir = os.path.normpath(out_dir)
    hf_dir = (os.path.abspath(hf_dir) if os.path.basename(hf_dir) in ("", ".", "..") else hf_dir) + "-hf"
# -----------------------------------------------------------------------------


# every file an export writes: --overwrite replaces a folder holding these alone
EXPORT_FILES = ("config.json", "model.safetensors", "chars.json", *GPT2_FILES, "tokenizer_config.json")


def check_target():
    """Refuse, before any work, to replace something unasked: --overwrite replaces an earlier export, never a
    folder holding anything else (the checkpoint, other runs)."""
    if os.path.islink(hf_dir):  # the swap would replace the link, and leave what it points to
        raise UserError(f"hf_dir {hf_dir} is a symbolic link: give the folder it points to")
    if os.path.exists(hf_dir) and not os.path.isdir(hf_dir):
        raise UserError(f"hf_dir {hf_dir} is a file: choose another --hf_dir")
    hf, out = os.path.realpath(hf_dir), os.path.realpath(out_dir)
    if out == hf or out.startswith(os.path.join(hf, "")):
        inside = "is" if out == hf else "holds"
        raise UserError(f"hf_dir {hf_dir} {inside} out_dir {out_dir}, the run being exported: choose another --hf_dir")
    names = sorted(os.listdir(hf_dir)) if os.path.isdir(hf_dir) else []
    if checkpoint.CKPT_NAME in names:  # even with --overwrite
        raise UserError(f"hf_dir {hf_dir} holds a training checkpoint ({checkpoint.CKPT_NAME}): choose another hf_dir")
    foreign = [n for n in names if n not in EXPORT_FILES or not is_plain_file(os.path.join(hf_dir, n))]
    if foreign or names and not {"config.json", "model.safetensors"} <= set(names):  # an export writes both
        raise UserError(
            f"{hf_dir} holds {(foreign or names)[0]!r} and is no earlier export: choose another --hf_dir "
            "(--overwrite replaces only an export)"
        )
    if names and not overwrite:
        raise UserError(f"{hf_dir} holds an export: choose another --hf_dir, or replace it with --overwrite=True")


def is_plain_file(path):
    return os.path.isfile(path) and not os.path.islink(path)


def character_vocabulary(ckpt, vocab_size):
    """The characters of the model's dataset by id, from its meta.pkl; None for a model on GPT-2's tokens."""
    dataset, meta_path = dataset_meta(ckpt)
    if meta_path:
        itos = char_vocabulary(load_meta(meta_path, keys=("itos",)), meta_path, vocab_size)
        return [itos[i] for i in range(vocab_size)]
    if vocab_size < GPT2_VOCAB:
        missing = f"no data/{dataset}/meta.pkl was found" if dataset else "its checkpoint names no dataset"
        raise UserError(
            f"the model has {vocab_size} tokens, too few for GPT-2's, and {missing}: "
            "run export_hf.py from the folder you trained in, so that its character vocabulary is found"
        )
    return None


def write_folder(folder, model, chars, tokenizer_files):
    """Every file of the Hugging Face folder, into folder."""
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise UserError("model.safetensors is written with safetensors: pip install safetensors") from None
    files = {"config.json": hf_config(model.config, gpt2_tokens=chars is None)}
    if chars is None:
        files |= tokenizer_files | {"tokenizer_config.json": tokenizer_config(model.config.block_size)}
    else:
        files["chars.json"] = chars
    for name, content in files.items():
        data = content if isinstance(content, bytes) else json.dumps(content, indent=2).encode() + b"\n"
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
    weights = os.path.join(folder, "model.safetensors")
    save_file(hf_state_dict(model), weights, metadata={"format": "pt"})
    usual_permissions(weights)  # (safetensors makes it its owner's alone)


check_target()
ckpt = checkpoint.load(os.path.join(out_dir, checkpoint.CKPT_NAME))
extra = sorted(set(ckpt["model_args"]) - {*ARCH_KEYS, "dropout"})
if extra:  # a fork's option: the weights alone may not say what it changes, nor Hugging Face's GPT-2 hold it
    raise UserError(f"checkpoint model_args hold {extra}, unknown to nanoGPT and to Hugging Face's GPT-2")
model = checkpoint.model_from(ckpt, dropout=0.0)
chars = character_vocabulary(ckpt, model.config.vocab_size)
tokenizer_files = gpt2_tokenizer_files() if chars is None else {}
try:
    os.makedirs(os.path.dirname(os.path.abspath(hf_dir)), exist_ok=True)
    with atomic_folder(hf_dir) as folder:  # a failure midway leaves hf_dir as it was
        write_folder(folder, model, chars, tokenizer_files)
except Exception as e:  # an OS error, or safetensors' report of one (a full disk)
    if not (isinstance(e, OSError) or os_errno(e)):
        raise
    raise cannot_write(hf_dir, e, "--hf_dir") from None
print(f"exported {out_dir}/{checkpoint.CKPT_NAME} to {hf_dir}: {', '.join(sorted(os.listdir(hf_dir)))}")
if chars is not None:
    print(
        f"note: the weights and config are exported, the tokenizer is not: the {len(chars)} characters of this "
        f"model are no Hugging Face tokenizer; {hf_dir}/chars.json lists them by id (text -> ids: chars.index(c)), "
        f"and sample.py --init_from={hf_dir} reads it"
    )
