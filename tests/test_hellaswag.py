"""HellaSwag zero-shot (hellaswag.py, eval_hellaswag.py, train.py --hellaswag_interval) on small
synthetic files in rowanz/hellaswag's format: the scores against a plain per-ending float64
computation, cropping, DDP, the download through a local HTTP server, bad files, the training log."""

import contextlib
import csv
import functools
import http.server
import json
import os
import random
import subprocess
import sys
import threading
from contextlib import nullcontext
from pathlib import Path

import pytest
import tiktoken
import torch
import torch.nn.functional as F
from test_train import TINY, make_dataset, run_train

from model import GPT, GPTConfig
from nanogpt_plus import checkpoint, hellaswag, parallel, tokenizer, training_log
from nanogpt_plus.errors import UserError

REPO = Path(__file__).resolve().parent.parent
EVAL = REPO / "eval_hellaswag.py"
WORDS = "a man woman dog the ball rope kitchen knife slowly then is are of and to in on with runs jumps".split()
MODEL_ARGS = dict(n_layer=2, n_head=2, n_embd=16, block_size=64, bias=True, vocab_size=50304, dropout=0.0)


def synthetic(n, seed=0, ctx_words=(3, 14), ending_words=(1, 10)):
    """n items as rowanz/hellaswag's hellaswag_val.jsonl holds them (every field), of random words."""
    rng = random.Random(seed)
    text = lambda lo_hi: " ".join(rng.choice(WORDS) for _ in range(rng.randint(*lo_hi)))  # noqa: E731
    items = []
    for i in range(n):
        ctx_a, ctx_b = text(ctx_words).capitalize() + ".", text((1, 2))
        items.append({
            "ind": 100 + i, "activity_label": "Synthetic activity", "ctx_a": ctx_a, "ctx_b": ctx_b,
            "ctx": f"{ctx_a} {ctx_b}", "split": "val", "split_type": "indomain" if i % 2 else "zeroshot",
            "label": rng.randrange(4), "endings": [text(ending_words) + "." for _ in range(4)],
            "source_id": f"activitynet~v_{i:011d}",
        })  # fmt: skip
    return items


def write_jsonl(path: Path, items) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def tiny_model(dtype=torch.float64, seed=0, **changes):
    """A random GPT with peaked logits, so that the endings' losses are far apart."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**(MODEL_ARGS | changes)))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return model.to(dtype).eval()


def reference(model, examples):
    """Per item, the summed and mean loss of each ending and which is lowest, computed the plain way:
    one ending at a time, tokenized here, the full logits of model(x, targets) in float64, its own
    crop to the last block_size + 1 tokens. Also how many items had an ending cropped."""
    enc = tiktoken.get_encoding("gpt2")
    block = model.config.block_size
    sums, means, cropped = [], [], 0
    for ex in examples:
        item_sums, item_means, crop = [], [], False
        for ending in ex["endings"]:
            ctx, end = enc.encode(ex["ctx"]), enc.encode(" " + ending)
            tokens = ctx + end
            if len(tokens) - 1 > block:
                tokens, crop = tokens[len(tokens) - block - 1 :], True
            x = torch.tensor([tokens[:-1]])
            with torch.no_grad():
                logits, _ = model(x, torch.zeros_like(x))
            logp = F.log_softmax(logits[0].double(), dim=-1)
            losses = []
            for t in range(len(tokens) - 1):  # target tokens[t + 1], predicted at position t
                if t + 1 >= len(tokens) - len(end):  # an ending token
                    losses.append(-logp[t, tokens[t + 1]].item())
            item_sums.append(sum(losses))
            item_means.append(sum(losses) / len(losses))
        sums.append(item_sums)
        means.append(item_means)
        cropped += crop
    return torch.tensor(sums, dtype=torch.float64), torch.tensor(means, dtype=torch.float64), cropped


def counts(sums, means, examples):
    labels = torch.tensor([ex["label"] for ex in examples])
    return int((sums.argmin(1) == labels).sum()), int((means.argmin(1) == labels).sum())


@pytest.fixture(scope="module")
def enc():
    return tokenizer.gpt2_encoding()


@pytest.fixture(scope="module")
def examples():
    return synthetic(12)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def expected(model, examples):
    return reference(model, examples)


# ---------------------------------------------------------------------------- scoring


def test_scores_equal_a_plain_float64_reference(model, examples, expected, enc, tmp_path):
    path = write_jsonl(tmp_path / "hellaswag_val.jsonl", examples)
    items = hellaswag.tokenize(hellaswag.read(str(path)), enc)
    sums, means = hellaswag.scores(model, items, "cpu", nullcontext())  # all 12 in one padded batch
    want_sums, want_means, _ = expected
    torch.testing.assert_close(sums, want_sums, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(means, want_means, rtol=1e-10, atol=1e-10)
    correct, correct_norm = counts(want_sums, want_means, examples)
    assert (want_sums.argmin(1) != want_means.argmin(1)).any()  # the data tells acc and acc_norm apart
    assert 0 < correct < len(examples) and 0 < correct_norm < len(examples)
    result = hellaswag.evaluate(model, items, "cpu", nullcontext(), batch_items=5)
    assert result == dict(items=12, acc=correct / 12, acc_norm=correct_norm / 12, correct=correct,
                          correct_norm=correct_norm, cropped=0)  # fmt: skip


def test_batch_size_does_not_change_the_counts(model, examples, expected, enc):
    items = hellaswag.tokenize(examples, enc)
    correct, correct_norm = counts(*expected[:2], examples)
    for batch_items in (1, 7):
        result = hellaswag.evaluate(model, items, "cpu", nullcontext(), batch_items=batch_items)
        assert (result["correct"], result["correct_norm"], result["items"]) == (correct, correct_norm, 12)


def test_compiled_blocks_are_not_recompiled_for_each_length(examples, enc):
    """train.py's regional compile leaves compiled blocks in the model (dynamic=False): evaluate
    runs them eagerly rather than compiling them for every new batch shape."""
    model = tiny_model(dtype=torch.float32)
    compiled = []

    def backend(graph, example_inputs):
        compiled.append(graph)
        return graph.forward

    for block in model.transformer.h:
        block.compile(backend=backend, dynamic=False)
    items = hellaswag.tokenize(examples, enc)
    want = hellaswag.evaluate(tiny_model(dtype=torch.float32), items, "cpu", nullcontext(), batch_items=3)
    assert hellaswag.evaluate(model, items, "cpu", nullcontext(), batch_items=3) == want
    assert compiled == []
    with torch.no_grad():
        model(torch.zeros((1, 5), dtype=torch.long))
    assert compiled  # (they do compile when called outside evaluate)


def test_long_items_are_cropped_from_the_left_and_reported(enc):
    model = tiny_model(block_size=12)
    examples = synthetic(10, seed=1, ctx_words=(2, 14), ending_words=(1, 6))
    examples[0]["endings"][2] = " ".join(["rope"] * 20) + "."  # an ending longer than the whole block
    items = hellaswag.tokenize(examples, enc)
    want_sums, want_means, want_cropped = reference(model, examples)
    assert 0 < want_cropped < len(examples)
    sums, means = hellaswag.scores(model, items, "cpu", nullcontext())
    torch.testing.assert_close(sums, want_sums, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(means, want_means, rtol=1e-10, atol=1e-10)
    assert hellaswag.evaluate(model, items, "cpu", nullcontext(), batch_items=4)["cropped"] == want_cropped
    said = []
    hellaswag.check_model(items, 50304, 12, said.append)
    assert said == [f"note: {want_cropped} of 10 HellaSwag items are longer than block_size=12 tokens: cropped "
                    "from the left"]  # fmt: skip
    said.clear()
    hellaswag.check_model(items, 50304, 1024, said.append)
    assert said == []


def test_a_model_with_another_vocabulary_is_refused(enc, examples):
    with pytest.raises(UserError, match="needs a model on GPT-2's 50257 tokens, and this one has vocab_size=65"):
        hellaswag.check_model(hellaswag.tokenize(examples, enc), 65, 64)


# ---------------------------------------------------------------------------- the script, DDP


def write_checkpoint(folder: Path, model, dataset="openwebtext"):
    ckpt = dict(model=model.state_dict(), optimizer={}, model_args=dict(MODEL_ARGS), iter_num=7, best_val_loss=3.0)
    ckpt["config"] = {"dataset": dataset}
    (folder / "out").mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, folder / "out" / "ckpt.pt")


def run_eval(cwd: Path, *args, nproc=1, env=None):
    """`python eval_hellaswag.py --device=cpu *args` in cwd: in this process (user_errors.run_here: the same output
    and exit status), or torchrun's nproc processes."""
    if nproc == 1 and env is None:
        from user_errors import run_here

        return run_here(EVAL, cwd, ["--device=cpu", *args])
    cmd = [sys.executable, str(EVAL), "--device=cpu", *args]
    if nproc > 1:
        cmd[1:2] = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(EVAL)]
    env = {k: v for k, v in (env or os.environ).items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_eval_script_over_two_gloo_processes_counts_as_one_process(tmp_path, enc):
    """9 items over 2 ranks (5 and 4): the same counts as one process scoring all of them."""
    model = tiny_model(dtype=torch.float32, seed=3)
    write_checkpoint(tmp_path, model)
    examples = synthetic(9, seed=2)
    path = write_jsonl(tmp_path / "items.jsonl", examples)
    want = hellaswag.evaluate(model, hellaswag.tokenize(examples, enc), "cpu", nullcontext())
    proc = run_eval(tmp_path, f"--hellaswag_file={path}", "--batch_size=2", nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads((tmp_path / "out" / "hellaswag.json").read_text())
    assert {k: got[k] for k in want} == want
    assert got["model"] == os.path.join("out", "ckpt.pt") and got["block_size"] == 64 and got["dtype"] == "float32"
    assert f"acc {want['acc']:.4f} ({want['correct']} right)" in proc.stdout
    assert proc.stdout.count("hellaswag: 9 items") == 1  # rank 0 alone speaks
    assert sorted(os.listdir(tmp_path / "out")) == ["ckpt.pt", "hellaswag.json"]  # no temp left


def test_a_character_level_checkpoint_is_one_error_line(tmp_path):
    write_checkpoint(tmp_path, tiny_model(dtype=torch.float32), dataset="chars")
    (tmp_path / "data" / "chars").mkdir(parents=True)
    (tmp_path / "data" / "chars" / "meta.pkl").write_bytes(b"")
    proc = run_eval(tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(f"error: {os.path.join('out', 'ckpt.pt')} is a character-level model")
    assert not (tmp_path / "data" / "hellaswag").exists()  # refused before any download


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch_size=0"], "error: batch_size=0 must be at least 1"),  # (not limit, which is fine)
        (["--limit=-1"], "error: limit=-1 must not be negative"),
        (["--hellaswag_file=."], "error: hellaswag_file . is a folder: give the path of HellaSwag's .jsonl file"),
    ],
)
def test_a_bad_option_is_one_error_line_naming_it(tmp_path, args, message):
    proc = run_eval(tmp_path, "--init_from=gpt2", *args)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith(message), proc.stderr


def test_an_unknown_init_from_is_one_error_line(tmp_path):
    proc = run_eval(tmp_path, "--init_from=gpt3")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("error: unknown init_from='gpt3': use resume, gpt2, ")
    assert proc.stderr.rstrip().endswith("or the path of a Hugging Face model folder")


# ---------------------------------------------------------------------------- the file: download, cache, bad lines


@contextlib.contextmanager
def serve(folder: Path):
    """An HTTP server on 127.0.0.1 for the files of folder, in a thread; yields its URL and the paths asked for."""
    asked = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            asked.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", asked
    finally:
        server.shutdown()
        server.server_close()


def test_download_is_checked_cached_atomically_and_read_back(tmp_path, monkeypatch, examples, enc):
    served = write_jsonl(tmp_path / "site" / "hellaswag_val.jsonl", examples)
    (tmp_path / "site" / "broken.jsonl").write_bytes(served.read_bytes()[:-40])  # cut mid-line
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    monkeypatch.chdir(work)
    cache = work / "data" / "hellaswag" / "hellaswag_val.jsonl"
    said = []
    with serve(tmp_path / "site") as (url, asked):
        monkeypatch.setenv("NANOGPT_HELLASWAG_URL", f"{url}/broken.jsonl")
        with pytest.raises(UserError, match=r"broken\.jsonl, line 12: not a JSON object"):
            hellaswag.prepare("", parallel.Processes(), said.append)
        assert not cache.parent.exists()  # checked before anything is kept
        monkeypatch.setenv("NANOGPT_HELLASWAG_URL", f"{url}/hellaswag_val.jsonl")
        items = hellaswag.prepare("", parallel.Processes(), said.append)
        assert cache.read_bytes() == served.read_bytes() and os.listdir(cache.parent) == [cache.name]
        assert items == hellaswag.tokenize(examples, enc)
        again = hellaswag.prepare("", parallel.Processes(), said.append, limit=5)
        assert asked == ["/broken.jsonl", "/hellaswag_val.jsonl"]  # the second run read the cache
    assert again == items[:5]
    assert said == [f"downloading HellaSwag from {url}/{n} into {os.path.join('data', 'hellaswag', cache.name)}"
                    for n in ("broken.jsonl", "hellaswag_val.jsonl")]  # fmt: skip


def test_offline_or_missing_download_is_one_short_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with serve(tmp_path) as (url, _):
        monkeypatch.setenv("NANOGPT_HELLASWAG_URL", f"{url}/nothing.jsonl")
        with pytest.raises(UserError) as missing:
            hellaswag.prepare("", parallel.Processes(), lambda _: None)
    monkeypatch.setenv("NANOGPT_HELLASWAG_URL", url)  # the server is gone: nothing listens there
    with pytest.raises(UserError) as offline:
        hellaswag.prepare("", parallel.Processes(), lambda _: None)
    for e, why in ((missing, "HTTP 404"), (offline, "ConnectionError")):
        message = str(e.value)
        assert f"({why}): pass --hellaswag_file=PATH, a local copy of it" in message
        assert "\n" not in message and len(message) < 200
    assert not (tmp_path / "data" / "hellaswag").exists()


@pytest.mark.parametrize(
    "line, problem",
    [
        ("{not json", "not a JSON object"),
        ("[1, 2]", "not a JSON object"),
        ('{"endings": ["a", "b", "c", "d"], "label": 0}', "no context text 'ctx'"),
        ('{"ctx": "x", "endings": ["a", "b", "c"], "label": 0}', "'endings' is not a list of four texts"),
        ('{"ctx": "x", "endings": ["a", "b", "c", 4], "label": 0}', "'endings' is not a list of four texts"),
        ('{"ctx": "x", "endings": ["a", "b", "c", "d"], "label": "2"}', "'label' is '2', not 0, 1, 2 or 3"),
        ('{"ctx": "x", "endings": ["a", "b", "c", "d"], "label": 4}', "'label' is 4, not 0, 1, 2 or 3"),
        (b"\xff\xfe", "not a JSON object"),
        ("[" * 100_000, "not a JSON object"),  # json's parser recurses: RecursionError, not a ValueError
    ],
)
def test_a_malformed_line_is_one_line_naming_the_file_and_line(tmp_path, examples, line, problem):
    path = tmp_path / "bad.jsonl"
    good = "".join(json.dumps(ex) + "\n" for ex in examples[:2]).encode()
    path.write_bytes(good + b"\n" + (line if isinstance(line, bytes) else line.encode()) + b"\n")
    with pytest.raises(UserError) as e:
        hellaswag.read(str(path))
    assert str(e.value).startswith(f"{path}, line 4: {problem}; give a file in rowanz/hellaswag's format")
    assert "\n" not in str(e.value)


def test_an_empty_or_missing_file_is_one_line(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UserError, match="empty.jsonl holds no HellaSwag items"):
        hellaswag.read(str(tmp_path / "empty.jsonl"))
    with pytest.raises(UserError, match="hellaswag_file .*nope.jsonl not found"):
        hellaswag.prepare(str(tmp_path / "nope.jsonl"), parallel.Processes())


# ---------------------------------------------------------------------------- during training, and the log


def test_train_logs_hellaswag_and_the_plot_draws_it(tmp_path, enc):
    """--hellaswag_interval=2 over 3 iterations: rows at 0, 2 and 3 (the end), the last one the
    acc_norm of the final checkpoint as scored here; loss.png gets them on a right-hand axis."""
    make_dataset(tmp_path, meta=False)  # GPT-2's vocabulary: a model of 50304 tokens
    examples = synthetic(6, seed=4)
    path = write_jsonl(tmp_path / "items.jsonl", examples)
    args = [*TINY, "--max_iters=3", "--eval_interval=3", "--eval_iters=1", "--gradient_accumulation_steps=1"]
    args += [f"--hellaswag_file={path}", "--hellaswag_interval=2", "--n_embd=16"]
    proc = run_train(tmp_path, *args, "--out_dir=out")
    rows = list(csv.DictReader(open(tmp_path / "out" / "train_log.csv", newline="")))
    assert list(rows[0]) == list(training_log.HEADER) and training_log.HEADER[-1] == "hellaswag"
    logged = [(int(r["iter"]), float(r["hellaswag"])) for r in rows if r["hellaswag"]]
    assert [it for it, _ in logged] == [0, 2, 3]
    assert all(r["loss"] == r["val_loss"] == "" for r in rows if r["hellaswag"])
    final = checkpoint.model_from(checkpoint.load(str(tmp_path / "out" / "ckpt.pt"))).eval()
    want = hellaswag.evaluate(final, hellaswag.tokenize(examples, enc), "cpu", nullcontext())
    assert logged[-1][1] == pytest.approx(want["acc_norm"], abs=1e-6)
    assert f"step 3: hellaswag acc_norm {want['acc_norm']:.4f}, acc {want['acc']:.4f}" in proc.stdout
    steps, evals, hellaswag_rows = training_log.read_log(tmp_path / "out" / "train_log.csv")
    assert hellaswag_rows == logged and [it for it, *_ in evals] == [0, 3] and len(steps) == 3
    fig = training_log.draw([str(tmp_path / "out")], str(tmp_path / "again.png"))
    if fig is not None:  # (with matplotlib) HellaSwag on the right-hand axis of the run's panel
        assert (tmp_path / "out" / "loss.png").read_bytes().startswith(b"\x89PNG")  # drawn by train.py
        assert [list(map(tuple, ln.get_xydata().tolist())) for ln in fig.axes[1].lines] == [logged]
    # a character-level dataset: refused before anything is set up
    make_dataset(tmp_path, name="chars")
    proc = run_train(tmp_path, *args, "--dataset=chars", "--out_dir=c", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and not (tmp_path / "c").exists()
    assert proc.stderr.startswith("error: hellaswag_interval needs a model on GPT-2's tokens, but dataset 'chars'")


@pytest.mark.gpu
def test_on_the_gpu_float32_and_bf16_score_as_the_float64_reference(examples, expected, enc):
    """The CUDA path (SDPA attention, bf16 autocast as eval_hellaswag.py runs it) against the CPU
    float64 reference of the same weights: float32 closely, bf16 within its precision."""
    from nanogpt_plus.plan import autocast

    items = hellaswag.tokenize(examples, enc)
    model = tiny_model(dtype=torch.float32).cuda()  # the float64 model's weights, before the cast
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        sums, means = hellaswag.scores(model, items, "cuda", nullcontext())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    torch.testing.assert_close(sums.double().cpu(), expected[0], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(means.double().cpu(), expected[1], rtol=1e-4, atol=1e-3)
    sums, means = hellaswag.scores(model, items, "cuda", autocast("cuda", "bfloat16"))
    assert sums.dtype == torch.float32
    torch.testing.assert_close(sums.double().cpu(), expected[0], rtol=3e-2, atol=0.5)
    torch.testing.assert_close(means.double().cpu(), expected[1], rtol=3e-2, atol=0.1)


@pytest.mark.gpu
def test_train_py_compiled_on_the_gpu_scores_hellaswag_without_recompiling(tmp_path, enc):
    """compile_mode=auto on one GPU: compiled blocks and a recorded CUDA graph of the step; the
    HellaSwag evals in between run the same blocks eagerly (no recompiles, the graph intact) and
    log the final checkpoint's acc_norm."""
    make_dataset(tmp_path, meta=False)
    examples = synthetic(40, seed=5)
    path = write_jsonl(tmp_path / "items.jsonl", examples)
    args = [a for a in TINY if a not in ("--device=cpu", "--compile=False")]
    args += ["--device=cuda", "--compile=True", "--dtype=float32", "--max_iters=6", "--eval_interval=3"]
    args += ["--gradient_accumulation_steps=1", f"--hellaswag_file={path}", "--hellaswag_interval=2", "--out_dir=out"]
    proc = run_train(tmp_path, *args)
    assert "each block compiled, micro-step replayed as a CUDA graph" in proc.stdout
    assert "recompil" not in proc.stdout + proc.stderr
    rows = list(csv.DictReader(open(tmp_path / "out" / "train_log.csv", newline="")))
    logged = [(int(r["iter"]), float(r["hellaswag"])) for r in rows if r["hellaswag"]]
    assert [it for it, _ in logged] == [0, 2, 4, 6]
    final = checkpoint.model_from(checkpoint.load(str(tmp_path / "out" / "ckpt.pt"))).cuda().eval()
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True  # as train.py sets it: the same kernels, the same sums
    try:
        want = hellaswag.evaluate(final, hellaswag.tokenize(examples, enc), "cuda", nullcontext())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    assert logged[-1][1] == pytest.approx(want["acc_norm"], abs=1e-6)


OLD_LOG = "iter,loss,val_loss,lr,time_ms,mfu\n0,3.5,3.6,0.001,,\n0,3.4,,0.001,12.50,\n1,3.2,,0.002,11.00,\n"


def test_old_logs_still_read_and_a_resumed_run_extends_their_header(tmp_path):
    (tmp_path / "train_log.csv").write_text(OLD_LOG)
    assert training_log.read_log(tmp_path / "train_log.csv") == ([(0, 3.4), (1, 3.2)], [(0, 3.5, 3.6)], [])
    log = training_log.TrainingLog(str(tmp_path), truncate=False, say=print, resumed_at=1)
    log.step_row(1, 3.1, 0.002, 0.01, -1.0)
    log.hellaswag_row(1, 0.25)
    log.wait()
    lines = (tmp_path / "train_log.csv").read_text().splitlines()
    assert lines == ["iter,loss,val_loss,lr,time_ms,mfu,hellaswag", "0,3.5,3.6,0.001,,,", "0,3.4,,0.001,12.50,,",
                     "1,3.1,,0.002,10.00,,", "1,,,,,,0.250000"]  # fmt: skip
    assert training_log.read_log(tmp_path / "train_log.csv") == ([(0, 3.4), (1, 3.1)], [(0, 3.5, 3.6)], [(1, 0.25)])
    training_log.TrainingLog(str(tmp_path), truncate=False, say=print)  # a log of this version is left as it is
    assert (tmp_path / "train_log.csv").read_text().splitlines() == lines
    training_log.TrainingLog(str(tmp_path), truncate=False, say=print, resumed_at=1)  # iter 1 redone, HellaSwag too
    assert (tmp_path / "train_log.csv").read_text().splitlines() == lines[:3]
