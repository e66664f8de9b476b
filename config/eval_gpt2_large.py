# Evaluate the pretrained OpenAI gpt2-large on OpenWebText (train and val loss), then exit
# (nanoGPT measured train 2.66, val 2.67):
# python train.py config/eval_gpt2_large.py
# n_layer=36, n_head=20, n_embd=1280
# 774M parameters
batch_size = 8
eval_iters = 500  # use more iterations to get a good estimate
eval_only = True
wandb_log = False
init_from = "gpt2-large"
