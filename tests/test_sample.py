"""sample.py end to end, as a user runs it in a scratch folder holding out/ckpt.pt and data/<dataset>/meta.pkl.

Also both directions of checkpoint compatibility with classic nanoGPT: sample.py loads a
checkpoint as classic train.py wrote it, and classic sample.py's loading steps (re-done here
independently) accept a checkpoint as ours writes it.
"""

import dataclasses
import os
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from model import GPT, GPTConfig

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample.py"
SEP = "---------------"
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"
CHARS = sorted(set(TEXT))
MODEL_ARGS = dict(n_layer=2, n_head=2, n_embd=32, block_size=32, bias=False, vocab_size=len(CHARS), dropout=0.0)


def build_model(model_args, seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**model_args))
    with torch.no_grad():  # peaked logits, so greedy choices are far from ties
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return model.eval()


def write_meta(folder: Path, dataset="toy_char"):
    meta = {"vocab_size": len(CHARS), "itos": dict(enumerate(CHARS)), "stoi": {c: i for i, c in enumerate(CHARS)}}
    (folder / "data" / dataset).mkdir(parents=True, exist_ok=True)
    with open(folder / "data" / dataset / "meta.pkl", "wb") as f:
        pickle.dump(meta, f)
    return meta


def write_checkpoint(folder: Path, model, model_args, dataset="toy_char", classic=False, out="out"):
    """A checkpoint dict as train.py writes it; classic=True mimics an old nanoGPT run instead:
    compiled-model key prefixes and the masked-attention path's `.attn.bias` buffers."""
    state = model.state_dict()
    if classic:
        n = model_args["block_size"]
        mask = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        state = {f"_orig_mod.{k}": v for k, v in state.items()}
        for i in range(model_args["n_layer"]):
            state[f"_orig_mod.transformer.h.{i}.attn.bias"] = mask
    ckpt = {
        "model": state,
        "optimizer": torch.optim.AdamW(model.parameters(), lr=1e-3).state_dict(),
        "model_args": dict(model_args),
        "iter_num": 100,
        "best_val_loss": 1.5,
        "config": {"dataset": dataset, "out_dir": out, "batch_size": 4, "compile": classic},
    }
    (folder / out).mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, folder / out / "ckpt.pt")
    return ckpt


def run_sample(folder: Path, *args):
    """`python sample.py --device=cpu *args` in folder; on the CPU, not compiled, in this process (user_errors.run_here:
    the same output and exit status; the tiktoken cache is conftest.py's)."""
    from user_errors import cpu_and_eager, run_here

    args = ["--device=cpu", *args]
    if cpu_and_eager(args):
        return run_here(SAMPLE, folder, args)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(SAMPLE), *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def samples_of(stdout: str) -> list[str]:
    """The printed samples: the text between separator lines, config and meta lines dropped."""
    lines = stdout.split("\n")
    tokenizer_lines = ("Loading meta", "Loading characters", "No meta.pkl")
    body_start = next(i for i, line in enumerate(lines) if line.startswith(tokenizer_lines)) + 1
    body = "\n".join(lines[body_start:])
    assert body.endswith(SEP + "\n")
    return [s[:-1] for s in body[: -len(SEP) - 1].split(SEP + "\n")]  # print() added a newline


def greedy_text(model, meta, prompt, n):
    ids = torch.tensor([[meta["stoi"][c] for c in prompt]])
    block = model.config.block_size
    with torch.no_grad():
        for _ in range(n):
            logits = model(ids[:, -block:])[0][:, -1, :]
            ids = torch.cat((ids, logits.argmax(-1, keepdim=True)), dim=1)
    return "".join(meta["itos"][i] for i in ids[0].tolist())


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("char")
    meta = write_meta(folder)
    model = build_model(MODEL_ARGS)
    write_checkpoint(folder, model, MODEL_ARGS)
    return folder, model, meta


def test_char_level_samples(char_run):
    folder, _, meta = char_run
    result = run_sample(folder, "--start=First", "--num_samples=3", "--max_new_tokens=50")
    assert result.returncode == 0, result.stderr
    assert "Loading meta from data/toy_char/meta.pkl" in result.stdout
    samples = samples_of(result.stdout)
    assert len(samples) == 3
    for s in samples:
        assert s.startswith("First") and len(s) == len("First") + 50
        assert set(s) <= set(meta["stoi"])
    assert len(set(samples)) == 3  # sampled, not greedy
    again = run_sample(folder, "--start=First", "--num_samples=3", "--max_new_tokens=50")
    assert again.stdout == result.stdout  # the same seed gives the same samples
    other = run_sample(folder, "--start=First", "--num_samples=3", "--max_new_tokens=50", "--seed=7")
    assert samples_of(other.stdout) != samples
    assert result.stderr == ""


def test_greedy_matches_reference_and_prompt_file(char_run):
    folder, model, meta = char_run
    prompt = "Before we proceed any further, hear me"  # longer than block_size (32)
    (folder / "prompt.txt").write_text(prompt, encoding="utf-8")
    result = run_sample(folder, "--start=FILE:prompt.txt", "--temperature=0", "--num_samples=2", "--max_new_tokens=40")
    assert result.returncode == 0, result.stderr
    expected = greedy_text(model, meta, prompt, 40)
    assert samples_of(result.stdout) == [expected, expected]


def test_tiktoken_path_without_meta(tmp_path):
    args = dict(MODEL_ARGS, vocab_size=50304, n_embd=16, n_layer=1)
    model = build_model(args)
    write_checkpoint(tmp_path, model, args, dataset="openwebtext")  # no data/openwebtext/meta.pkl here
    prompt = "Hello world<|endoftext|>The"
    result = run_sample(tmp_path, f"--start={prompt}", "--num_samples=2", "--max_new_tokens=8", "--top_k=None")
    assert result.returncode == 0, result.stderr
    assert "No meta.pkl found, assuming GPT-2 encodings..." in result.stdout
    samples = samples_of(result.stdout)
    assert len(samples) == 2 and all(s.startswith(prompt) for s in samples)


def test_classic_checkpoint_loads(tmp_path):
    meta = write_meta(tmp_path)
    model = build_model(MODEL_ARGS, seed=3)
    write_checkpoint(tmp_path, model, MODEL_ARGS, classic=True, out="out-classic")
    result = run_sample(tmp_path, "--out_dir=out-classic", "--start=hear", "--temperature=0", "--num_samples=1")
    assert result.returncode == 0, result.stderr
    assert samples_of(result.stdout) == [greedy_text(model, meta, "hear", 500)]


def classic_state_keys(n_layer, bias):
    """nanoGPT's parameter names, written out from its module layout."""
    keys = ["transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight", "lm_head.weight"]
    for i in range(n_layer):
        h = f"transformer.h.{i}."
        for name in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            keys.append(h + name + ".weight")
            if bias:
                keys.append(h + name + ".bias")
    if bias:
        keys.append("transformer.ln_f.bias")
    return set(keys)


@dataclasses.dataclass
class ClassicGPTConfig:
    """Classic nanoGPT's GPTConfig fields and defaults: GPTConfig(**model_args) must accept ours."""

    block_size: int = 1024
    vocab_size: int = 50304
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True


@pytest.mark.parametrize("weights_only", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_classic_sample_loads_our_checkpoint(tmp_path, weights_only, bias):
    """Classic sample.py: torch.load, GPTConfig(**model_args), strip '_orig_mod.',
    load_state_dict (strict), then the model's logits are ours."""
    args = dict(MODEL_ARGS, bias=bias)
    model = build_model(args, seed=5)
    ckpt = write_checkpoint(tmp_path, model, args)
    ckpt["rng_state"] = {"torch": torch.get_rng_state(), "python": [3, list(range(5)), None], "numpy": [1, 2]}
    torch.save(ckpt, tmp_path / "out" / "ckpt.pt")

    checkpoint = torch.load(tmp_path / "out" / "ckpt.pt", map_location="cpu", weights_only=weights_only)
    conf = ClassicGPTConfig(**checkpoint["model_args"])
    state_dict = checkpoint["model"]
    unwanted_prefix = "_orig_mod."
    for k in list(state_dict):
        if k.startswith(unwanted_prefix):
            state_dict[k[len(unwanted_prefix) :]] = state_dict.pop(k)
    assert set(state_dict) == classic_state_keys(args["n_layer"], bias)
    loaded = GPT(GPTConfig(**dataclasses.asdict(conf)))
    loaded.load_state_dict(state_dict, strict=True)
    loaded.eval()
    assert isinstance(checkpoint["iter_num"], int) and isinstance(checkpoint["best_val_loss"], float)
    assert checkpoint["config"]["dataset"] == "toy_char"

    x = torch.randint(0, args["vocab_size"], (2, 20))
    with torch.no_grad():
        assert torch.equal(loaded(x, x)[0], model(x, x)[0])


ERRORS = [
    (["--out_dir=missing"], "no checkpoint at missing", "python train.py"),
    (["--start=ané €"], "prompt has characters the vocabulary lacks: 'é', '€'", ""),
    (["--start=FILE:nowhere.txt"], "prompt file nowhere.txt not found", ""),
    (["--top_k=0"], "top_k=0", "--top_k=None"),
    (["--max_new_tokens=-1"], "max_new_tokens=-1", ""),
    (["--num_samples=0"], "num_samples=0", ""),
    (["--temperature=-0.1"], "temperature=-0.1", ""),
    (["--init_from=gpt3"], "unknown init_from='gpt3'", "Hugging Face model folder"),
    (["--start="], "the prompt is empty", ""),
]


@pytest.mark.parametrize("args,message,hint", ERRORS, ids=[e[1].split()[0] for e in ERRORS])
def test_errors_are_one_line(char_run, args, message, hint):
    folder = char_run[0]
    result = run_sample(folder, *args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0] and hint in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert SEP not in result.stdout


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_meta_pkl_is_refused(tmp_path):
    marker = tmp_path / "payload_ran"
    (tmp_path / "data" / "evil").mkdir(parents=True)
    with open(tmp_path / "data" / "evil" / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 3, "itos": {0: "a"}, "stoi": {"a": 0}, "x": _Payload(marker)}, f)
    write_checkpoint(tmp_path, build_model(MODEL_ARGS), MODEL_ARGS, dataset="evil")
    result = run_sample(tmp_path, "--num_samples=1", "--max_new_tokens=3")
    assert result.returncode == 1
    assert result.stderr.startswith("error: refusing to load data/evil/meta.pkl")
    assert "Traceback" not in result.stderr
    assert not marker.exists()


def test_streamed_samples_are_the_tokens_generate_returns(char_run):
    """sample.py prints each sample as its tokens come (flushed); what it prints is the text of
    the very tokens generate() returns in one piece for the same seed, computed here in-process."""
    from nanogpt_plus import checkpoint

    folder, _, meta = char_run
    proc = subprocess.Popen(
        [sys.executable, str(SAMPLE), "--device=cpu", "--start=First", "--num_samples=2", "--max_new_tokens=300"],
        cwd=folder, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    head = "".join(iter(proc.stdout.readline, "Loading meta from data/toy_char/meta.pkl...\n"))
    first_line = proc.stdout.readline()
    still_running = proc.poll() is None  # the first sample's text came while it was being generated
    rest = proc.stdout.read()
    assert proc.wait(timeout=120) == 0 and still_running and first_line.startswith("First")
    printed = head + "Loading meta from data/toy_char/meta.pkl...\n" + first_line + rest
    torch.manual_seed(1337)  # sample.py's seed, then the same model construction (its init draws numbers)
    model = checkpoint.model_from(checkpoint.load(str(folder / "out" / "ckpt.pt")), dropout=0.0).eval()
    x = torch.tensor([[meta["stoi"][c] for c in "First"]])
    expected = ["".join(meta["itos"][i] for i in model.generate(x, 300, 0.8, 200)[0].tolist()) for _ in range(2)]
    assert samples_of(printed) == expected


def test_gpt2_without_network_fails_fast_in_one_line(tmp_path):
    """init_from=gpt2 with nothing in the Hugging Face cache and no network: one line within seconds,
    not minutes of download retries."""
    pytest.importorskip("transformers")
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9", PYTHONUNBUFFERED="1")
    env.pop("HF_HUB_OFFLINE", None)
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(SAMPLE), "--device=cpu", "--init_from=gpt2"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert time.monotonic() - start < 30
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot load gpt2: it is not in the Hugging Face cache")
    assert "http://127.0.0.1:9 cannot be reached" in lines[0]


def test_batched_samples_are_the_rows_generate_draws_for_a_batch(char_run):
    """--batch_samples=True draws every sample at once: the rows of one generate() call on the prompt
    repeated, computed here in-process from the same seed; --verbose says how the time went."""
    from nanogpt_plus import checkpoint

    folder, _, meta = char_run
    result = run_sample(folder, "--start=First", "--num_samples=3", "--max_new_tokens=40", "--batch_samples=True",
                        "--verbose=True")  # fmt: skip
    assert result.returncode == 0, result.stderr
    torch.manual_seed(1337)
    model = checkpoint.model_from(checkpoint.load(str(folder / "out" / "ckpt.pt")), dropout=0.0).eval()
    x = torch.tensor([[meta["stoi"][c] for c in "First"]]).expand(3, -1)
    expected = ["".join(meta["itos"][i] for i in row.tolist()) for row in model.generate(x, 40, 0.8, 200)]
    assert samples_of(result.stdout) == expected and len(set(expected)) == 3
    first, rate = result.stderr.strip().splitlines()
    assert re.fullmatch(r"time to the first token: [0-9.]+ s from the start", first)
    assert re.fullmatch(r"120 tokens in [0-9.]+ s \([0-9,]+ tokens/s, one batch\)", rate)


@pytest.mark.gpu
def test_samples_on_cuda_are_the_draws_of_nanogpts_order(char_run):
    """On CUDA sample.py makes the model on the GPU, where its random init is quick, and its samples are
    still those of nanoGPT's order, computed here: the seed, the model made on the CPU (its init draws
    from the CPU's random state) and moved, then one sample after another under bfloat16 autocast."""
    from nanogpt_plus import checkpoint
    from nanogpt_plus.engine import Sampler
    from nanogpt_plus.plan import make_plan

    folder, _, meta = char_run
    result = run_sample(folder, "--device=cuda", "--dtype=bfloat16", "--start=First", "--num_samples=2",
                        "--max_new_tokens=300")  # fmt: skip
    assert result.returncode == 0, result.stderr
    ckpt = checkpoint.load(str(folder / "out" / "ckpt.pt"))
    torch.manual_seed(1337)
    model = checkpoint.model_from(ckpt, dropout=0.0).cuda().eval()
    x = torch.tensor([[meta["stoi"][c] for c in "First"]], device="cuda")
    plan = make_plan("cuda", "bfloat16", task="sample")  # sample.py's: its Sampler replays CUDA graphs
    with torch.no_grad(), plan.autocast():
        sampler = Sampler(model, 1, x.size(1), 300, 0.8, 200, cuda_graph=plan.cuda_graph)
        expected = ["".join(meta["itos"][i] for i in sampler(x)[0].tolist()) for _ in range(2)]
    assert samples_of(result.stdout) == expected
    made_there = checkpoint.model_from(ckpt, dropout=0.0, device="cuda")
    assert made_there.lm_head.weight is made_there.transformer.wte.weight and made_there.lm_head.weight.is_cuda
    assert all(torch.equal(a, b) for a, b in zip(made_there.state_dict().values(), model.state_dict().values()))
