# Evaluate the pretrained OpenAI gpt2-medium on OpenWebText (train and val loss), then exit
# (nanoGPT measured train 2.85, val 2.84):
# python train.py config/eval_gpt2_medium.py
# n_layer=24, n_head=16, n_embd=1024
# 350M parameters
batch_size = 8
eval_iters = 500  # use more iterations to get a good estimate
eval_only = True
wandb_log = False
init_from = "gpt2-medium"
