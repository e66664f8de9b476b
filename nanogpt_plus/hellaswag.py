"""HellaSwag zero-shot, scored as the GPT-2 reproductions score it (eval_hellaswag.py, train.py).

Each item is a context and four endings, one of them right. Every ending is scored by the model's cross-entropy
on its tokens (GPT-2's tokens of " " + ending) given the context: acc counts the items whose right ending has
the lowest summed loss, acc_norm the lowest mean loss per token. An item's endings are four rows of a forward
pass, many items to a pass, padded on the right (causal attention never looks right; the padding's targets are
left out). A row longer than block_size + 1 tokens is cropped from the left: context first.
"""

import json
import os
from typing import NamedTuple

import torch
from torch.nn import functional as F

from nanogpt_plus.atomic import atomic_write
from nanogpt_plus.dataloader import ROOT, find_data_file, to_device
from nanogpt_plus.errors import UserError, first_line, reason
from nanogpt_plus.plan import scoring
from nanogpt_plus.tokenizer import GPT2_VOCAB, gpt2_encoding

FILE_NAME = "hellaswag_val.jsonl"  # the validation split, 10,042 items: the one the GPT-2 reproductions report
# rowanz/hellaswag's copy; NANOGPT_HELLASWAG_URL points elsewhere (a mirror, or a test's local server)
URL = f"https://raw.githubusercontent.com/rowanz/hellaswag/master/data/{FILE_NAME}"
BATCH_ITEMS = 32  # items per forward pass (4 rows each): small enough for gpt2-xl on any recent GPU
FORMAT_HINT = "give a file in rowanz/hellaswag's format (hellaswag_val.jsonl: one JSON object per line)"


class Item(NamedTuple):
    ctx: list  # the context's token ids
    endings: tuple  # the token ids of each of the four endings, " " + ending
    label: int  # which ending is right

    def longest(self):
        return len(self.ctx) + max(len(e) for e in self.endings)


def cache_path():
    """Where the downloaded file is kept: data/hellaswag/, found as find_data_file finds datasets (under the
    working directory when it has a data/ folder, else beside these scripts)."""
    found = find_data_file("hellaswag", FILE_NAME)
    root = "" if os.path.isdir("data") else ROOT
    return found or os.path.join(root, "data", "hellaswag", FILE_NAME)


def parse(data, name):
    """The items of a HellaSwag jsonl (bytes) as dicts of ctx, endings and label; a line that is not one is an
    error naming the file and the line."""
    items = []
    for n, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (ValueError, RecursionError):  # (a UnicodeDecodeError too; RecursionError: arrays nested too deep)
            item = None
        problem = item_problem(item)
        if problem:
            raise UserError(f"{name}, line {n}: {problem}; {FORMAT_HINT}")
        items.append({k: item[k] for k in ("ctx", "endings", "label")})
    if not items:
        raise UserError(f"{name} holds no HellaSwag items; {FORMAT_HINT}")
    return items


def item_problem(item):
    """What is wrong with one parsed line, or None."""
    if not isinstance(item, dict):
        return "not a JSON object"
    if not isinstance(item.get("ctx"), str) or not item["ctx"]:
        return "no context text 'ctx'"
    endings = item.get("endings")
    if not isinstance(endings, list) or len(endings) != 4 or not all(isinstance(e, str) for e in endings):
        return "'endings' is not a list of four texts"
    if type(item.get("label")) is not int or not 0 <= item["label"] < 4:
        return f"'label' is {item.get('label')!r}, not 0, 1, 2 or 3"
    return None


def download(url, path, say=print):
    """Fetch the file, check it holds items, and only then keep it at path (atomically)."""
    import requests  # here, not at the top: only a first run downloads

    say(f"downloading HellaSwag from {url} into {path}")
    try:
        response = requests.get(url, timeout=30)
        response.raise_for_status()
    except requests.RequestException as e:
        why = reason(e)  # (an HTTP status, or the exception's type)
        raise UserError(f"cannot download {url} ({why}): pass --hellaswag_file=PATH, a local copy of it") from None
    parse(response.content, url)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_write(path) as f:
            f.write(response.content)
    except OSError as e:
        raise UserError(f"cannot write {path} ({first_line(e)}): pass --hellaswag_file=PATH, a local copy") from None


def read(path):
    try:
        with open(path, "rb") as f:
            return parse(f.read(), path)
    except FileNotFoundError:
        raise UserError(f"hellaswag_file {path} not found: check the path, or leave it empty to download") from None
    except IsADirectoryError:
        raise UserError(f"hellaswag_file {path} is a folder: give the path of HellaSwag's .jsonl file in it") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({first_line(e)})") from None


def tokenize(examples, enc):
    """Items of token ids: the context's, and each ending's with the space that joins it on."""
    ctxs = enc.encode_ordinary_batch([ex["ctx"] for ex in examples])
    ends = enc.encode_ordinary_batch([" " + e for ex in examples for e in ex["endings"]])
    return [Item(c, tuple(ends[4 * i : 4 * i + 4]), ex["label"]) for i, (c, ex) in enumerate(zip(ctxs, examples))]


def prepare(hellaswag_file, procs, say=print, limit=0):
    """The tokenized items of hellaswag_file, or of the download (made by the first process of each machine
    while the others wait), the first `limit` of them if limit > 0."""
    path = hellaswag_file
    if not path:
        path = cache_path()
        url = os.environ.get("NANOGPT_HELLASWAG_URL") or URL
        if procs.local_rank == 0 and not os.path.isfile(path):
            download(url, path, say)
        if procs.enabled:
            torch.distributed.barrier()
    examples = read(path)
    return tokenize(examples[:limit] if limit > 0 else examples, gpt2_encoding())


def check_interval(interval, dataset, meta_path):
    """train.py's hellaswag_interval (0: never) on its dataset (meta_path: its meta.pkl, if character-level)."""
    if interval < 0:
        raise UserError(f"hellaswag_interval={interval} must not be negative (0 turns HellaSwag off)")
    if interval and meta_path:
        raise UserError(
            f"hellaswag_interval needs a model on GPT-2's tokens, but dataset {dataset!r} is character-level "
            f"({meta_path}): set --hellaswag_interval=0"
        )


def check_model(items, vocab_size, block_size, say=print):
    """A model on GPT-2's tokens, or an error; a note on the items it will see cropped."""
    if vocab_size < GPT2_VOCAB:
        raise UserError(
            f"HellaSwag needs a model on GPT-2's {GPT2_VOCAB} tokens, and this one has vocab_size={vocab_size}: "
            "use a model trained on GPT-2 BPE data, or a gpt2 variant"
        )
    cropped = count_cropped(items, block_size)
    if cropped:
        say(f"note: {cropped:,} of {len(items):,} HellaSwag items are longer than block_size={block_size} tokens: "
            "cropped from the left")  # fmt: skip


def count_cropped(items, block_size):  # an ending's last token is only a target: the rest must fit
    return sum(item.longest() - 1 > block_size for item in items)


def make_batch(items, block_size):
    """Inputs and targets (4 * len(items), T) for the four endings of each item, in order: the targets are the
    ending's tokens where it is predicted, -1 elsewhere (context, padding). T: the longest row's, <= block_size."""
    rows = []
    for item in items:
        for ending in item.endings:
            tokens = (item.ctx + ending)[-(block_size + 1) :]  # cropped from the left
            rows.append((tokens, min(len(ending), len(tokens) - 1)))
    T = max(len(tokens) for tokens, _ in rows) - 1
    x = torch.zeros((len(rows), T), dtype=torch.long)
    y = torch.full((len(rows), T), -1, dtype=torch.long)
    for r, (tokens, scored) in enumerate(rows):
        n = len(tokens) - 1
        x[r, :n] = torch.tensor(tokens[:-1])
        y[r, n - scored : n] = torch.tensor(tokens[-scored:])
    return x, y


@torch.no_grad()
def scores(model, items, device, autocast_ctx):
    """The summed and the mean loss of each ending of each item, both (len(items), 4). The model runs its own
    forward; a hook on its final LayerNorm applies the head to the positions that predict an ending token only
    (forward without targets applies it to the last position): far fewer logits. Those positions are worked
    out on the CPU, so that the GPU is never waited for."""
    x, y = make_batch(items, model.config.block_size)
    where = (y.view(-1) != -1).nonzero().squeeze(1)  # the scored positions of x.view(-1)
    x, where, targets, counts = (to_device(t, device) for t in (x, where, y.view(-1)[where], (y != -1).sum(1)))
    caught = []

    def head(module, args, out):  # within the forward: under FSDP, while the weights are gathered
        caught.append(model.lm_head(out.flatten(0, 1).index_select(0, where)))  # (scored tokens, V)

    hook = model.transformer.ln_f.register_forward_hook(head)
    try:
        with autocast_ctx:
            model(x)
    finally:
        hook.remove()
    logits = caught[0]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    losses = F.cross_entropy(logits, targets, reduction="none")
    sums = torch.zeros(y.numel(), dtype=losses.dtype, device=losses.device).index_copy_(0, where, losses)
    sums = sums.view(y.shape).sum(1)  # (a fixed order of addition: the same sums every time)
    return sums.view(-1, 4), (sums / counts).view(-1, 4)


def evaluate(model, items, device, autocast_ctx, batch_items=BATCH_ITEMS, rank=0, world_size=1, progress=None):
    """acc and acc_norm over the items, and the counts: items, correct (acc), correct_norm, cropped. Rank r of
    world_size scores items r, r + world_size, ..., the counts summed over the ranks (a collective). The model
    runs as plan.scoring says. `progress`, a progress.Progress over len(items), follows the batches."""
    mine = sorted(items[rank::world_size], key=Item.longest, reverse=True)  # similar lengths together: less padding
    block_size = model.config.block_size
    counts = torch.zeros(4, dtype=torch.long, device=device)  # items, correct, correct_norm, cropped
    with scoring(model):
        for i in range(0, len(mine), batch_items):
            batch = mine[i : i + batch_items]
            sums, means = scores(model, batch, device, autocast_ctx)
            labels = to_device(torch.tensor([item.label for item in batch]), device)
            counts[0] += len(batch)
            counts[1] += (sums.argmin(1) == labels).sum()
            counts[2] += (means.argmin(1) == labels).sum()
            counts[3] += count_cropped(batch, block_size)
            if progress is not None:
                progress.update(min(len(items), (i + len(batch)) * world_size))
    if world_size > 1:
        torch.distributed.all_reduce(counts)
    n, correct, correct_norm, cropped = counts.tolist()
    if progress is not None:
        progress.close(n)
    return dict(items=n, acc=correct / n, acc_norm=correct_norm / n, correct=correct, correct_norm=correct_norm,
                cropped=cropped)  # fmt: skip
