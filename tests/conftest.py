"""Shared test fixtures: where the offline data lives, and GPU skipping."""

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# Scripts and modules live at the repository root, as in nanoGPT.
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


@pytest.fixture(scope="session")
def shakespeare_input() -> Path:
    """The offline copy of Tiny Shakespeare that CI has beside the clone."""
    path = SHARED_DATA / "tinyshakespeare" / "input.txt"
    if not path.is_file():
        pytest.skip(f"offline data missing: {path} (see ../shared/data/README.md)")
    return path


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
