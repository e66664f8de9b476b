# Train a character-level baby GPT on Tiny Shakespeare (prepare it first:
# python data/shakespeare_char/prepare.py). A few minutes on one GPU.

out_dir = "out-shakespeare-char"
eval_interval = 250  # keep frequent because we'll overfit
eval_iters = 200
log_interval = 10  # don't print too too often

# we expect to overfit on this small dataset, so only save when val improves
always_save_checkpoint = False

wandb_log = False  # override via command line if you like
wandb_project = "shakespeare-char"
wandb_run_name = "mini-gpt"

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # context of up to 256 previous characters

# baby GPT model :)
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3  # with baby networks can afford to go a bit higher
max_iters = 5000
lr_decay_iters = 5000  # make equal to max_iters usually
min_lr = 1e-4  # learning_rate / 10 usually
beta2 = 0.99  # make a bit bigger because number of tokens per iter is small

warmup_iters = 100  # not super necessary potentially

# Without a CUDA GPU the recipe above takes about a day (16 s a step on 2 CPU cores), so there this
# file trains the quick recipe instead: a smaller model for fewer steps at a higher learning rate, a
# couple of minutes on 2 cores, val loss about 1.9. Flags after this file still apply on top of either recipe.
if not device.startswith("cuda"):
    print(
        f"config/train_shakespeare_char.py: no CUDA GPU (device {device}), so the quick recipe, a couple of minutes: "
        "4 layers of 128 over 64 characters, 1,000 iterations (the classic one takes about a day here)"
    )
    compile = False  # compiling costs more than it saves in a run this short
    eval_iters = 20
    block_size = 64
    batch_size = 12
    n_layer = 4
    n_head = 4
    n_embd = 128
    dropout = 0.0
    learning_rate = 4e-3  # a model this small takes it: val 1.90 after 1,000 steps (1e-3 needs 2,000)
    min_lr = 4e-4
    max_iters = 1000
    lr_decay_iters = 1000
