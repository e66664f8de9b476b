"""Sample from a trained model, or from a GPT-2 checkpoint of Hugging Face.

    python sample.py --out_dir=out-shakespeare-char
    python sample.py --init_from=gpt2-xl --start="What is the answer to life?" --num_samples=5
    python sample.py --start=FILE:prompt.txt --temperature=0   # greedy decoding

Settings are the module-level values below, changed by config files and --key=value flags
(see configurator.py). Each sample is printed followed by a line of dashes.
"""

import os

import bytecode_cache  # noqa: F401  (before torch: caches its bytecode when the install has none)

# isort: split
import torch

from common import (
    CHECKPOINT_NAME,
    UserError,
    autocast_context,
    check_device,
    check_dtype,
    default_device,
    default_dtype,
    enable_tf32,
    first_line,
    load_checkpoint,
    load_meta,
    model_from_checkpoint,
    run_main,
)
from configurator import configure
from model import PRETRAINED_SHAPES

# -----------------------------------------------------------------------------
init_from = "resume"  # 'resume' (the checkpoint in out_dir) or a GPT-2 variant, e.g. 'gpt2-xl'
out_dir = "out"  # ignored unless init_from is 'resume'
start = "\n"  # the prompt: text such as "<|endoftext|>", or "FILE:prompt.txt" to read it from a file
num_samples = 10  # number of samples to draw
max_new_tokens = 500  # number of tokens generated in each sample
temperature = 0.8  # 1.0 = no change, < 1.0 = less random, > 1.0 = more random, 0 = greedy
top_k = 200  # keep only the top_k most likely tokens, clamp others to have 0 probability; None keeps all
seed = 1337
device = default_device()  # 'cpu', 'cuda', 'cuda:0', 'mps', ...
dtype = default_dtype(device)  # 'float32', 'bfloat16' or 'float16'
compile = False  # compile the model's forward with torch.compile (slow to start, faster per token)
# -----------------------------------------------------------------------------

_SEPARATOR = "---------------"
_PRETRAINED = tuple(PRETRAINED_SHAPES)  # gpt2, gpt2-medium, gpt2-large, gpt2-xl
_TRAIN_HINT = "python train.py config/train_shakespeare_char.py"


def read_config(argv=None) -> dict:
    """The settings after config files and flags, with dtype following a changed device."""
    config, changed = configure(globals(), argv, nullable={"top_k"})
    if "device" in changed and "dtype" not in changed:
        config["dtype"] = default_dtype(config["device"])
    check_settings(config)
    return config


def check_settings(c: dict):
    if c["init_from"] != "resume" and c["init_from"] not in _PRETRAINED and not os.path.isdir(c["init_from"]):
        raise UserError(
            f"unknown init_from {c['init_from']!r}: use 'resume' (the checkpoint in out_dir) "
            f"or one of {', '.join(_PRETRAINED)}"
        )
    if c["top_k"] is not None and c["top_k"] < 1:
        raise UserError(f"top_k={c['top_k']} must be at least 1: use --top_k=None to keep every token")
    if c["max_new_tokens"] < 0:
        raise UserError(f"max_new_tokens={c['max_new_tokens']} must be 0 or more")
    if c["num_samples"] < 1:
        raise UserError(f"num_samples={c['num_samples']} must be at least 1")
    if c["temperature"] < 0:
        raise UserError(f"temperature={c['temperature']} must be 0 or more (0 means greedy decoding)")


def load_model(c: dict):
    """The model in eval mode on the CPU, and the checkpoint it came from (None for GPT-2)."""
    if c["init_from"] == "resume":
        ckpt_path = os.path.join(c["out_dir"], CHECKPOINT_NAME)
        if not os.path.isfile(ckpt_path):
            raise UserError(
                f"no checkpoint at {ckpt_path}: train one first ({_TRAIN_HINT}) "
                "or set --out_dir to the folder that holds ckpt.pt"
            )
        ckpt = load_checkpoint(ckpt_path, map_location="cpu")
        model = model_from_checkpoint(ckpt, dropout=0.0)
    else:
        from model import GPT

        try:
            model = GPT.from_pretrained(c["init_from"], dict(dropout=0.0))
        except Exception as e:  # no network, no transformers, a broken download, ...
            raise UserError(
                f"cannot load pretrained {c['init_from']} ({first_line(e)}): it needs the transformers "
                "package and either internet access or the weights in the Hugging Face cache"
            ) from None
        ckpt = None
    model.eval()
    return model, ckpt


def find_meta(dataset: str) -> str | None:
    """data/<dataset>/meta.pkl relative to the working directory as classic nanoGPT looks for it,
    else beside this script."""
    here = os.path.join("data", dataset, "meta.pkl")
    beside = os.path.join(os.path.dirname(os.path.abspath(__file__)), here)
    for path in (here, beside):
        if os.path.isfile(path):
            return path
    return None


def load_codec(ckpt):
    """encode(text) -> ids and decode(ids) -> text: the dataset's char vocabulary when its meta.pkl
    exists, else GPT-2's BPE."""
    dataset = None
    if ckpt is not None and isinstance(ckpt.get("config"), dict):
        dataset = ckpt["config"].get("dataset")
    meta_path = find_meta(str(dataset)) if dataset else None
    if meta_path is not None:
        print(f"Loading meta from {meta_path}...")
        return char_codec(load_meta(meta_path), meta_path)
    print("No meta.pkl found, assuming GPT-2 encodings...")
    return gpt2_codec()


def char_codec(meta: dict, meta_path: str):
    stoi = meta["stoi"]
    itos = meta["itos"]
    if isinstance(itos, list):
        itos = dict(enumerate(itos))

    def encode(s: str) -> list[int]:
        missing = list(dict.fromkeys(ch for ch in s if ch not in stoi))
        if missing:
            shown = ", ".join(repr(ch) for ch in missing[:20]) + (", ..." if len(missing) > 20 else "")
            raise UserError(
                f"prompt has characters the vocabulary lacks: {shown}; "
                f"use only characters of the training text ({meta_path} has {len(stoi)})"
            )
        return [stoi[ch] for ch in s]

    def decode(ids: list[int]) -> str:
        return "".join(itos.get(i, "\ufffd") for i in ids)

    return encode, decode


def gpt2_codec():
    import tiktoken

    try:
        enc = tiktoken.get_encoding("gpt2")
    except Exception as e:
        raise UserError(
            f"cannot load tiktoken's gpt2 encoding ({first_line(e)}): it is downloaded once, "
            "so connect to the internet or set TIKTOKEN_CACHE_DIR to a folder that holds it"
        ) from None

    def encode(s: str) -> list[int]:
        return enc.encode(s, allowed_special={"<|endoftext|>"})

    def decode(ids: list[int]) -> str:
        # ids past GPT-2's 50257 are the padding of a 50304 vocabulary: they have no text
        return enc.decode([i for i in ids if i < enc.n_vocab])

    return encode, decode


def read_prompt(start: str) -> str:
    """The prompt text; FILE:path reads it from a file."""
    if not start.startswith("FILE:"):
        return start
    path = start[len("FILE:") :]
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"prompt file {path} not found (from --start=FILE:{path}): check the path") from None
    except UnicodeDecodeError:
        raise UserError(f"prompt file {path} is not UTF-8 text: save it as UTF-8") from None
    except OSError as e:
        raise UserError(f"cannot read prompt file {path}: {e.strerror}") from None


def encode_prompt(encode, text: str, vocab_size: int) -> list[int]:
    ids = encode(text)
    if not ids:
        raise UserError("the prompt is empty: give at least one character, e.g. --start='\\n'")
    if max(ids) >= vocab_size:
        raise UserError(
            f"the prompt encodes to token id {max(ids)} but the model has only {vocab_size} tokens: "
            "the tokenizer does not match the model (is the dataset's meta.pkl missing from data/?)"
        )
    return ids


def main(argv=None):
    c = read_config(argv)
    device_type = check_device(c["device"])
    check_dtype(c["device"], c["dtype"])
    prompt = read_prompt(c["start"])  # before the slow model load, so a wrong path fails at once

    torch.manual_seed(c["seed"])  # seeds every device
    enable_tf32()
    model, ckpt = load_model(c)
    model.to(c["device"])
    if c["compile"]:
        model.compile()  # compiles __call__ in place, so generate's own calls are compiled too
    encode, decode = load_codec(ckpt)
    ids = encode_prompt(encode, prompt, model.config.vocab_size)
    x = torch.tensor(ids, dtype=torch.long, device=c["device"])[None, ...]

    with torch.no_grad(), autocast_context(device_type, c["dtype"]):
        for _ in range(c["num_samples"]):
            y = model.generate(x, c["max_new_tokens"], temperature=c["temperature"], top_k=c["top_k"])
            print(decode(y[0].tolist()))
            print(_SEPARATOR)


if __name__ == "__main__":
    run_main(main)
