"""Shared test fixtures: where the offline data lives, and GPU skipping."""

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# The scripts and model.py live at the repository root, as in nanoGPT (the package nanogpt_plus beside them is
# installed, and importable from here too).
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# tiktoken reads its BPE files from this cache instead of the network. A path given relative to the
# folder the tests were started in is made absolute: many tests run scripts from other folders.
_cache = SHARED_DATA / "tiktoken_cache"
if "TIKTOKEN_CACHE_DIR" not in os.environ and _cache.is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(_cache)
for _name in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
    if os.environ.get(_name):
        os.environ[_name] = os.path.abspath(os.environ[_name])


def pytest_configure(config):
    """Under pytest-xdist (-n N) each worker, and every script it starts, gets an equal share of the
    cores: N workers each running as many threads as there are cores would fight over them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shakespeare_input() -> Path:
    """The offline copy of Tiny Shakespeare that CI has beside the clone."""
    path = SHARED_DATA / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        pytest.skip(f"offline data missing: {path} (see ../shared/data/README.md)")
    return path


# ---------------------------------------------------------------------------- small runs for the one-line errors


@pytest.fixture(scope="session")
def base(tmp_path_factory):
    """data/tiny (vocab 32), data/wide (vocab 64) and out/ckpt.pt of a 2-step run on data/tiny (tests that
    change it take a copy: work)."""
    from test_train import make_dataset
    from user_errors import run_here

    root = tmp_path_factory.mktemp("base")
    make_dataset(root)
    make_dataset(root, name="wide", vocab=64)
    proc = run_here("train", root, ["--out_dir=out", "--max_iters=2", "--eval_interval=2"])
    assert proc.returncode == 0, proc.stderr
    (root / "out" / "train_log.csv").unlink()  # so that a resumed run's log is a new file, not a change
    return root


@pytest.fixture
def work(base, tmp_path):
    folder = tmp_path / "w"
    shutil.copytree(base, folder)
    return folder


@pytest.fixture
def run_dirs(tmp_path):
    """runs/a/ckpt.pt (a character-level model on data/toy) beside runs/b, a folder of the user's."""
    from test_export_hf import save_checkpoint, small_model, write_meta

    write_meta(tmp_path)
    save_checkpoint(tmp_path, small_model(), dataset="toy")
    (tmp_path / "runs").mkdir()
    (tmp_path / "out").rename(tmp_path / "runs" / "a")
    (tmp_path / "runs" / "b").mkdir()
    (tmp_path / "runs" / "b" / "notes.txt").write_text("mine")
    return tmp_path


@pytest.fixture
def exported(run_dirs, monkeypatch):
    """run_dirs with hf/, the export of runs/a."""
    from user_errors import run_in_process

    assert run_in_process(REPO / "export_hf.py", run_dirs, ["--out_dir=runs/a", "--hf_dir=hf"], monkeypatch) is None
    return run_dirs


def pytest_collection_modifyitems(config, items):
    # the tests that run for minutes go first: under -n 2 the other worker runs the rest meanwhile,
    # where at their place in the order (test_train.py comes last) they would end the run alone
    items.sort(key=lambda item: "longest" not in item.keywords)  # (a stable sort: the rest keep their order)
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
