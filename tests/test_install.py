"""What `pip install -e .` leaves in the environment: the dependencies, and none of the scripts' modules."""

import subprocess
import sys

from conftest import REPO

MODULES = sorted(p.stem for p in REPO.glob("*.py"))


def test_the_install_puts_no_module_of_ours_on_the_path(tmp_path):
    # run from elsewhere, where only site-packages could hold them (an editable install maps names there)
    probe = f"import importlib.util as u; print([m for m in {MODULES!r} if u.find_spec(m)])"
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "model" in MODULES and "train" in MODULES
    assert out.stdout.strip() == "[]", f"importable from outside the checkout: {out.stdout}"
