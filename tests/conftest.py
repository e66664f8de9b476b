"""Shared test fixtures: where the offline data lives, and GPU skipping."""

import os
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
