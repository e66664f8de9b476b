# Evaluate the pretrained OpenAI gpt2 on OpenWebText (train and val loss), then exit
# (nanoGPT measured train 3.11, val 3.12):
# python train.py config/eval_gpt2.py
# n_layer=12, n_head=12, n_embd=768
# 124M parameters
batch_size = 8
eval_iters = 500  # use more iterations to get a good estimate
eval_only = True
wandb_log = False
init_from = "gpt2"
