"""export_hf.py end to end: tiny models trained by train.py (or built here), exported, then loaded by
Hugging Face's own GPT-2 (transformers), whose logits must be ours; back through from_pretrained,
train.py and sample.py; its tokenizer against tiktoken's; and the one-line refusals."""

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_sample import run_sample, samples_of
from test_train import TINY, make_dataset, run_train
from user_errors import Payload, assert_one_line, run_here, run_in_process, snapshot

from model import ARCH_KEYS, GPT, GPTConfig
from nanogpt_plus import checkpoint
from nanogpt_plus.errors import UserError
from nanogpt_plus.huggingface import from_pretrained

REPO = Path(__file__).resolve().parent.parent
EXPORT = REPO / "export_hf.py"
ONE_BATCH = ["--gradient_accumulation_steps=1"]  # one micro-batch per step: GPT-2's vocabulary makes each one slow
TEXT = "First Citizen:\n\nBefore we  proceed any further,   hear me speak.\tnaïve café — 日本語 's 've 1234567\n"


def run_export(cwd: Path, *args, env=None, new_process=False) -> subprocess.CompletedProcess:
    """`python export_hf.py *args` in cwd, offline: in this process (run_here) unless new_process, which a changed
    PYTHONPATH needs."""
    env = {"HF_HUB_OFFLINE": "1", **(env or {})}
    if not new_process:
        return run_here(EXPORT, cwd, args, env=env)
    cmd = [sys.executable, str(EXPORT), *args]
    return subprocess.run(cmd, cwd=cwd, env=dict(os.environ, **env), capture_output=True, text=True, timeout=120)


def export(cwd: Path, *args) -> Path:
    proc = run_export(cwd, "--out_dir=out", "--hf_dir=hf", *args)
    assert proc.returncode == 0, proc.stderr
    return cwd / "hf"


def save_checkpoint(folder: Path, model, dataset="tiny", model_args=None, state=None):
    """A checkpoint dict as train.py writes it, in folder/out/ckpt.pt."""
    args = {k: getattr(model.config, k) for k in ARCH_KEYS} | {"dropout": 0.0}
    ckpt = dict(model=model.state_dict() if state is None else state, model_args=model_args or args, iter_num=10)
    ckpt |= dict(best_val_loss=2.0, config={"dataset": dataset, "out_dir": "out"})
    (folder / "out").mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, folder / "out" / "ckpt.pt")


def our_model(folder: Path):
    return checkpoint.model_from(checkpoint.load(str(folder / "out" / "ckpt.pt"))).eval()


def assert_one_line_error(proc, message):
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr


def leftovers(folder: Path):
    """Temp folders a failed or finished export left behind."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".hf-")]


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory):
    """A model with biases on GPT-2's tokens (a dataset without meta.pkl: vocab_size 50304), exported."""
    root = tmp_path_factory.mktemp("bpe")
    make_dataset(root, meta=False)
    run_train(root, *TINY, *ONE_BATCH, "--out_dir=out", "--max_iters=30", "--eval_interval=30", "--bias=True")
    return root, export(root)


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    """A character-level model without biases (its dataset's meta.pkl: 32 characters), exported."""
    root = tmp_path_factory.mktemp("char")
    make_dataset(root)
    run_train(root, *TINY, *ONE_BATCH, "--out_dir=out", "--max_iters=30", "--eval_interval=30", "--bias=False")
    proc = run_export(root, "--out_dir=out", "--hf_dir=hf")
    assert proc.returncode == 0, proc.stderr
    return root, root / "hf", proc.stdout


@pytest.fixture(scope="module")
def cropped_run(tmp_path_factory):
    """A model built for 32 positions, cropped to 12 as train.py does for a smaller block_size."""
    root = tmp_path_factory.mktemp("cropped")
    torch.manual_seed(3)
    model = GPT(GPTConfig(block_size=32, vocab_size=50304, n_layer=2, n_head=4, n_embd=32, bias=False))
    with torch.no_grad():  # far from the initialisation: logits of some size, GELU inputs beyond +-1
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    model.crop_block_size(12)
    save_checkpoint(root, model, dataset="openwebtext")
    return root, export(root)


# ---------------------------------------------------------------------------- Hugging Face's GPT-2 computes our logits


@pytest.mark.slow
@pytest.mark.parametrize("run", ["bpe_run", "char_run", "cropped_run"])
def test_hugging_face_logits_equal_ours(run, request):
    transformers = pytest.importorskip("transformers")
    root, folder = request.getfixturevalue(run)[:2]
    model = our_model(root)
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    config = json.loads((folder / "config.json").read_text())
    assert config["n_positions"] == hf.config.n_positions == model.config.block_size
    assert config["vocab_size"] == model.config.vocab_size and hf.dtype == torch.float32
    for idx in random_batches(model):
        with torch.no_grad():
            ours, _ = model(idx, idx)  # (B, T, V): the CPU makes the full logits
            assert (ours - hf(idx).logits).abs().max().item() < 1e-4


@pytest.mark.slow
def test_exported_gelu_is_the_exact_one(cropped_run):
    """GPT-2's own tanh GELU on the same weights is another model, which the tolerance tells apart."""
    transformers = pytest.importorskip("transformers")
    root, folder = cropped_run
    model = our_model(root)
    assert json.loads((folder / "config.json").read_text())["activation_function"] == "gelu"
    tanh = transformers.GPT2LMHeadModel.from_pretrained(folder, activation_function="gelu_new").eval()
    for idx in random_batches(model):
        with torch.no_grad():
            assert (model(idx, idx)[0] - tanh(idx).logits).abs().max().item() > 1e-4


def random_batches(model, n=3):
    generator = torch.Generator().manual_seed(0)
    shape = (4, model.config.block_size)
    return [torch.randint(0, model.config.vocab_size, shape, generator=generator) for _ in range(n)]


@pytest.mark.slow
def test_weights_come_back_through_from_pretrained(bpe_run, char_run, cropped_run):
    for root, folder in (bpe_run, char_run[:2], cropped_run):
        model = our_model(root)
        back = from_pretrained(str(folder))
        assert back.config.block_size == model.config.block_size and back.config.vocab_size == model.config.vocab_size
        ours = model.state_dict()
        biases = 0
        for name, value in back.state_dict().items():
            if name in ours:
                assert torch.equal(value, ours[name]), name
            else:  # a model without biases: Hugging Face's GPT-2 has them, all zero
                assert not model.config.bias and name.endswith(".bias") and not value.any(), name
                biases += 1
        assert biases == (0 if model.config.bias else 1 + 6 * model.config.n_layer)


@pytest.mark.slow
def test_sample_from_the_folder_samples_as_the_checkpoint(bpe_run):
    root, folder = bpe_run
    args = ["--num_samples=2", "--max_new_tokens=12", "--start=Hi", "--temperature=1.0"]
    from_checkpoint = run_sample(root, "--out_dir=out", *args)
    from_folder = run_sample(root, f"--init_from={folder}", *args)
    assert from_checkpoint.returncode == 0 and from_folder.returncode == 0, from_folder.stderr
    assert samples_of(from_folder.stdout) == samples_of(from_checkpoint.stdout)


@pytest.mark.slow
def test_sample_from_a_character_folder_samples_as_the_checkpoint(char_run):
    """The folder has no meta.pkl: sample.py takes the characters from its chars.json. (Greedy: loading a
    folder through transformers draws random numbers that a checkpoint's loading does not.)"""
    root, folder, _ = char_run
    chars_json = folder / "chars.json"
    start = "".join(json.loads(chars_json.read_text())[-3:])
    args = ["--num_samples=1", "--max_new_tokens=24", f"--start={start}", "--top_k=1"]
    from_checkpoint = run_sample(root, "--out_dir=out", *args)
    from_folder = run_sample(root, f"--init_from={folder}", *args)
    assert from_checkpoint.returncode == 0 and from_folder.returncode == 0, from_folder.stderr
    assert f"Loading characters from {chars_json}" in from_folder.stdout
    assert samples_of(from_folder.stdout) == samples_of(from_checkpoint.stdout)
    exported = chars_json.read_text()
    try:
        chars_json.write_text('{"a": 0}')
        assert_one_line_error(run_sample(root, f"--init_from={folder}", *args), "is not a list of characters")
        chars_json.write_text('["a", "bc"]')
        assert_one_line_error(run_sample(root, f"--init_from={folder}", *args), "is not a list of characters")
        chars_json.write_text(json.dumps(json.loads(exported) + json.loads(exported)[:1]))
        assert_one_line_error(run_sample(root, f"--init_from={folder}", *args), "lists a character twice")
        chars_json.write_text(json.dumps(json.loads(exported)[:-1]))
        proc = run_sample(root, f"--init_from={folder}", *args)  # (after transformers' progress bar)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last == f"error: {chars_json} has 31 characters but the model has 32 tokens: export the model again"
    finally:
        chars_json.write_text(exported)


def hf_folder_with(char_run, tmp_path, config=None, weights=None):
    """A copy of the exported character model's folder, its config.json edited (config: keys to set) or its
    weights as a pytorch_model.bin of `weights` instead of model.safetensors."""
    folder = tmp_path / "hf"
    shutil.copytree(char_run[1], folder)
    if config:
        (folder / "config.json").write_text(json.dumps(json.loads((folder / "config.json").read_text()) | config))
    if weights is not None:
        (folder / "model.safetensors").unlink()
        torch.save(weights, folder / "pytorch_model.bin")
    return folder


@pytest.mark.slow
def test_a_crafted_pytorch_model_bin_is_refused_in_one_line(char_run, tmp_path):
    pytest.importorskip("transformers")
    marker = tmp_path / "payload_ran"
    folder = hf_folder_with(char_run, tmp_path, weights={"x": Payload(marker)})
    proc = run_sample(char_run[0], f"--init_from={folder}", "--max_new_tokens=2")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: refusing to load {folder}: its weights file")
    assert not marker.exists()


@pytest.mark.parametrize("error", [MemoryError(), KeyError("mismatched_keys")])
def test_an_error_not_of_transformers_loading_a_folder_stays_itself(char_run, monkeypatch, error):
    """Out of memory (the script's own line says so) or a bug of ours: not 'export the model again'."""
    from nanogpt_plus import huggingface

    def failing(name, override_args):
        raise error

    monkeypatch.setattr(huggingface, "from_pretrained", failing)
    with pytest.raises(type(error)):
        huggingface.load_pretrained(str(char_run[1]))


@pytest.mark.slow
@pytest.mark.parametrize("config", [{"activation_function": "bogus"}, {"n_embd": "x"}])
def test_a_config_json_transformers_cannot_use_is_one_line(char_run, tmp_path, config):
    pytest.importorskip("transformers")
    folder = hf_folder_with(char_run, tmp_path, config=config)
    proc = run_sample(char_run[0], f"--init_from={folder}", "--max_new_tokens=2")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot load {folder} (") and last.endswith("): export the model again"), last


@pytest.mark.slow
def test_train_evaluates_the_folder_as_the_checkpoint(char_run, tmp_path):
    """train.py --eval_only at iteration 0 draws the same eval batches from the checkpoint (resumed) and
    from the exported folder (init_from): the same val loss, biases of zero included."""
    root, folder, _ = char_run
    ckpt = torch.load(root / "out" / "ckpt.pt", weights_only=True)
    ckpt["iter_num"] = 0
    (tmp_path / "resumed").mkdir()
    torch.save(ckpt, tmp_path / "resumed" / "ckpt.pt")
    common = [a for a in TINY if not a.startswith("--bias")] + ["--eval_only=True"]
    resumed = run_train(root, *common, f"--out_dir={tmp_path / 'resumed'}", "--init_from=resume")
    exported = run_train(root, *common, f"--out_dir={tmp_path / 'ev'}", f"--init_from={folder}")
    pattern = r"step 0: train loss ([\d.]+), val loss ([\d.]+)"
    assert re.search(pattern, resumed.stdout).groups() == re.search(pattern, exported.stdout).groups()


# ---------------------------------------------------------------------------- tokenizers

PIPELINE = """
import json, sys, transformers
folder, text, prompt = sys.argv[1:]
tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
pipe = transformers.pipeline("text-generation", model=folder, device="cpu")
out = pipe(prompt, max_new_tokens=8, do_sample=False, return_full_text=False)
ids = tokenizer.encode(text)
print(json.dumps({"ids": ids, "text": tokenizer.decode(ids), "generated": out[0]["generated_text"]}))
"""


@pytest.mark.slow
def test_gpt2_folder_works_in_a_pipeline_offline(bpe_run, tmp_path):
    """With no network and an empty Hugging Face cache: AutoTokenizer encodes as tiktoken's gpt2, and
    pipeline('text-generation') continues a prompt greedily as our own generate does."""
    tiktoken = pytest.importorskip("tiktoken")
    root, folder = bpe_run
    prompt = "Hello, world"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "empty-hf"), TRANSFORMERS_VERBOSITY="error")
    cmd = [sys.executable, "-c", PIPELINE, str(folder), TEXT, prompt]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    enc = tiktoken.get_encoding("gpt2")
    assert result["ids"] == enc.encode(TEXT) and result["text"] == TEXT
    model = our_model(root)
    prompt_ids = torch.tensor([enc.encode(prompt)])
    new = model.generate(prompt_ids, 8, temperature=0)[0, prompt_ids.size(1) :].tolist()
    assert result["generated"] == enc.decode([i for i in new if i < enc.n_vocab])
    assert (folder / "vocab.json").read_bytes() == (REPO.parent / "shared/data/gpt2_bpe/encoder.json").read_bytes()


@pytest.mark.slow
def test_char_model_exports_weights_and_its_characters(char_run):
    root, folder, stdout = char_run
    with open(root / "data" / "tiny" / "meta.pkl", "rb") as f:
        itos = pickle.load(f)["itos"]
    chars = json.loads((folder / "chars.json").read_text())
    assert chars == [itos[i] for i in range(len(itos))]
    assert sorted(os.listdir(folder)) == ["chars.json", "config.json", "model.safetensors"]  # no GPT-2 tokenizer
    config = json.loads((folder / "config.json").read_text())
    assert config["vocab_size"] == 32
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.GPT2Config.from_pretrained(folder)  # no GPT-2 end-of-text id past the 32 characters
    assert hf_config.bos_token_id is None and hf_config.eos_token_id is None
    notes = [line for line in stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "tokenizer is not" in notes[0] and "chars.json" in notes[0]


# ---------------------------------------------------------------------------- refusals, in one line


def small_model(bias=True):
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=8, vocab_size=40, n_layer=1, n_head=2, n_embd=16, bias=bias))


def write_meta(folder: Path, dataset="toy"):
    (folder / "data" / dataset).mkdir(parents=True)
    itos = [chr(48 + i) for i in range(40)]
    with open(folder / "data" / dataset / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 40, "itos": itos, "stoi": {c: i for i, c in enumerate(itos)}}, f)


def contradicting(model):
    """Weights of one shape, model_args of another."""
    args = {k: getattr(model.config, k) for k in ARCH_KEYS} | {"n_embd": 32}
    return dict(model_args=args)


def untied(model):
    state = dict(model.state_dict())
    state["lm_head.weight"] = state["lm_head.weight"] + 1.0
    return dict(state=state)


def forked(model):
    return dict(model_args={k: getattr(model.config, k) for k in ARCH_KEYS} | {"rotary": True})


def missing_weight(model):
    return dict(state={k: v for k, v in model.state_dict().items() if k != "transformer.h.0.mlp.c_fc.weight"})


@pytest.mark.parametrize(
    "change,message",
    [
        (contradicting, "checkpoint weights do not fit its model_args: size mismatch for transformer.wte.weight"),
        (missing_weight, "checkpoint weights do not fit its model_args: missing ['transformer.h.0.mlp.c_fc.weight']"),
        (untied, "checkpoint has an output head apart from its token embedding"),
        (forked, "model_args hold ['rotary'], unknown to nanoGPT and to Hugging Face's GPT-2"),
    ],
)
def test_non_classic_checkpoint_is_refused_in_one_line(tmp_path, change, message):
    write_meta(tmp_path)
    model = small_model()
    save_checkpoint(tmp_path, model, dataset="toy", **change(model))
    assert_one_line_error(run_export(tmp_path, "--out_dir=out", "--hf_dir=hf"), message)
    assert not (tmp_path / "hf").exists() and leftovers(tmp_path) == []


def test_char_model_without_its_meta_pkl_is_refused(tmp_path):
    save_checkpoint(tmp_path, small_model(), dataset="toy")  # no data/toy/meta.pkl here
    proc = run_export(tmp_path, "--out_dir=out", "--hf_dir=hf")
    assert_one_line_error(proc, "the model has 40 tokens, too few for GPT-2's, and no data/toy/meta.pkl was found")


def test_help_lists_the_keys():
    proc = subprocess.run([sys.executable, str(EXPORT), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for key in ("--out_dir='out'", "--hf_dir=''", "--overwrite=False"):
        assert key in proc.stdout


@pytest.mark.slow
def test_existing_folder_is_kept_unless_overwrite(tmp_path):
    write_meta(tmp_path)
    save_checkpoint(tmp_path, small_model(), dataset="toy")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    for overwrite in ("False", "True"):  # a folder of the user's, even when asked to
        proc = run_export(tmp_path, "--out_dir=out", "--hf_dir=hf", f"--overwrite={overwrite}")
        assert_one_line_error(proc, "hf holds 'notes.txt' and is no earlier export: choose another --hf_dir")
    assert os.listdir(tmp_path / "hf") == ["notes.txt"] and (tmp_path / "hf" / "notes.txt").read_text() == "mine"
    # an earlier export, asked to, it replaces whole
    (tmp_path / "hf" / "notes.txt").unlink()
    export(tmp_path)
    proc = run_export(tmp_path, "--out_dir=out", "--hf_dir=hf")
    assert_one_line_error(proc, "hf holds an export: choose another --hf_dir, or replace it with --overwrite=True")
    proc = run_export(tmp_path, "--out_dir=out", "--hf_dir=hf", "--overwrite=True")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "hf")) == ["chars.json", "config.json", "model.safetensors"]
    assert leftovers(tmp_path) == []
    # never over a training checkpoint, even when asked to
    before = (tmp_path / "out" / "ckpt.pt").read_bytes()
    proc = run_export(tmp_path, "--out_dir=out", "--hf_dir=out", "--overwrite=True")
    assert_one_line_error(proc, "hf_dir out is out_dir out, the run being exported: choose another --hf_dir")
    assert os.listdir(tmp_path / "out") == ["ckpt.pt"] and (tmp_path / "out" / "ckpt.pt").read_bytes() == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "ckpt.pt").write_bytes(before)
    proc = run_export(tmp_path, "--out_dir=out", "--hf_dir=other", "--overwrite=True")
    assert_one_line_error(proc, "hf_dir other holds a training checkpoint (ckpt.pt): choose another hf_dir")


def test_without_safetensors_one_line_says_how_to_install_it(tmp_path):
    write_meta(tmp_path)
    save_checkpoint(tmp_path, small_model(), dataset="toy")
    shadow = tmp_path / "shadow" / "safetensors"  # a safetensors package that cannot be imported
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('no safetensors here')\n")
    env = {"PYTHONPATH": str(shadow.parent)}  # (read as a process starts)
    proc = run_export(tmp_path, "--out_dir=out", "--hf_dir=hf", env=env, new_process=True)
    assert_one_line_error(proc, "pip install safetensors")
    assert not (tmp_path / "hf").exists() and leftovers(tmp_path) == []


def test_default_folder_is_beside_out_dir(tmp_path):
    write_meta(tmp_path)
    save_checkpoint(tmp_path, small_model(bias=False), dataset="toy")
    proc = run_export(tmp_path, "--out_dir=out/")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out-hf" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------- overwrite, odd folders, errors


@pytest.mark.parametrize(
    "hf_dir, phrase",
    [
        ("runs", "hf_dir runs holds out_dir runs/a, the run being exported"),
        ("runs/a", "hf_dir runs/a is out_dir runs/a"),
        (".", "hf_dir . holds out_dir runs/a"),
        ("runs/b", "runs/b holds 'notes.txt' and is no earlier export"),
        ("data", "data holds 'toy' and is no earlier export"),
    ],
)
def test_export_overwrite_replaces_only_an_earlier_export(run_dirs, monkeypatch, hf_dir, phrase):
    before = snapshot(run_dirs)
    args = ["--out_dir=runs/a", f"--hf_dir={hf_dir}", "--overwrite=True"]
    assert_one_line(run_in_process(REPO / "export_hf.py", run_dirs, args, monkeypatch), phrase)
    assert snapshot(run_dirs) == before


def test_export_overwrite_replaces_an_earlier_export(run_dirs, monkeypatch, capsys):
    def export(*args):
        return run_in_process(REPO / "export_hf.py", run_dirs, ["--out_dir=runs/a", *args], monkeypatch)

    assert export("--hf_dir=hf") is None
    (run_dirs / "hf" / "config.json").write_text("{}")
    assert_one_line(export("--hf_dir=hf"), "hf holds an export: choose another --hf_dir, or replace it with")
    assert export("--hf_dir=hf", "--overwrite=True") is None
    assert sorted(os.listdir(run_dirs / "hf")) == ["chars.json", "config.json", "model.safetensors"]
    assert (run_dirs / "hf" / "config.json").read_text() != "{}"
    (run_dirs / "hf" / "README.md").write_text("my notes on this model")  # no longer an export alone
    assert_one_line(export("--hf_dir=hf", "--overwrite=True"), "hf holds 'README.md' and is no earlier export")
    os.symlink("hf", run_dirs / "link")
    assert_one_line(export("--hf_dir=link", "--overwrite=True"), "hf_dir link is a symbolic link")


def test_export_of_out_dir_dot_goes_beside_the_folder(run_dirs, monkeypatch, capsys):
    shutil.copytree(run_dirs / "data", run_dirs / "runs" / "a" / "data")  # its meta.pkl, found from runs/a
    assert run_in_process(REPO / "export_hf.py", run_dirs / "runs" / "a", ["--out_dir=."], monkeypatch) is None
    assert (run_dirs / "runs" / "a-hf" / "model.safetensors").is_file()
    assert sorted(os.listdir(run_dirs / "runs" / "a")) == ["ckpt.pt", "data"]


def test_export_of_a_character_model_whose_checkpoint_names_no_dataset(run_dirs, monkeypatch):
    ckpt = torch.load(run_dirs / "runs" / "a" / "ckpt.pt", weights_only=True)
    del ckpt["config"]["dataset"]
    torch.save(ckpt, run_dirs / "runs" / "a" / "ckpt.pt")
    message = run_in_process(REPO / "export_hf.py", run_dirs, ["--out_dir=runs/a"], monkeypatch)
    assert_one_line(message, "the model has 40 tokens, too few for GPT-2's, and its checkpoint names no dataset")


def _cut(rel, keep):
    def setup(root: Path):
        data = (root / rel).read_bytes()
        (root / rel).write_bytes(data[: keep(len(data))])

    return setup


def _rewrite_config(change):
    """config.json replaced by `change` (not a dict), or updated with it."""

    def setup(root: Path):
        config = json.loads((root / "hf/config.json").read_text())
        (root / "hf/config.json").write_text(json.dumps(config | change if isinstance(change, dict) else change))

    return setup


def _drop_weight(name):
    def setup(root: Path):
        from safetensors.torch import load_file, save_file

        weights = load_file(root / "hf/model.safetensors")
        del weights[name]
        save_file(weights, root / "hf/model.safetensors", metadata={"format": "pt"})

    return setup


@pytest.mark.parametrize(
    "folder, setup, phrase",
    [
        ("hf", _cut("hf/model.safetensors", lambda n: n // 2), "hf/model.safetensors is cut short or corrupt"),
        ("hf", _cut("hf/model.safetensors", lambda n: 100), "hf/model.safetensors is cut short or corrupt"),
        ("hf", _cut("hf/config.json", lambda n: n // 2), "hf/config.json is cut short or corrupt"),
        ("hf", _rewrite_config([]), "hf/config.json is cut short or corrupt"),
        # files of two models: the weights must not come out of a random init, nor the shapes crash transformers
        ("hf", _rewrite_config({"n_embd": 32}), "fit its config.json: transformer.h.0.attn.c_attn.bias is of"),
        ("hf", _drop_weight("transformer.h.0.mlp.c_fc.weight"), "fit its config.json: transformer.h.0.mlp.c_fc.weight"),
        ("runs/a", None, "runs/a holds a training checkpoint, not a Hugging Face model: use --init_from=resume"),
        ("runs/b", None, "runs/b has no config.json: give a Hugging Face model folder"),
    ],
)
def test_a_broken_model_folder_is_one_line(exported, monkeypatch, folder, setup, phrase):
    pytest.importorskip("transformers")
    from nanogpt_plus import huggingface

    monkeypatch.chdir(exported)
    if setup:
        setup(exported)
    with pytest.raises(UserError) as e:
        huggingface.load_pretrained(folder)
    assert_one_line(str(e.value), phrase)


def test_an_export_has_the_permissions_of_any_new_file(exported):
    """Every file of the folder, model.safetensors included (safetensors writes 0600), and the folder
    itself: as open() and mkdir() make them here, under this umask, like train.py's ckpt.pt."""
    (exported / "reference").mkdir()
    (exported / "reference" / "file").write_text("")
    file_mode = (exported / "reference" / "file").stat().st_mode & 0o777
    folder_mode = (exported / "reference").stat().st_mode & 0o777
    modes = {p.name: p.stat().st_mode & 0o777 for p in (exported / "hf").iterdir()}
    assert "model.safetensors" in modes and modes == dict.fromkeys(modes, file_mode)
    assert (exported / "hf").stat().st_mode & 0o777 == folder_mode


def test_the_readme_says_what_hugging_face_generate_does_past_block_size(exported):
    """The README's claim, checked on an export (block_size 8): Hugging Face's GPT-2 generates up to n_positions
    tokens and past them raises the error the README names, where sample.py slides its window."""
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel.from_pretrained(exported / "hf").eval()
    prompt = torch.tensor([[1, 2, 3]])
    settings = dict(do_sample=False, pad_token_id=0)
    assert model.generate(prompt, max_new_tokens=5, **settings).shape == (1, 8)  # up to n_positions: fine
    with pytest.raises(Exception) as e:
        model.generate(prompt, max_new_tokens=10, **settings)
    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    said = f"fails with `{type(e.value).__name__}: {e.value}`"
    assert said in readme, said
