"""Sample from a trained model, or from OpenAI's GPT-2.

    python sample.py --out_dir=out-shakespeare-char
    python sample.py --init_from=gpt2-xl --start="What is the answer to life?" --num_samples=5
    python sample.py --start=FILE:prompt.txt --temperature=0          # greedy, the prompt from a file

Tokens are printed as they are generated; each sample ends with a line of dashes.
"""

import time

_STARTED = time.perf_counter()  # --verbose counts the time to the first token from here, imports included

import codecs
import os
import sys

import torch

from configurator import check_ranges, configure
from nanogpt_plus import checkpoint
from nanogpt_plus.engine import Sampler, check_sampling
from nanogpt_plus.errors import UserError, reason, report_user_errors
from nanogpt_plus.huggingface import PRETRAINED, check_init_from, load_pretrained
from nanogpt_plus.plan import chosen_dtype, default_device, default_dtype, make_plan, prepare_torch
from nanogpt_plus.tokenizer import GPT2_VOCAB, CharTokenizer, GPT2Tokenizer, dataset_meta, exported_chars_meta

report_user_errors(  # a mistake ends the run with one `error:` line, not a traceback
    memory_advice="draw the samples one by one (--batch_samples=False) or fewer at once (--num_samples), use a "
    "16-bit --dtype,"
)

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
attention = "auto"  # 'sdpa' (flash attention), 'manual' (the masked softmax), 'auto': sdpa on CUDA only
batch_samples = False  # draw all num_samples at once, as one batch: faster on a GPU, other draws than one by one
verbose = False  # say on stderr how the time went: to the first token, and the tokens per second
# -----------------------------------------------------------------------------
config, changed = configure(globals(), nullable={"top_k"})
config["dtype"] = dtype = chosen_dtype(device, dtype, changed)  # the default dtype follows the device finally chosen
# -----------------------------------------------------------------------------

# what cannot work is an error now, before the model is loaded
plan = make_plan(device, dtype, compile=compile, attention=attention, task="sample")
check_init_from(init_from, own=("resume",))
check_ranges(config, at_least_1=("num_samples",))
try:
    check_sampling(max_new_tokens, temperature, top_k)
except ValueError as e:
    raise UserError(str(e)) from None
if start.startswith("FILE:"):  # the prompt from a file
    try:
        with open(start[5:], encoding="utf-8") as f:
            start = f.read()
    except FileNotFoundError:
        raise UserError(f"prompt file {start[5:]} not found (from --start={start}): check the path") from None
    except UnicodeDecodeError:
        raise UserError(f"prompt file {start[5:]} is not UTF-8 text: give a UTF-8 text file") from None
    except OSError as e:
        raise UserError(f"cannot read prompt file {start[5:]} ({reason(e)}): give a UTF-8 text file") from None

chars_path = os.path.join(init_from, "chars.json")  # a character model's vocabulary in an exported folder
exported = init_from not in ("resume", *PRETRAINED) and os.path.isfile(chars_path)
exported_chars = exported_chars_meta(chars_path) if exported else None

prepare_torch(seed)

# the model
ckpt = None
if init_from == "resume":  # init from a model saved in a specific directory
    ckpt = checkpoint.load(os.path.join(out_dir, checkpoint.CKPT_NAME))
    model = checkpoint.model_from(ckpt, dropout=0.0, device=plan.build_device)
else:  # init from a given GPT-2 model
    model = load_pretrained(init_from)
model.eval()
model.to(device)
plan.apply(model)  # compiled in place, if asked: the Sampler's calls run compiled too

# the tokenizer: the characters of the dataset the model was trained on (its meta.pkl), else GPT-2's
# (or, for a character model exported by export_hf.py, the chars.json in its folder, read before the model)
dataset, meta_path = dataset_meta(ckpt) if ckpt else (None, None)
if meta_path:
    print(f"Loading meta from {meta_path}...")
    tokenizer = CharTokenizer.load(meta_path, model.config.vocab_size)
elif exported_chars:
    print(f"Loading characters from {chars_path}...")
    tokenizer = CharTokenizer(exported_chars, chars_path, model.config.vocab_size, "export the model again")
elif model.config.vocab_size < GPT2_VOCAB:  # a character-level model: GPT-2's ids would mean other text
    missing = f"no data/{dataset}/meta.pkl was found" if dataset else "no meta.pkl or chars.json says what they are"
    raise UserError(
        f"the model has {model.config.vocab_size} tokens, too few for GPT-2's, and {missing}: "
        "sample its checkpoint (--out_dir) from the folder you trained in"
    )
else:
    print("No meta.pkl found, assuming GPT-2 encodings...")
    tokenizer = GPT2Tokenizer()
start_ids = tokenizer.encode(start)
if not start_ids:
    raise UserError("the prompt is empty: give at least one character, e.g. --start='\\n'")
if max(start_ids) >= model.config.vocab_size:
    raise UserError(
        f"the prompt encodes to token id {max(start_ids)} but the model has {model.config.vocab_size} tokens: "
        "the tokenizer does not match the model (is the dataset's meta.pkl missing from data/?)"
    )
x = torch.tensor(start_ids, dtype=torch.long, device=device)[None, ...]


class Printer:
    """Writes row `row` of a batch of samples as its tokens come, about 20 times a second, decoded as UTF-8
    across token boundaries (a GPT-2 token can hold part of a character)."""

    first_token_at = None  # when the first new token was printed (for --verbose)

    def __init__(self, row=0):
        self.row, self.printed, self.last = row, 0, 0.0
        self.text = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, out, t, final=False):
        if final or time.time() - self.last > 0.05:
            new = out[self.row, self.printed : t].tolist()  # waits for the GPU: only this often
            sys.stdout.write(self.text.decode(tokenizer.decode_bytes(new), final=final))
            sys.stdout.flush()
            self.printed, self.last = t, time.time()
            if Printer.first_token_at is None and t > x.size(1):
                Printer.first_token_at = time.perf_counter()


# run generation: one Sampler draws every sample and reuses its buffers and recorded CUDA graphs;
# with batch_samples, all of them at once as the rows of one batch (row 0 is printed as it comes)
rows = num_samples if batch_samples else 1
with torch.no_grad(), plan.autocast():
    sampler = Sampler(
        model, rows, x.size(1), max_new_tokens, temperature, top_k, cuda_graph=plan.cuda_graph, cast_to=plan.cast_dtype
    )
    began = time.perf_counter()
    for _ in range(num_samples // rows):
        printers = [Printer(row) for row in range(rows)]
        y = sampler(x.expand(rows, -1), on_tokens=printers[0])
        for printer in printers:
            printer(y, y.size(1), final=True)  # (row 0: what is left of it)
            print()
            print("---------------")
if verbose:
    seconds = time.perf_counter() - began
    if Printer.first_token_at is not None:  # (--max_new_tokens=0 draws none)
        print(f"time to the first token: {Printer.first_token_at - _STARTED:.2f} s from the start", file=sys.stderr)
    tokens, how = num_samples * max_new_tokens, "one batch" if batch_samples else "one sample at a time"
    print(f"{tokens:,} tokens in {seconds:.2f} s ({tokens / seconds:,.0f} tokens/s, {how})", file=sys.stderr)
