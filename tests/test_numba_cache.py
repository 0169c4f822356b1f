"""Issue 19, caches: a numba on-disk cache entry written while the kernels were imported under
another module name (`import kernels.cpu` from the checkout's root, or a tinydae from before the
`tinydae.kernels` rename) is dropped and compiled again, never a crash.  numba keys its cache by
source file, not module name, and a cached kernel refers to its module: before the fix, the
second import below failed with ModuleNotFoundError: No module named 'kernels'.

Run on a copy of kernels/ in a temporary folder, so the checkout's own cache stays warm."""
import os
import shutil
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CALL = """
import sys
import numpy as np
root, mode = sys.argv[1], sys.argv[2]
if mode == "top":
    sys.path.insert(0, root + "/k")
    import kernels.cpu as K
else:
    sys.path.insert(0, root + "/k2")
    import alias.kernels.cpu as K
p = np.ones(1000, np.float32)
K.sgd_update(p, p * 0.5, np.zeros_like(p), 0.1, 0.9, False, 0.0)
print(K.__name__, float(p[0]))
"""


def test_a_cache_entry_of_another_module_name_is_recompiled_not_a_crash(tmp_path):
    shutil.copytree(os.path.join(ROOT, "kernels"), tmp_path / "k" / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__"))
    alias = tmp_path / "k2" / "alias"
    alias.mkdir(parents=True)
    (alias / "__init__.py").write_text(f"__path__ = [{str(tmp_path / 'k')!r}]\n")  # alias.kernels = the same files
    outputs = []
    for mode in ("top", "alias", "top"):  # each import name finds the other's cache entries
        # from tmp_path, with no PYTHONPATH: the checkout's own `kernels` must not be importable
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        r = subprocess.run([sys.executable, "-c", CALL, str(tmp_path), mode], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        outputs.append(r.stdout.split())
    assert outputs == [["kernels.cpu", "0.949999988079071"], ["alias.kernels.cpu", "0.949999988079071"],
                       ["kernels.cpu", "0.949999988079071"]]
    cached = list((tmp_path / "k" / "kernels" / "__pycache__").glob("*.*_cpu*.nbi"))
    assert any(p.name.startswith("optim.sgd_cpu") for p in cached), cached  # it did cache the body it ran


def test_every_kernel_source_a_compiled_kernel_reads_is_watched():
    """numba's cache and the CUDA build key watch KERNEL_SOURCES / cuda_build.SOURCES: every module
    the kernels import from (transitively, within kernels/) must be listed, or editing it (e.g. an
    activation's record) would leave stale compiled kernels."""
    import os
    import re

    from tinydae.kernels import common, cuda_build

    folder = os.path.dirname(common.__file__)

    def imported(name, seen):
        text = open(os.path.join(folder, name)).read()
        deps = re.findall(r"^from \.(\w+) import", text, re.M)
        for names in re.findall(r"^from \. import ([\w, ]+)", text, re.M):  # from . import noise, optim
            deps += [n.strip() for n in names.split(",")]
        for dep in deps:
            dep = dep + ".py"
            if dep not in seen and dep not in ("cuda_launch.py", "cuda_build.py"):  # launch/build tooling
                seen.add(dep)
                imported(dep, seen)
        return seen

    assert imported("cpu.py", set()) <= set(common.KERNEL_SOURCES)
    assert imported("cuda.py", set()) <= set(cuda_build.SOURCES) - {"cuda.py"}


LEAKY = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import kernels.cpu as K
z = np.full((1, 8), -3.0, np.float32)
y = np.empty_like(z)
K.bias_act_forward(y, z, np.zeros(8, np.float32), "leaky_relu")
print(float(y[0, 0]))
"""


def test_an_edited_helper_is_not_served_stale_from_numba_cache_dir(tmp_path):
    """With NUMBA_CACHE_DIR set numba caches outside kernels/, and the stamp must be checked there
    too: an edited per-element helper (scalar.py, inlined into bias_act's CPU body, whose own file
    did not change) gives the new result in the next process, not the cached old one."""
    shutil.copytree(os.path.join(ROOT, "kernels"), tmp_path / "k" / "kernels",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "numba-cache")

    def run():
        r = subprocess.run([sys.executable, "-c", LEAKY, str(tmp_path / "k")], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        return float(r.stdout.split()[-1])

    assert run() == np.float32(-0.03)
    assert list((tmp_path / "numba-cache").rglob("bias_act.bias_act_forward_cpu*.nbi"))  # cached there
    acts = tmp_path / "k" / "kernels" / "activations.py"
    text = acts.read_text()
    assert "LEAKY_SLOPE = 0.01" in text
    acts.write_text(text.replace("LEAKY_SLOPE = 0.01", "LEAKY_SLOPE = 0.02"))
    assert run() == np.float32(-0.06)
