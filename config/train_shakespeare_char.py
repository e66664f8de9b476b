# Train a small character-level GPT on Tiny Shakespeare (prepare it first:
# python data/shakespeare_char/prepare.py). Good for a quick look on a single GPU.

out_dir = "out-shakespeare-char"
eval_interval = 250  # it overfits fast: evaluate often
eval_iters = 200
log_interval = 10  # printing every step would be noise

# a small dataset: save only when val loss improves
always_save_checkpoint = False

wandb_log = False  # override on the command line if you like
wandb_project = "shakespeare-char"
wandb_run_name = "mini-gpt"

dataset = "shakespeare_char"
gradient_accumulation_steps = 1
batch_size = 64
block_size = 256  # context of up to 256 previous characters

# a baby GPT
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2

learning_rate = 1e-3  # a tiny network can take a large step
max_iters = 5000
lr_decay_iters = 5000  # usually equal to max_iters
min_lr = 1e-4  # learning_rate / 10, usually
beta2 = 0.99  # a bit higher than usual: few tokens per iteration

warmup_iters = 100  # hardly needed here

# on a laptop or any machine without a GPU, add for example
# device = 'cpu'  # run on the CPU only
# compile = False  # skip torch.compile
# or, from the command line, the CPU recipe of the README:
# python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1
#   --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
#   --dropout=0.0
