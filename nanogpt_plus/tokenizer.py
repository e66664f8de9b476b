"""The two tokenizers of nanoGPT's datasets: a character-level dataset's vocabulary, its meta.pkl (nanoGPT's plain
dict {'vocab_size', 'itos', 'stoi'}, written alike by every script and read without running code), and GPT-2's
BPE through tiktoken (downloaded once, or found in TIKTOKEN_CACHE_DIR): encoding, decoding and their checks.
"""

import io
import json
import pickle

from nanogpt_plus.dataloader import find_data_file
from nanogpt_plus.errors import UserError, first_line, reason


def char_meta(chars):
    """The meta.pkl of a vocabulary of `chars` (in id order), the dict classic nanoGPT writes."""
    return {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": {ch: i for i, ch in enumerate(chars)}}


def dataset_meta(ckpt):
    """The dataset a checkpoint was trained on and its meta.pkl, found as train.py finds it (None if absent)."""
    dataset = ckpt["config"].get("dataset") if isinstance(ckpt.get("config"), dict) else None
    return dataset, find_data_file(str(dataset), "meta.pkl") if dataset else None


def exported_chars_meta(path):
    """The meta dict of a Hugging Face folder's chars.json (export_hf.py writes a character model's vocabulary
    there: a JSON list of its characters by id)."""
    try:
        with open(path, encoding="utf-8") as f:
            chars = json.load(f)
    except OSError as e:
        raise UserError(f"cannot read {path} ({reason(e)})") from None
    except ValueError:
        chars = None
    if not isinstance(chars, list) or not all(type(ch) is str and len(ch) == 1 for ch in chars):
        raise UserError(f"{path} is not a list of characters as export_hf.py writes it: export the model again")
    if len(set(chars)) < len(chars):
        raise UserError(f"{path} lists a character twice, which export_hf.py never writes: export the model again")
    return char_meta(chars)


class PlainUnpickler(pickle.Unpickler):
    """Builds only what pickle makes without importing anything: dicts, lists, str, int, ..."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")


def load_meta(path, keys=("vocab_size",)):
    """A character-level dataset's meta.pkl, read without running code; it must hold vocab_size and `keys`."""
    try:
        with open(path, "rb") as f:
            meta = PlainUnpickler(io.BytesIO(f.read())).load()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) and "is not allowed" in str(e):
            raise UserError(f"refusing to load {path}: {e}; a meta.pkl holds only plain dicts, str and int") from None
        raise UserError(f"{path} is corrupt ({first_line(e)}): rerun the dataset's prepare.py") from None
    if not isinstance(meta, dict) or not {"vocab_size", *keys} <= set(meta):
        raise UserError(f"{path} is not a nanoGPT meta.pkl: it needs {', '.join(keys)}")
    if type(meta["vocab_size"]) is not int or meta["vocab_size"] < 1:
        raise UserError(f"{path} has an invalid vocab_size {meta['vocab_size']!r}: rerun the dataset's prepare.py")
    return meta


PREPARED_AGAIN = "the dataset was prepared again, from other text; prepare it from the model's own text"


def char_vocabulary(meta, path, vocab_size, mismatch=PREPARED_AGAIN):
    """The characters of a meta.pkl by id ({id: str}; nanoGPT's itos is a dict, a list also does), checked to be
    the vocabulary of a model of vocab_size tokens: a dataset prepared again from other text would decode the
    model's ids as other characters (`mismatch` says why they differ and what to do)."""
    itos = dict(enumerate(meta["itos"])) if isinstance(meta["itos"], list) else meta["itos"]
    stoi = meta.get("stoi", {})
    plain = isinstance(itos, dict) and all(type(i) is int and type(ch) is str for i, ch in itos.items())
    if not plain or not isinstance(stoi, dict) or not all(type(ch) is str and type(i) is int for ch, i in stoi.items()):
        raise UserError(f"{path} is not a character vocabulary (its itos and stoi map ids and str): rerun prepare.py")
    if any(itos.get(i) != ch for ch, i in stoi.items()):  # else encoding gives ids the model lacks, or the wrong ones
        raise UserError(f"{path} is not a character vocabulary (its stoi does not invert its itos): rerun prepare.py")
    if sorted(itos) != list(range(vocab_size)) or meta["vocab_size"] != vocab_size:
        raise UserError(f"{path} has {len(itos)} characters but the model has {vocab_size} tokens: {mismatch}")
    return itos


def check_resumed_vocabulary(dataset, meta_path, meta_vocab_size, vocab_size):
    """A resumed model of vocab_size tokens and its dataset as it is now (meta_path: its meta.pkl, if any) must
    have one vocabulary, or ids that mean other text would be trained on, and the checkpoint overwritten."""
    if vocab_size is None:  # (model_from says what such a checkpoint lacks)
        return
    if meta_path and meta_vocab_size != vocab_size:
        have = f"{meta_vocab_size} characters ({meta_path})"
    elif not meta_path and vocab_size < GPT2_VOCAB:
        have = "GPT-2's tokens (no meta.pkl)"
    else:
        return
    raise UserError(
        f"--dataset={dataset} now has {have} but the checkpoint's model has {vocab_size} tokens: it is not the "
        "data the model was trained on (prepared again?); prepare it as before, or start anew with --out_dir=NEW_DIR"
    )


class CharTokenizer:
    """A character vocabulary (a meta dict from `path`), checked to be that of a model of vocab_size tokens."""

    def __init__(self, meta, path, vocab_size, mismatch=PREPARED_AGAIN):
        self.path, self.stoi, self.itos = path, meta["stoi"], char_vocabulary(meta, path, vocab_size, mismatch)

    @classmethod
    def load(cls, path, vocab_size):
        return cls(load_meta(path, keys=("itos", "stoi")), path, vocab_size)

    def encode(self, text):
        lacking = list(dict.fromkeys(ch for ch in text if ch not in self.stoi))
        if lacking:
            shown = ", ".join(repr(ch) for ch in lacking[:20]) + (", ..." if len(lacking) > 20 else "")
            raise UserError(f"prompt has characters the vocabulary lacks: {shown}; use characters of {self.path}")
        return [self.stoi[ch] for ch in text]

    def decode(self, ids):
        return "".join(self.itos.get(int(i), "\ufffd") for i in ids)

    def decode_bytes(self, ids):
        return self.decode(ids).encode()


GPT2_VOCAB, EOT = 50257, 50256  # GPT-2's tokens, and the id of <|endoftext|>, its only special one

# the files behind tiktoken's gpt2 encoding (tiktoken_ext.openai_public.gpt2): Hugging Face's names,
# then the URL and sha256 tiktoken fetches and checks them by
GPT2_BPE = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"
GPT2_FILES = {
    "vocab.json": (GPT2_BPE + "encoder.json", "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "merges.txt": (GPT2_BPE + "vocab.bpe", "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}


def gpt2_encoding():
    """tiktoken's GPT-2 encoding (downloaded once, or found in TIKTOKEN_CACHE_DIR)."""
    import tiktoken

    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # requests' errors offline, a hash mismatch, an unwritable cache
        raise UserError(
            f"cannot load tiktoken's gpt2 encoding ({reason(e)}): it is downloaded once, so connect to "
            "the internet or set TIKTOKEN_CACHE_DIR to a folder that holds it"
        ) from None


def gpt2_tokenizer_files():
    """OpenAI's encoder.json and vocab.bpe as vocab.json and merges.txt, from tiktoken's cache."""
    from tiktoken.load import read_file_cached

    try:
        return {name: read_file_cached(url, sha256) for name, (url, sha256) in GPT2_FILES.items()}
    except Exception as e:
        raise UserError(
            f"cannot get GPT-2's tokenizer files ({reason(e)}): tiktoken downloads them once, so connect to "
            "the internet or set TIKTOKEN_CACHE_DIR to a folder that holds them"
        ) from None


class GPT2Tokenizer:
    """GPT-2's BPE for prompts and samples: "<|endoftext|>" in a prompt is the special token, and the ids past
    50257 (the padding of a 50304 vocabulary) have no text."""

    def __init__(self):
        self.enc = gpt2_encoding()

    def encode(self, text):
        return self.enc.encode(text, allowed_special={"<|endoftext|>"})

    def decode_bytes(self, ids):
        return self.enc.decode_bytes([i for i in ids if i < self.enc.n_vocab])
