"""The CPU thread policy: --threads / TINYDAE_THREADS set numba's and OpenBLAS's pools."""
import ctypes
import subprocess
import sys
from pathlib import Path

import numba
import pytest

from tinydae import threads
from tinydae.errors import ConfigError


def _openblas_threads():
    paths = [line.split()[-1] for line in open("/proc/self/maps") if "openblas" in line.lower()]
    for path in paths:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads"):
            if hasattr(lib, name):
                return getattr(lib, name)()
    pytest.skip("NumPy here does not use OpenBLAS")


def test_set_threads_sets_both_pools():
    before = numba.get_num_threads()
    try:
        got = threads.set_threads(1)
        assert got["threads"] == 1 and numba.get_num_threads() == 1
        if got["openblas"]:
            assert _openblas_threads() == 1
        if threads.cores() > 1 and numba.config.NUMBA_NUM_THREADS > 1:
            threads.set_threads(2)
            assert numba.get_num_threads() == 2
            if got["openblas"]:
                assert _openblas_threads() == 2
    finally:
        threads.set_threads(before)


@pytest.mark.parametrize("load, cores, expect", [(0.0, 2, 2), (1.0, 2, 1), (0.6, 2, 1), (0.4, 2, 2),
                                                 (5.0, 2, 1), (1.2, 8, 7)])
def test_auto_leaves_the_loaded_cores(monkeypatch, load, cores, expect):
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(threads, "cores", lambda: cores)
    assert threads.auto_threads() == expect


@pytest.mark.parametrize("bad", ["0", "-1", "x", "1.5", ""])
def test_bad_values_are_refused(bad):
    with pytest.raises(ConfigError, match="threads must be"):
        threads.parse_threads(bad)


def test_cli_option_and_env():
    base = [sys.executable, str(Path(__file__).resolve().parents[1] / "cli.py")]
    r = subprocess.run(base + ["--threads", "0", "info"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: threads must be") and "Traceback" not in r.stderr
    r = subprocess.run(base + ["info", "--json"], capture_output=True, text=True,
                       env={**__import__("os").environ, "TINYDAE_THREADS": "nope"})
    assert r.returncode == 2 and "threads must be" in r.stderr
    r = subprocess.run(base + ["--threads", "1", "gradcheck", "--hidden", "3"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
