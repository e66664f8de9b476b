"""sample.py: every mistake is one `error:` line that leaves what the user had untouched: bad flags and prompts,
a seed out of range, a meta.pkl that is not the model's (export_hf.py too) or is missing."""

import pickle
import re
import shutil
from pathlib import Path

import pytest
from user_errors import (
    REPO,
    assert_one_line,
    case_id,
    check_bad_input,
    run_here,
    run_in_process,
    snapshot,
    truncate_file,
)

# (id, args, setup, phrase in the message, extra env)
CASES = [
    ("sample-no-ckpt", ["--out_dir=empty"], None, "no checkpoint at empty", None),
    ("sample-ckpt-truncated", ["--out_dir=out"], truncate_file("out/ckpt.pt"), "truncated or corrupt", None),
    ("sample-prompt-chars", ["--out_dir=out", "--start=zz~"], None, "vocabulary lacks: 'z', '~'", None),
    (
        "sample-prompt-file",
        ["--out_dir=out", "--start=FILE:nowhere.txt"],
        None,
        "prompt file nowhere.txt not found",
        None,
    ),
    ("sample-max_new_tokens", ["--max_new_tokens=-1"], None, "max_new_tokens=-1 must be 0 or more", None),
    ("sample-max_new_tokens-huge", [f"--max_new_tokens={2**62}"], None, "and below 2**62", None),
    ("sample-unknown-key", ["--temprature=0"], None, "did you mean 'temperature'", None),
]


@pytest.mark.parametrize("name, args, setup, phrase, env", CASES, ids=[case_id(c) for c in CASES])
def test_bad_input_is_one_clear_line_and_harmless(work, name, args, setup, phrase, env):
    check_bad_input(work, "sample", args, setup, phrase, env)


def write_toy_meta(root: Path, itos, vocab_size=None):
    meta = {"vocab_size": len(itos) if vocab_size is None else vocab_size, "itos": dict(enumerate(itos))}
    meta["stoi"] = {ch: i for i, ch in enumerate(itos)}
    with open(root / "data" / "toy" / "meta.pkl", "wb") as f:
        pickle.dump(meta, f)


@pytest.mark.parametrize(
    "seed, ok", [(2**64, False), (-(2**63) - 1, False), (2**64 - 1, True), (-1, True), (1337, True)]
)
def test_sample_seed_beyond_64_bits_is_one_line(run_dirs, monkeypatch, capsys, seed, ok):
    args = ["--out_dir=runs/a", "--device=cpu", f"--seed={seed}", "--start=0", "--num_samples=1", "--max_new_tokens=2"]
    message = run_in_process(REPO / "sample.py", run_dirs, args, monkeypatch)
    if ok:
        assert message is None
    else:
        assert_one_line(message, f"seed={seed} is out of range: give an integer from 0 to 2**64 - 1")


@pytest.mark.parametrize("script", ["sample.py", "export_hf.py"])
@pytest.mark.parametrize(
    "itos, phrase",
    [  # the model has 40 tokens
        ([chr(65 + i) for i in range(18)], "data/toy/meta.pkl has 18 characters but the model has 40 tokens"),
        ([bytes([48 + i]) for i in range(40)], "data/toy/meta.pkl is not a character vocabulary"),
    ],
    ids=["prepared-again", "bytes"],
)
def test_a_meta_pkl_that_does_not_fit_the_model_is_one_line(run_dirs, monkeypatch, script, itos, phrase):
    write_toy_meta(run_dirs, itos)
    before = snapshot(run_dirs)
    args = ["--out_dir=runs/a", "--device=cpu"] if script == "sample.py" else ["--out_dir=runs/a"]
    assert_one_line(run_in_process(REPO / script, run_dirs, args, monkeypatch), phrase)
    assert snapshot(run_dirs) == before


@pytest.mark.parametrize("script", ["sample.py", "export_hf.py"])
def test_a_meta_pkl_whose_stoi_is_not_its_itos_inverse_is_one_line(run_dirs, monkeypatch, script):
    """Valid pickle, the right keys and sizes, but stoi gives an id the model lacks: encoding the prompt would."""
    chars = [chr(65 + i) for i in range(40)]  # the model has 40 tokens
    write_toy_meta(run_dirs, chars)
    with open(run_dirs / "data" / "toy" / "meta.pkl", "rb") as f:
        meta = pickle.load(f)
    meta["stoi"]["A"] = 99
    with open(run_dirs / "data" / "toy" / "meta.pkl", "wb") as f:
        pickle.dump(meta, f)
    before = snapshot(run_dirs)
    args = ["--out_dir=runs/a", "--device=cpu", "--start=A"] if script == "sample.py" else ["--out_dir=runs/a"]
    message = run_in_process(REPO / script, run_dirs, args, monkeypatch)
    assert_one_line(message, "data/toy/meta.pkl is not a character vocabulary (its stoi does not invert its itos)")
    assert snapshot(run_dirs) == before


@pytest.mark.parametrize("source", ["checkpoint", "hf"])
def test_sample_a_character_model_without_its_meta_pkl_is_one_line(exported, monkeypatch, source):
    """GPT-2's tokenizer on a 40-token model would print other text than the model means. (The folder without
    the chars.json that export_hf.py writes beside the weights.)"""
    shutil.rmtree(exported / "data")
    (exported / "hf" / "chars.json").unlink()
    args = ["--out_dir=runs/a"] if source == "checkpoint" else ["--init_from=hf"]
    message = run_in_process(REPO / "sample.py", exported, [*args, "--device=cpu", "--start=!"], monkeypatch)
    missing = "no data/toy/meta.pkl was found" if source == "checkpoint" else "no meta.pkl or chars.json says what"
    assert_one_line(message, f"the model has 40 tokens, too few for GPT-2's, and {missing}")


@pytest.mark.parametrize("batch_samples", [False, True])
def test_no_new_tokens_with_verbose_prints_the_prompt_and_the_count(work, batch_samples):
    """--max_new_tokens=0 --verbose: each sample is the prompt alone, and the count of tokens is 0."""
    args = ["--out_dir=out", "--start=123", "--num_samples=2", "--max_new_tokens=0", "--verbose=True"]
    proc = run_here("sample", work, [*args, f"--batch_samples={batch_samples}"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.endswith("123\n---------------\n" * 2)
    assert re.fullmatch(r"0 tokens in [\d.]+ s \(0 tokens/s, one (batch|sample at a time)\)\n", proc.stderr)
