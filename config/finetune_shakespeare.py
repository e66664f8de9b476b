# Finetune GPT-2 XL on Tiny Shakespeare (GPT-2 tokens: python data/shakespeare/prepare.py).
import time

out_dir = "out-shakespeare"
eval_interval = 5
eval_iters = 40
wandb_log = False  # feel free to turn on
wandb_project = "shakespeare"
wandb_run_name = "ft-" + str(time.time())

dataset = "shakespeare"
init_from = "gpt2-xl"  # the largest GPT-2 model

# save only when val loss improves
always_save_checkpoint = False

# 1 batch size * 32 grad accum * 1024 tokens = 32,768 tokens per iteration;
# Tiny Shakespeare is ~301,966 tokens, so 1 epoch is ~9.2 iterations
batch_size = 1
gradient_accumulation_steps = 32
max_iters = 20

# finetune at a small, constant learning rate
learning_rate = 3e-5
decay_lr = False
