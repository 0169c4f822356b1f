"""The import name: kernels/ installs as tinydae.kernels, never as a top-level ``kernels``
(an unrelated PyPI distribution owns that name), and every way of running tinydae finds it:
a regular install, an editable install (this test session's) and a bare checkout
(PYTHONPATH=., as on the offline GPU machines)."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import importlib.util, sys
import tinydae, tinydae.kernels.cpu, tinydae.kernels.reference
print(tinydae.kernels.__file__)
print(importlib.util.find_spec("kernels") is not None)
"""


def _probe(cwd, env_extra):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(env_extra)
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    kernels_file, top_level = r.stdout.split()
    return Path(kernels_file), top_level == "True"


def test_editable_install_maps_kernels_without_a_top_level_name(tmp_path):
    kernels_file, top_level = _probe(tmp_path, {})
    assert kernels_file == ROOT / "kernels" / "__init__.py"
    assert not top_level, "a top-level 'kernels' module is importable outside the checkout"


def test_bare_checkout_on_pythonpath(tmp_path):
    """No install at all: tinydae/__init__.py loads the checkout's kernels/ as tinydae.kernels."""
    env = {"PYTHONPATH": str(ROOT), "PYTHONNOUSERSITE": "1"}
    r = subprocess.run([sys.executable, "-S", "-c",
                        "import sys; sys.path.append(%r)\n" % _site_packages() + PROBE],
                       cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.split()[0]) == ROOT / "kernels" / "__init__.py"


def _site_packages():
    """numpy & co. without the .pth files (-S) that would put the editable finder in place."""
    import numpy
    return str(Path(numpy.__file__).parents[1])


@pytest.mark.slow
def test_regular_install_and_wheel(tmp_path):
    """pip install (not editable) into a target folder: tinydae/kernels/ is there, kernels/ is
    not, and the installed copy imports from a directory outside the checkout."""
    # Built from a copy: setuptools writes build/ and *.egg-info into the source folder.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "runs", "build", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache"))
    wheel_dir = tmp_path / "wheel"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                        "-q", "-w", str(wheel_dir), str(src)], capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0 and ("No matching distribution" in r.stderr or "connection" in r.stderr.lower()):
        pytest.skip(f"cannot build a wheel offline here: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    (wheel,) = wheel_dir.glob("tinydae-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tinydae/kernels/cpu.py" in names and "tinydae/kernels/__init__.py" in names
    assert not [n for n in names if n.startswith("kernels/")], names
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                        str(target), str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    env = {"PYTHONPATH": str(target)}
    r = subprocess.run([sys.executable, "-S", "-c", "import sys; sys.path.append(%r)\n"
                        % _site_packages() + PROBE], cwd=tmp_path, env={**os.environ, **env},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    kernels_file, top_level = Path(r.stdout.split()[0]), r.stdout.split()[1] == "True"
    assert kernels_file == target / "tinydae" / "kernels" / "__init__.py"
    assert not top_level
