"""HellaSwag zero-shot, as the GPT-2 reproductions report it: which of four endings the model finds likeliest.

    python eval_hellaswag.py --out_dir=out-gpt2                        # the checkpoint in out_dir
    python eval_hellaswag.py --init_from=gpt2                          # OpenAI's GPT-2, or a Hugging Face folder
    torchrun --standalone --nproc_per_node=8 eval_hellaswag.py --init_from=gpt2-xl
    python eval_hellaswag.py --hellaswag_file=hellaswag_val.jsonl --limit=500   # a local copy; a quick look

acc is the share of items whose right ending has the lowest summed loss given the context, acc_norm the lowest
mean loss per token (nanogpt_plus/hellaswag.py). The validation set (10,042 items) is downloaded once into
data/hellaswag/. Rank 0 writes the figures into out_dir: hellaswag.json (hellaswag_<name>.json for GPT-2).
"""

import json
import os
import time

from configurator import check_ranges, configure
from nanogpt_plus import checkpoint, hellaswag, parallel
from nanogpt_plus.atomic import atomic_write
from nanogpt_plus.errors import UserError, first_line, report_user_errors
from nanogpt_plus.huggingface import check_init_from, load_pretrained
from nanogpt_plus.plan import check_device, chosen_dtype, default_device, default_dtype, make_plan, prepare_torch
from nanogpt_plus.progress import Progress
from nanogpt_plus.tokenizer import dataset_meta

report_user_errors(memory_advice="lower --batch_size (items per forward pass)")  # one `error:` line, no traceback

# -----------------------------------------------------------------------------
init_from = "resume"  # 'resume' (the checkpoint in out_dir), a gpt2 variant (e.g. 'gpt2-xl') or a Hugging Face folder
out_dir = "out"  # the checkpoint's folder; the figures go there: hellaswag.json (hellaswag_<name>.json for gpt2*)
hellaswag_file = ""  # a local copy of hellaswag_val.jsonl; "" = data/hellaswag/hellaswag_val.jsonl, fetched once
limit = 0  # score only the first N items, for a quick look; 0 scores all of them
batch_size = 32  # items per forward pass, four rows each: lower it if the GPU runs out of memory
device = default_device()  # 'cpu', 'cuda', 'cuda:0', 'cuda:1', etc., or 'mps'
dtype = default_dtype(device)  # 'float32', 'bfloat16' or 'float16'
backend = "nccl"  # torchrun's process group on GPUs: 'nccl', 'gloo', etc. (gloo on CPUs anyway)
attention = "auto"  # 'sdpa' (flash attention), 'manual' (the masked softmax), 'auto': sdpa on CUDA only
# -----------------------------------------------------------------------------
config, changed = configure(globals())
config["dtype"] = dtype = chosen_dtype(device, dtype, changed)  # the default dtype follows the device finally chosen
# -----------------------------------------------------------------------------

# what cannot work is an error now, before anything is loaded
check_device(device, dtype)
check_init_from(init_from, own=("resume",))
check_ranges(config, at_least_1=("batch_size",), not_negative=("limit",))

procs, device = parallel.init(backend, device)
say = print if procs.master else lambda *args, **kwargs: None
plan = make_plan(device, dtype, attention=attention, task="eval")
say(f"plan: {plan.describe()}")
prepare_torch(seed=1337)

# the items, then the model (a checkpoint is read first only to check that it is on GPT-2's tokens)
if init_from == "resume":
    name = os.path.join(out_dir, checkpoint.CKPT_NAME)
    ckpt = checkpoint.load(name)
    meta_path = dataset_meta(ckpt)[1]
    if meta_path:
        raise UserError(
            f"{name} is a character-level model (its dataset has {meta_path}): HellaSwag needs a model on "
            "GPT-2's tokens, such as one trained on data/openwebtext, or --init_from=gpt2"
        )
    json_path = os.path.join(out_dir, "hellaswag.json")
else:
    name = init_from
    json_path = os.path.join(out_dir, f"hellaswag_{os.path.basename(os.path.normpath(init_from))}.json")
items = hellaswag.prepare(hellaswag_file, procs, say, limit)
model = checkpoint.model_from(ckpt, dropout=0.0) if init_from == "resume" else load_pretrained(init_from)
ckpt = None  # free up memory
hellaswag.check_model(items, model.config.vocab_size, model.config.block_size, say)
model.eval()
model.to(device)
plan.apply(model)

# score, then report
say(f"scoring {len(items):,} HellaSwag items with {name} on {procs.world_size} process(es), {dtype}")
start = time.time()
bar = Progress("hellaswag", len(items), unit="items") if procs.master else None
result = hellaswag.evaluate(model, items, device, plan.autocast(), batch_size, procs.rank, procs.world_size, bar)
seconds = time.time() - start
say(
    f"hellaswag: {result['items']:,} items, acc {result['acc']:.4f} ({result['correct']:,} right), "
    f"acc_norm {result['acc_norm']:.4f} ({result['correct_norm']:,} right), in {seconds:.1f}s "
    f"({result['items'] / seconds:,.1f} items/s)"
)
if procs.master:
    record = dict(model=name, **result, block_size=model.config.block_size, dtype=dtype, seconds=round(seconds, 2))
    record["hellaswag_file"] = hellaswag_file or hellaswag.cache_path()
    try:
        os.makedirs(out_dir, exist_ok=True)
        with atomic_write(json_path, "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
    except OSError as e:
        raise UserError(
            f"cannot write {json_path} ({first_line(e)}): the figures are above; choose another --out_dir"
        ) from None
    say(f"wrote {json_path}")
model = None
parallel.close()
