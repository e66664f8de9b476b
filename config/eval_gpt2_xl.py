# Evaluate the pretrained OpenAI gpt2-xl on OpenWebText (train and val loss), then exit
# (nanoGPT measured train 2.56, val 2.54):
# python train.py config/eval_gpt2_xl.py
# n_layer=48, n_head=25, n_embd=1600
# 1558M parameters
batch_size = 8
eval_iters = 500  # use more iterations to get a good estimate
eval_only = True
wandb_log = False
init_from = "gpt2-xl"
