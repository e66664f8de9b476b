"""bytecode_cache: a private bytecode cache for packages installed without .pyc files."""

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import REPO

SOURCES = {  # a stand-in for torch: a package with a subpackage and a tests folder
    "fakepkg/__init__.py": "from . import sub\n",
    "fakepkg/top.py": "X = 1\n",
    "fakepkg/sub/__init__.py": "",
    "fakepkg/sub/mod.py": "Y = 2\n",
    "fakepkg/tests/test_it.py": "Z = 3\n",
}


def make_package(root: Path) -> Path:
    for rel, text in SOURCES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "fakepkg"


def run_python(code: str, pkgs: Path, **env) -> str:
    full_env = dict(os.environ, PYTHONPATH=f"{pkgs}{os.pathsep}{REPO}", PYTHONDONTWRITEBYTECODE="1")
    full_env.pop("PYTHONPYCACHEPREFIX", None)
    full_env.update(NANOGPT_BYTECODE_CACHE="0", **env)  # only the calls under test act
    result = subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def cached(cache: Path, pkg: Path, rel: str) -> bool:
    """Whether Python's prefix layout (the source's absolute folder under the cache) holds rel's bytecode."""
    mirrored = cache / str(pkg.resolve() / rel).lstrip(os.sep)  # e.g. cache/tmp/.../fakepkg/sub/mod.py
    return any(mirrored.parent.glob(mirrored.stem + ".*.pyc"))


USE = (
    "import sys, bytecode_cache\n"
    "ok = bytecode_cache.use_private_cache({cache!r}, packages=('fakepkg',), start_precompiler=False)\n"
    "import fakepkg.sub.mod\n"
    "print(ok, sys.pycache_prefix, sys.dont_write_bytecode)\n"
)


def test_imports_write_to_the_cache_when_the_package_has_no_bytecode(tmp_path):
    pkg = make_package(tmp_path / "pkgs")
    cache = tmp_path / "cache"
    out = run_python(USE.format(cache=str(cache)), tmp_path / "pkgs")
    assert out == f"True {cache} False"
    for rel in ("__init__.py", "sub/__init__.py", "sub/mod.py"):
        assert cached(cache, pkg, rel), rel
    assert not cached(cache, pkg, "top.py")  # never imported, not precompiled here
    assert not list(pkg.rglob("__pycache__")), "nothing may be written beside the sources"


def test_leaves_python_alone_when_bytecode_is_beside_the_sources(tmp_path):
    pkg = make_package(tmp_path / "pkgs")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(pkg)], check=True)
    cache = tmp_path / "cache"
    assert run_python(USE.format(cache=str(cache)), tmp_path / "pkgs") == "False None True"
    assert not cache.exists()


def test_leaves_a_prefix_the_user_chose(tmp_path):
    make_package(tmp_path / "pkgs")
    theirs = tmp_path / "theirs"
    out = run_python(USE.format(cache=str(tmp_path / "cache")), tmp_path / "pkgs", PYTHONPYCACHEPREFIX=str(theirs))
    assert out == f"False {theirs} True"


def test_refuses_a_cache_folder_others_can_write(tmp_path):
    make_package(tmp_path / "pkgs")
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)  # bytecode another user could plant there would be run
    assert run_python(USE.format(cache=str(cache)), tmp_path / "pkgs") == "False None True"


def precompiler_env(cache: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), NANOGPT_BYTECODE_CACHE="0", PYTHONPYCACHEPREFIX=str(cache))


def run_precompiler(marker: Path, pkg: Path, env: dict) -> subprocess.CompletedProcess:
    script = [sys.executable, str(REPO / "bytecode_cache.py"), str(marker), str(pkg)]
    return subprocess.run(script, env=env, capture_output=True, text=True, timeout=120)


def test_precompiler_fills_the_cache_shallow_files_first_and_marks_it_done(tmp_path):
    pkg = make_package(tmp_path / "pkgs")
    cache = tmp_path / "cache"
    code = (
        "import sys, bytecode_cache\n"
        "print(bytecode_cache.precompile_marker(sys.argv[1], [sys.argv[2]]))\n"
        "print(*[p.split('fakepkg')[1] for p in bytecode_cache.sources_in_import_order([sys.argv[2]])])\n"
    )
    listing = subprocess.run(
        [sys.executable, "-c", code, str(cache), str(pkg)], env=precompiler_env(cache), capture_output=True, text=True
    ).stdout.split("\n")
    marker = Path(listing[0])
    assert listing[1].split() == ["/__init__.py", "/top.py", "/sub/__init__.py", "/sub/mod.py"]  # tests/ skipped

    cache.mkdir()
    with open(str(marker) + ".lock", "a") as held:  # another precompiler at work: this one leaves
        fcntl.flock(held, fcntl.LOCK_EX)
        assert run_precompiler(marker, pkg, precompiler_env(cache)).returncode == 0
        assert not marker.exists() and not cached(cache, pkg, "top.py")
    assert run_precompiler(marker, pkg, precompiler_env(cache)).returncode == 0
    assert marker.exists()
    for rel in ("__init__.py", "top.py", "sub/__init__.py", "sub/mod.py"):
        assert cached(cache, pkg, rel), rel
    assert not cached(cache, pkg, "tests/test_it.py")
    assert not list(pkg.rglob("__pycache__"))


def test_precompiler_refuses_to_write_beside_the_sources(tmp_path):
    pkg = make_package(tmp_path / "pkgs")
    env = precompiler_env(tmp_path / "cache")
    del env["PYTHONPYCACHEPREFIX"]
    result = run_precompiler(tmp_path / "marker", pkg, env)
    assert result.returncode != 0 and "PYTHONPYCACHEPREFIX" in result.stderr
    assert not list(pkg.rglob("__pycache__"))


def test_the_background_precompiler_is_started_and_finishes(tmp_path):
    pkg = make_package(tmp_path / "pkgs")
    cache = tmp_path / "cache"
    started = USE.replace("start_precompiler=False", "start_precompiler=True").replace("import fakepkg.sub.mod\n", "")
    assert run_python(started.format(cache=str(cache)), tmp_path / "pkgs") == f"True {cache} False"
    deadline = time.monotonic() + 60
    while not [m for m in cache.glob("precompiled-*") if m.suffix != ".lock"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [m for m in cache.glob("precompiled-*") if m.suffix != ".lock"], "the precompiler never finished"
    assert cached(cache, pkg, "top.py") and cached(cache, pkg, "sub/mod.py")  # compiled, never imported
