"""bench.py as a CPU smoke test: it runs on real and random tokens and reports consistent figures."""

import math
import re

import pytest
import torch
from test_train import make_dataset
from user_errors import BENCH_ARGS, REPO, assert_one_line, case_id, check_bad_input, run_here, run_in_process

BENCH = REPO / "bench.py"  # run in this process (user_errors.run_here: the same output and exit status)
SMALL = ["--device=cpu", "--compile=False", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16"]
SMALL += ["--batch_size=4", "--num_steps=2", "--burn_in=1", "--repeats=2"]


@pytest.mark.parametrize("real", [True, False])
def test_bench_reports_time_tokens_and_a_sane_loss(tmp_path, real):
    make_dataset(tmp_path)
    args = ["--dataset=tiny", "--vocab_size=32"] if real else ["--real_data=False", "--vocab_size=97"]
    proc = run_here(BENCH, tmp_path, [*SMALL, *args])
    assert proc.returncode == 0, proc.stderr
    ms, tokens_per_s = re.search(r"time per iteration: ([0-9.]+) ms .*?, ([0-9,]+) tokens/s", proc.stdout).groups()
    # tokens/s is batch_size * block_size over the median step time
    # (printed rounded to a whole token: a slow machine's few tokens/s lose up to 0.5 to it)
    assert float(tokens_per_s.replace(",", "")) == pytest.approx(4 * 16 / (float(ms) / 1000), rel=0.01, abs=0.5)
    losses = [float(x) for x in re.findall(r"loss ([0-9.]+)", proc.stdout)]
    vocab = 32 if real else 97
    assert len(losses) == 2 and all(abs(x - math.log(vocab)) < 0.5 for x in losses)  # near uniform at init


def test_bench_times_the_muon_step(tmp_path, monkeypatch, capsys):
    """--optimizer=muon times train.py --optimizer=muon's step: each step, burn-in and timed ones, steps
    Muon (the blocks' matrices) and AdamW (the rest), and the figures are as consistent as AdamW's."""
    from nanogpt_plus import muon

    calls = []

    def counted(cls):
        step = cls.step

        def counting_step(self, *args, **kwargs):
            calls.append(cls)
            return step(self, *args, **kwargs)

        return counting_step

    for cls in (muon.Muon, torch.optim.AdamW):
        monkeypatch.setattr(cls, "step", counted(cls))
    args = [*SMALL, "--real_data=False", "--vocab_size=97", "--optimizer=muon"]
    assert run_in_process(BENCH, tmp_path, args, monkeypatch) is None
    out = capsys.readouterr().out
    assert "optimizer: Muon for the blocks' matrices, AdamW for the rest\n" in out
    assert calls == [torch.optim.AdamW, muon.Muon] * (1 + 2 * 2)  # burn-in 1, repeats 2 of num_steps 2
    ms, tokens_per_s = re.search(r"time per iteration: ([0-9.]+) ms .*?, ([0-9,]+) tokens/s", out).groups()
    assert float(tokens_per_s.replace(",", "")) == pytest.approx(4 * 16 / (float(ms) / 1000), rel=0.01, abs=0.5)
    losses = [float(x) for x in re.findall(r"loss ([0-9.]+)", out)]
    assert len(losses) == 2 and all(abs(x - math.log(97)) < 0.5 for x in losses)


def test_bench_sample_reports_both_batches(tmp_path):
    """Without --compile, sampling runs uncompiled, as sample.py does (its default, not train.py's)."""
    args = ["--device=cpu", "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16"]
    args += ["--vocab_size=64", "--sample=True", "--max_new_tokens=20", "--repeats=1"]
    proc = run_here(BENCH, tmp_path, args)
    assert proc.returncode == 0, proc.stderr
    assert "plan: cpu float32, not compiled, masked-softmax attention" in proc.stdout
    pattern = r"sampling (\d+) x 20 tokens: ([0-9,]+) tokens/s \(([0-9.]+) ms per step\), first token"
    lines = re.findall(pattern, proc.stdout)
    assert [rows for rows, _, _ in lines] == ["1", "10"]
    for rows, rate, ms in lines:  # tokens/s is the rows' tokens over the steps' time
        assert float(rate.replace(",", "")) == pytest.approx(int(rows) * 1000 / float(ms), rel=0.01, abs=0.5)


# ---------------------------------------------------------------------------- one-line errors

# (id, args, setup, phrase in the message, extra env)
ERROR_CASES = [
    (
        "bench-dataset-missing",
        ["--dataset=nope"],
        None,
        "data/nope/train.bin is missing; check --dataset, or make "
        "it from your text: python data/prepare_text.py FILE --name nope (there is no data/nope/prepare.py)",
        None,
    ),
    ("bench-bins-too-short", ["--dataset=tiny", "--block_size=8000"], None, "fewer than block_size", None),
    ("bench-unknown-dtype", ["--dtype=half", "--real_data=False"], None, "unknown dtype 'half'", None),
    ("bench-vocab-too-small", ["--dataset=tiny", "--vocab_size=8"], None, "holds token id 31", None),
    ("bench-compile_mode", ["--compile=True", "--compile_mode=fast"], None, "compile_mode='fast'", None),
]


@pytest.mark.parametrize("name, args, setup, phrase, env", ERROR_CASES, ids=[case_id(c) for c in ERROR_CASES])
def test_bad_input_is_one_clear_line_and_harmless(work, name, args, setup, phrase, env):
    check_bad_input(work, "bench", args, setup, phrase, env)


@pytest.mark.parametrize(
    "args, phrase",
    [
        (["--repeats=0"], "repeats=0 must be at least 1"),
        (["--batch_size=0"], "batch_size=0 must be at least 1"),
        (["--num_steps=0"], "num_steps=0 must be at least 1"),
        (["--burn_in=-1"], "burn_in=-1 must not be negative"),
        (["--optimizer=sgd"], "unknown optimizer='sgd': use adamw (nanoGPT's) or muon"),
        (["--n_head=3"], "n_embd=16 is not divisible by n_head=3"),
        (["--block_size=0"], "block_size=0 must be at least 1"),
        (["--seed=-18446744073709551616"], "seed=-18446744073709551616 is out of range"),
        (["--sample=True", "--max_new_tokens=0"], "max_new_tokens=0 must be at least 1 with --sample=True"),
        (["--sample=True", "--max_new_tokens=-1"], "max_new_tokens=-1 must be at least 1 with --sample=True"),
        (["--sample=True", f"--max_new_tokens={2**63 - 1}"], f"max_new_tokens={2**63 - 1} must be at least 1"),
        ([f"--batch_size={2**64}"], f"batch_size={2**64} is out of range: give a number from -2**63 to 2**63 - 1"),
        (["--burn_in=0"], None),  # (BENCH_ARGS's own: a timed step without a burn-in)
    ],
)
def test_bench_keys_are_checked_before_it_runs(tmp_path, monkeypatch, capsys, args, phrase):
    message = run_in_process(REPO / "bench.py", tmp_path, [*BENCH_ARGS, "--real_data=False", *args], monkeypatch)
    if phrase is None:
        assert message is None and "time per iteration" in capsys.readouterr().out
    else:
        assert_one_line(message, phrase)


# ---------------------------------------------------------------------------- on a CPU: no compiling unasked, no CUDA

BENCH_ON_CPU = [a for a in BENCH_ARGS if not a.startswith("--compile=")] + ["--real_data=False", "--burn_in=1"]


@pytest.fixture
def compiled_models(monkeypatch):
    """The models torch.compile was asked to compile (each left as it is: the tests count the calls, not
    the compiler's speed)."""
    models = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *args, **kwargs: models.append(self))
    return models


def test_bench_on_a_cpu_compiles_only_when_asked_and_says_so_first(tmp_path, monkeypatch, capsys, compiled_models):
    """As train.py's CPU recipe, no compiling on a CPU unless --compile=True is given; then one line says
    so before the first (compiling) step, which the burn-in's line counts as compilation."""
    assert run_in_process(REPO / "bench.py", tmp_path, BENCH_ON_CPU, monkeypatch) is None
    out = capsys.readouterr().out
    assert "plan: cpu float32, not compiled, " in out and compiled_models == []
    assert "compil" not in out.replace("not compiled", "")
    assert run_in_process(REPO / "bench.py", tmp_path, [*BENCH_ON_CPU, "--compile=True"], monkeypatch) is None
    lines = capsys.readouterr().out.splitlines()
    assert "plan: cpu float32, model compiled (mode default), " in "\n".join(lines) and len(compiled_models) == 1
    said = lines.index("compiling the model at its first call (torch.compile; minutes on a CPU)...")
    assert lines[said + 1].startswith("burn-in: 1 steps in ") and lines[said + 1].endswith(" s (compilation included)")


@pytest.mark.parametrize("compile", [[], ["--compile=True"]])
def test_bench_sample_on_a_cpu_speaks_of_no_cuda_graphs(tmp_path, monkeypatch, capsys, compiled_models, compile):
    args = [*BENCH_ON_CPU, "--sample=True", "--max_new_tokens=4", *compile]
    assert run_in_process(REPO / "bench.py", tmp_path, args, monkeypatch) is None
    out = capsys.readouterr().out
    assert "plan: cpu float32, " in out and "CUDA" not in out and "graph" not in out
    lines = [line for line in out.splitlines() if line.startswith("sampling ")]
    first_call = "; the first call, which compiles: " if compile else "; the first call: "
    assert len(lines) == 2 and all(first_call in line for line in lines), lines
