"""bench.py as a CPU smoke test: it runs on real and random tokens and reports consistent figures."""

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import make_dataset

BENCH = [sys.executable, str(Path(__file__).resolve().parent.parent / "bench.py")]
SMALL = ["--device=cpu", "--compile=False", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16"]
SMALL += ["--batch_size=4", "--num_steps=2", "--burn_in=1", "--repeats=2"]


@pytest.mark.parametrize("real", [True, False])
def test_bench_reports_time_tokens_and_a_sane_loss(tmp_path, real):
    make_dataset(tmp_path)
    args = ["--dataset=tiny", "--vocab_size=32"] if real else ["--real_data=False", "--vocab_size=97"]
    proc = subprocess.run([*BENCH, *SMALL, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ms, tokens_per_s = re.search(r"time per iteration: ([0-9.]+) ms .*?, ([0-9,]+) tokens/s", proc.stdout).groups()
    # tokens/s is batch_size * block_size over the median step time
    # (printed rounded to a whole token: a slow machine's few tokens/s lose up to 0.5 to it)
    assert float(tokens_per_s.replace(",", "")) == pytest.approx(4 * 16 / (float(ms) / 1000), rel=0.01, abs=0.5)
    losses = [float(x) for x in re.findall(r"loss ([0-9.]+)", proc.stdout)]
    vocab = 32 if real else 97
    assert len(losses) == 2 and all(abs(x - math.log(vocab)) < 0.5 for x in losses)  # near uniform at init


def test_bench_sample_reports_both_batches(tmp_path):
    """Without --compile, sampling runs uncompiled, as sample.py does (its default, not train.py's)."""
    args = ["--device=cpu", "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16"]
    args += ["--vocab_size=64", "--sample=True", "--max_new_tokens=20", "--repeats=1"]
    proc = subprocess.run([*BENCH, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "plan: cpu float32, not compiled, masked-softmax attention" in proc.stdout
    pattern = r"sampling (\d+) x 20 tokens: ([0-9,]+) tokens/s \(([0-9.]+) ms per step\), first token"
    lines = re.findall(pattern, proc.stdout)
    assert [rows for rows, _, _ in lines] == ["1", "10"]
    for rows, rate, ms in lines:  # tokens/s is the rows' tokens over the steps' time
        assert float(rate.replace(",", "")) == pytest.approx(int(rows) * 1000 / float(ms), rel=0.01, abs=0.5)
