"""nanogpt_plus: the machinery behind the scripts at the root of the checkout (train.py, sample.py, bench.py,
eval_hellaswag.py, export_hf.py, plot.py) and data/*/prepare.py: how a run is planned (plan), the training step
(step, chunked_loss, cuda_graph, muon, parallel), data and tokens (dataloader, tokenizer, prepare_utils,
token_bins), sampling (engine), checkpoints (checkpoint, atomic), the training log (training_log), Hugging Face
and HellaSwag (huggingface, hellaswag), progress lines and one-line errors (progress, errors). The model itself
is model.py, at the root."""
