"""Hand a trained model to Hugging Face: a folder that transformers.GPT2LMHeadModel loads as it is.

    python export_hf.py --out_dir=out-shakespeare --hf_dir=hf-shakespeare
    python export_hf.py --help

The folder holds config.json and model.safetensors and, for a model on GPT-2's tokens, GPT-2's
tokenizer (vocab.json, merges.txt, tokenizer_config.json), so that
transformers.pipeline("text-generation", model=hf_dir) works. A character-level model's vocabulary
is no Hugging Face tokenizer: chars.json lists its characters by id.
"""

import json
import os

import checkpoint
from atomic import atomic_folder
from configurator import configure
from errors import UserError, first_line, report_user_errors
from model import ARCH_KEYS

report_user_errors()  # a mistake ends the run with one `error:` line, not a traceback

# -----------------------------------------------------------------------------
out_dir = "out"  # the folder whose ckpt.pt is exported
hf_dir = ""  # the Hugging Face model folder to write; empty: out_dir + '-hf'
overwrite = False  # replace what hf_dir already holds
# -----------------------------------------------------------------------------
configure(globals())
if not hf_dir:  # beside the checkpoint's folder
    hf_dir = out_dir.rstrip("/") + "-hf"
# -----------------------------------------------------------------------------

# the files behind tiktoken's gpt2 encoding (tiktoken_ext.openai_public.gpt2): Hugging Face's names,
# then the URL and sha256 tiktoken fetches and checks them by
GPT2_BPE = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
GPT2_FILES = {
    "vocab.json": (GPT2_BPE + "encoder.json", "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "merges.txt": (GPT2_BPE + "vocab.bpe", "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}
GPT2_VOCAB, EOT = 50257, 50256  # GPT-2's tokens, and the id of <|endoftext|>, its only special one


def check_target():
    """Refuse, before any work, to write where it would replace something unasked."""
    if os.path.exists(hf_dir) and not os.path.isdir(hf_dir):
        raise UserError(f"hf_dir {hf_dir} is a file: choose another --hf_dir")
    if os.path.exists(os.path.join(hf_dir, checkpoint.CKPT_NAME)):  # even with --overwrite
        raise UserError(f"hf_dir {hf_dir} holds a training checkpoint ({checkpoint.CKPT_NAME}): choose another hf_dir")
    if os.path.isdir(hf_dir) and os.listdir(hf_dir) and not overwrite:
        raise UserError(f"{hf_dir} already holds files: choose another --hf_dir, or replace them with --overwrite=True")


def classic_model(ckpt):
    """The checkpoint's GPT, if Hugging Face's GPT-2 can hold exactly it."""
    extra = sorted(set(ckpt["model_args"]) - {*ARCH_KEYS, "dropout"})
    if extra:  # a fork's option: the weights alone may not say what it changes
        raise UserError(f"checkpoint model_args hold {extra}, unknown to nanoGPT and to Hugging Face's GPT-2")
    return checkpoint.model_from(ckpt, dropout=0.0)


def character_vocabulary(ckpt, vocab_size):
    """The characters of the model's dataset by id, from its meta.pkl as sample.py finds it; None
    for a model on GPT-2's tokens."""
    dataset, meta_path = checkpoint.dataset_meta(ckpt)
    if meta_path:
        itos = checkpoint.load_meta(meta_path, keys=("itos",))["itos"]
        return [itos[i] for i in sorted(itos)] if isinstance(itos, dict) else list(itos)
    if vocab_size < GPT2_VOCAB:
        raise UserError(
            f"the model has {vocab_size} tokens, too few for GPT-2's, and no data/{dataset}/meta.pkl was found: "
            "run export_hf.py from the folder you trained in, so that its character vocabulary is found"
        )
    return None


def gpt2_tokenizer_files():
    """OpenAI's encoder.json and vocab.bpe as vocab.json and merges.txt, from tiktoken's cache."""
    from tiktoken.load import read_file_cached

    try:
        return {name: read_file_cached(url, sha256) for name, (url, sha256) in GPT2_FILES.items()}
    except Exception as e:
        raise UserError(
            f"cannot get GPT-2's tokenizer files ({first_line(e)}): tiktoken downloads them once, so connect to "
            "the internet or set TIKTOKEN_CACHE_DIR to a folder that holds them"
        ) from None


def hf_config(c, gpt2_tokens):
    """config.json of Hugging Face's GPT-2 with this model's shape and math."""
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
    save_file(model.hf_state_dict(), os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})


check_target()
ckpt = checkpoint.load(os.path.join(out_dir, checkpoint.CKPT_NAME))
model = classic_model(ckpt)
chars = character_vocabulary(ckpt, model.config.vocab_size)
tokenizer_files = gpt2_tokenizer_files() if chars is None else {}
try:
    os.makedirs(os.path.dirname(os.path.abspath(hf_dir)), exist_ok=True)
    with atomic_folder(hf_dir) as folder:  # a failure midway leaves hf_dir as it was
        write_folder(folder, model, chars, tokenizer_files)
except OSError as e:
    raise UserError(f"cannot write {hf_dir} ({first_line(e)}): free some space or choose another --hf_dir") from None
print(f"exported {out_dir}/{checkpoint.CKPT_NAME} to {hf_dir}: {', '.join(sorted(os.listdir(hf_dir)))}")
if chars is not None:
    print(
        f"note: the weights and config are exported, the tokenizer is not: the {len(chars)} characters of this "
        f"model are no Hugging Face tokenizer; {hf_dir}/chars.json lists them by id (text -> ids: chars.index(c))"
    )
