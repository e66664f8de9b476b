"""Sample from a trained model, or from OpenAI's GPT-2.

    python sample.py --out_dir=out-shakespeare-char
    python sample.py --init_from=gpt2-xl --start="What is the answer to life?" --num_samples=5
    python sample.py --start=FILE:prompt.txt --temperature=0          # greedy, the prompt from a file

Tokens are printed as they are generated; each sample ends with a line of dashes.
"""

import codecs
import os
import sys
import time

import torch

import checkpoint
from configurator import configure
from errors import UserError, first_line, report_user_errors
from hardware import autocast, check_device, default_device, default_dtype
from model import GPT, PRETRAINED

report_user_errors()  # a mistake ends the run with one `error:` line, not a traceback

# -----------------------------------------------------------------------------
init_from = "resume"  # 'resume' (the checkpoint in out_dir), a gpt2 variant (e.g. 'gpt2-xl') or a Hugging Face folder
out_dir = "out"  # ignored if init_from is not 'resume'
start = "\n"  # or "<|endoftext|>" or etc.; "FILE:prompt.txt" reads the prompt from a file
num_samples = 10  # number of samples to draw
max_new_tokens = 500  # number of tokens generated in each sample
temperature = 0.8  # 1.0 = no change, < 1.0 = less random, > 1.0 = more random; 0 = greedy
top_k = 200  # retain only the top_k most likely tokens, clamp others to have 0 probability; None keeps all
seed = 1337  # the same seed draws the same samples
device = default_device()  # 'cpu', 'cuda', 'cuda:0', 'cuda:1', etc., or 'mps'
dtype = default_dtype(device)  # 'float32', 'bfloat16' or 'float16'
compile = False  # use PyTorch 2.0 to compile the model to be faster (slower to start)
# -----------------------------------------------------------------------------
config, changed = configure(globals(), nullable={"top_k"})
if "dtype" not in changed:  # the default dtype follows the device finally chosen
    dtype = default_dtype(device)
# -----------------------------------------------------------------------------

# what cannot work is an error now, before the model is loaded
device_type = check_device(device, dtype)
if init_from != "resume" and init_from not in PRETRAINED and not os.path.isdir(init_from):
    raise UserError(
        f"unknown init_from {init_from!r}: use 'resume' (the checkpoint in out_dir) or {', '.join(PRETRAINED)}"
    )
if num_samples < 1:
    raise UserError(f"num_samples={num_samples} must be at least 1")
try:
    GPT.check_sampling(max_new_tokens, temperature, top_k)
except ValueError as e:
    raise UserError(str(e)) from None
if start.startswith("FILE:"):  # the prompt from a file
    try:
        with open(start[5:], encoding="utf-8") as f:
            start = f.read()
    except FileNotFoundError:
        raise UserError(f"prompt file {start[5:]} not found (from --start={start}): check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read prompt file {start[5:]} ({first_line(e)}): give a UTF-8 text file") from None

torch.manual_seed(seed)
torch.backends.cuda.matmul.allow_tf32 = True  # allow tf32 on matmul
torch.backends.cudnn.allow_tf32 = True  # allow tf32 on cudnn
ctx = autocast(device_type, dtype)

# the model
ckpt = None
if init_from == "resume":  # init from a model saved in a specific directory
    ckpt = checkpoint.load(os.path.join(out_dir, checkpoint.CKPT_NAME))
    model = checkpoint.model_from(ckpt, dropout=0.0)
else:  # init from a given GPT-2 model
    model = checkpoint.load_pretrained(init_from)
model.eval()
model.to(device)
if compile:
    model.compile()  # in place: generate's own calls run compiled too

# the tokenizer: the characters of the dataset the model was trained on (its meta.pkl), else GPT-2's
meta_path = checkpoint.dataset_meta(ckpt)[1] if ckpt else None
if meta_path:
    print(f"Loading meta from {meta_path}...")
    meta = checkpoint.load_meta(meta_path, keys=("itos", "stoi"))
    stoi, itos = meta["stoi"], dict(enumerate(meta["itos"])) if isinstance(meta["itos"], list) else meta["itos"]
    lacking = list(dict.fromkeys(ch for ch in start if ch not in stoi))
    if lacking:
        shown = ", ".join(repr(ch) for ch in lacking[:20]) + (", ..." if len(lacking) > 20 else "")
        raise UserError(f"prompt has characters the vocabulary lacks: {shown}; use characters of {meta_path}")
    start_ids = [stoi[ch] for ch in start]
    to_bytes = lambda ids: "".join(itos.get(i, "\ufffd") for i in ids).encode()  # noqa: E731
else:
    print("No meta.pkl found, assuming GPT-2 encodings...")
    import tiktoken

    try:
        enc = tiktoken.get_encoding("gpt2")
    except Exception as e:
        raise UserError(
            f"cannot load tiktoken's gpt2 encoding ({first_line(e)}): it is downloaded once, so connect to "
            "the internet or set TIKTOKEN_CACHE_DIR to a folder that holds it"
        ) from None
    start_ids = enc.encode(start, allowed_special={"<|endoftext|>"})
    # ids beyond GPT-2's 50257 are the padding of a 50304 vocabulary: they have no text
    to_bytes = lambda ids: enc.decode_bytes([i for i in ids if i < enc.n_vocab])  # noqa: E731
if not start_ids:
    raise UserError("the prompt is empty: give at least one character, e.g. --start='\\n'")
if max(start_ids) >= model.config.vocab_size:
    raise UserError(
        f"the prompt encodes to token id {max(start_ids)} but the model has {model.config.vocab_size} tokens: "
        "the tokenizer does not match the model (is the dataset's meta.pkl missing from data/?)"
    )
x = torch.tensor(start_ids, dtype=torch.long, device=device)[None, ...]


class Printer:
    """Writes a sample's text as its tokens come: what is new, about 20 times a second, decoded
    as UTF-8 across token boundaries (a GPT-2 token can hold part of a character)."""

    def __init__(self):
        self.printed, self.last = 0, 0.0
        self.text = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, out, t, final=False):
        if final or time.time() - self.last > 0.05:
            new = out[0, self.printed : t].tolist()  # waits for the GPU: only this often
            sys.stdout.write(self.text.decode(to_bytes(new), final=final))
            sys.stdout.flush()
            self.printed, self.last = t, time.time()


# run generation
with torch.no_grad(), ctx:
    for _ in range(num_samples):
        printer = Printer()
        y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k, on_tokens=printer)
        printer(y, y.size(1), final=True)
        print()
        print("---------------")
