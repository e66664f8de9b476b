"""What `pip install -e .` leaves in the environment: the dependencies and the package nanogpt_plus, and none
of the scripts' modules (model, train, plot, ...: generic names)."""

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

MODULES = sorted(p.stem for p in REPO.glob("*.py"))


def test_the_install_puts_the_package_and_no_script_of_ours_on_the_path(tmp_path):
    # run from elsewhere, where only site-packages could hold them (an editable install maps names there);
    # the checkout itself on PYTHONPATH (a way to run the tests without installing) is left out
    kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != REPO]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(kept))
    probe = (
        "import importlib.metadata as m, importlib.util as u, json\n"
        f"print([name for name in {MODULES!r} if u.find_spec(name)])\n"
        "try:\n"
        "    print(json.loads(m.distribution('nanogpt-plus').read_text('direct_url.json'))['url'])\n"
        "except (m.PackageNotFoundError, TypeError):\n"
        "    print('-')\n"
        "spec = u.find_spec('nanogpt_plus')\n"
        "print(spec and spec.submodule_search_locations[0])\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    scripts, installed_from, package = proc.stdout.splitlines()
    assert "model" in MODULES and "train" in MODULES
    assert scripts == "[]", f"importable from outside the checkout: {scripts}"
    if installed_from == REPO.as_uri():  # this checkout is the one installed (as CI does): its package comes along
        assert Path(package).name == "nanogpt_plus", package
