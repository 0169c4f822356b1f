"""Issue 13: a trained model runs on numpy and h5py alone (backend "numpy").

Each check runs in a fresh interpreter, because this test session has long since imported
numba: only a new process can show that loading a checkpoint, reconstruct, encode, logits and
every sampler's chain leave numba, llvmlite, click and CuPy unimported.  The outputs must match
the fused CPU backend's; the no-deps install test shows the route the README documents really
needs nothing more than numpy and h5py.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinydae as td
from tinydae.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("numba", "llvmlite", "click", "cupy")
CORRUPTION = "gaussian:0.1..0.5"  # a range, so the annealed sampler has a ladder to read
STEPS = 6

# Run in the child: everything an embedding application does with a checkpoint, on backend
# "numpy", then which forbidden top-level packages got imported.  argv: checkpoint, out.npz.
RUNTIME = r"""
import json, sys
import numpy as np
import tinydae

model = tinydae.load_model(sys.argv[1], backend="numpy")
x = np.random.default_rng(0).random((5, model.input_dim), dtype=np.float32)
out = dict(reconstruct=model.reconstruct(x), encode=model.encode(x), logits=model.logits(x))
for s in tinydae.SAMPLERS:
    r = tinydae.chain(model, x, %(steps)d, sampler=s, seed=3)  # corruption: the model's own
    out[f"chain_{s}"], out[f"chain_{s}_change"] = r.samples, r.mean_abs_change
    out[f"improve_{s}"] = tinydae.improve(model, x, 2, sampler=s, seed=4).samples
np.savez(sys.argv[2], **out)
print(json.dumps(dict(backend=repr(model.backend), tinydae=tinydae.__file__,
                      imported=sorted({m.split(".")[0] for m in sys.modules} & set(%(forbidden)r)))))
""" % dict(steps=STEPS, forbidden=FORBIDDEN)


def _checkpoint(path, hidden=(12, 8), activation="relu", tied=False, arch=None):
    model = td.DAE(36, None if arch else hidden, activation=activation, tied=tied, seed=7, backend="numpy", arch=arch)
    td.save_checkpoint(path, model, train_config={"corruption": CORRUPTION})
    return path


def _run(argv, cwd, env=None, timeout=300):
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{argv[:3]}...\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


def _fused_outputs(ckpt):
    """The same calls on the fused (numba) CPU backend, in this process."""
    model = td.load_model(ckpt, backend="cpu")
    assert model.backend.kernel_set == "fused"
    x = np.random.default_rng(0).random((5, model.input_dim), dtype=np.float32)
    out = dict(reconstruct=model.reconstruct(x), encode=model.encode(x), logits=model.logits(x))
    for s in td.SAMPLERS:
        r = td.chain(model, x, STEPS, sampler=s, seed=3)
        out[f"chain_{s}"], out[f"chain_{s}_change"] = r.samples, r.mean_abs_change
        out[f"improve_{s}"] = td.improve(model, x, 2, sampler=s, seed=4).samples
    return out


@pytest.mark.parametrize("activation,tied,arch", [("relu", False, None), ("sigmoid", True, None),
                                                  ("tanh", False, None), ("leaky_relu", True, None),
                                                  ("softplus", False, None), ("relu", False, "conv:3,4"),
                                                  ("tanh", True, "conv:2k3,3,fc5")])
def test_numpy_backend_imports_no_numba_and_matches_the_fused_cpu(tmp_path, activation, tied, arch):
    ckpt = _checkpoint(tmp_path / "m.h5", activation=activation, tied=tied, arch=arch)
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    info = _run([sys.executable, "-c", RUNTIME, str(ckpt), str(tmp_path / "out.npz")], tmp_path, env)
    assert info["imported"] == [], f"backend numpy imported {info['imported']}"
    assert "reference kernels" in info["backend"], info
    got = np.load(tmp_path / "out.npz")
    want = _fused_outputs(ckpt)
    assert set(got.files) == set(want)
    # The fused twins run the reference's arithmetic (same GEMMs, same Philox draws, same
    # Box-Muller; sigmoid through the same NumPy exp), so a relu or sigmoid forward pass is
    # bit-identical; for tanh, leaky_relu and softplus layers numba's compiled scalar code and
    # NumPy's code may round differently: the last bit may differ (the README says so).
    for name in ("reconstruct", "encode", "logits"):
        if activation in ("relu", "sigmoid"):
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
        else:
            np.testing.assert_allclose(got[name], want[name], rtol=2e-6, atol=1e-6, err_msg=name)
    # Chains: the states agree to float32 rounding (a Bernoulli draw could flip where rounding
    # moves p across its uniform, about once in 10^7 draws: not at this size).  The per-step
    # change is a float64 row sum the CPU twin may add in another order (fastmath reassoc).
    for name in want:
        if name.startswith(("chain_", "improve_")):
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_numpy_backend_names_and_refuses_fused_kernels():
    b = td.get_backend("numpy")
    # "cpu": the code that branches on backend.name means NumPy arrays on the host, which it is.
    assert (b.name, b.kernel_set, b.kernels.__name__) == ("cpu", "reference", "tinydae.kernels.reference")
    assert td.get_backend("numpy", kernels="reference").kernel_set == "reference"
    with pytest.raises(ConfigError, match="reference kernels only"):
        td.get_backend("numpy", kernels="fused")  # never a quiet switch to numba
    assert td.get_backend("cpu").kernel_set == "fused"  # the other backends keep their default
    assert td.DAE(4, hidden=(3,), backend="numpy").backend.kernel_set == "reference"


def test_cli_chain_commands_take_backend_numpy(tmp_path):
    from click.testing import CliRunner

    from tinydae.cli import cli

    ckpt = str(_checkpoint(tmp_path / "m.h5"))
    runs = {}
    for backend in ("numpy", "cpu"):
        r = CliRunner().invoke(cli, ["sample", ckpt, "--backend", backend, "--n", "4", "--steps", "3",
                                     "--out", str(tmp_path / f"{backend}.png"), "--json"])
        assert r.exit_code == 0, r.output
        runs[backend] = json.loads(r.output)["mean_abs_change"]
    np.testing.assert_allclose(runs["numpy"], runs["cpu"], rtol=1e-6)
    np.savez(tmp_path / "samples.npz", x=np.random.default_rng(1).random((4, 36), dtype=np.float32))
    r = CliRunner().invoke(cli, ["improve", ckpt, "--from", str(tmp_path / "samples.npz"), "--backend", "numpy",
                                 "--steps", "2", "--out", str(tmp_path / "i.png"), "--json"])
    assert r.exit_code == 0, r.output


@pytest.mark.slow
def test_no_deps_install_runs_on_numpy_and_h5py_alone(tmp_path):
    """The README's route: `pip install --no-deps .` next to numpy and h5py.  The child sees
    only the install target and a folder with numpy and h5py (-S keeps site-packages, and its
    numba, off sys.path); it must be unable to import numba and still run every call."""
    ckpt = _checkpoint(tmp_path / "m.h5")
    # Built from a copy (as tests/test_packaging.py does): setuptools writes build/ and
    # *.egg-info into the source folder.  With build isolation, as the README's command: an
    # environment's own setuptools may be too old for pyproject.toml (a fresh 3.11 venv's is).
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "runs", "build", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache", "results"))
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--target", str(target), str(src)], capture_output=True, text=True, timeout=600)
    if r.returncode != 0 and ("No matching distribution" in r.stderr or "connection" in r.stderr.lower()):
        pytest.skip(f"cannot fetch the build backend offline here: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    deps = tmp_path / "deps"  # numpy and h5py, linked from this environment (h5py needs only numpy)
    deps.mkdir()
    site = Path(np.__file__).parents[1]
    for entry in site.iterdir():
        if entry.name.split("-")[0].split(".")[0].lower() in ("numpy", "h5py"):
            (deps / entry.name).symlink_to(entry)
    probe = "import importlib.util, sys\nassert importlib.util.find_spec('numba') is None, 'numba is visible'\n"
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "PYTHONHOME")}
    env.update(PYTHONPATH=os.pathsep.join([str(target), str(deps)]), PYTHONNOUSERSITE="1")
    info = _run([sys.executable, "-S", "-c", probe + RUNTIME, str(ckpt), str(tmp_path / "out.npz")],
                tmp_path, env)
    assert info["imported"] == []
    assert Path(info["tinydae"]).resolve().is_relative_to(target.resolve()), info["tinydae"]
    got = np.load(tmp_path / "out.npz")
    want = td.load_model(ckpt, backend="numpy").reconstruct(
        np.random.default_rng(0).random((5, 36), dtype=np.float32))
    np.testing.assert_array_equal(got["reconstruct"], want)
    # the mistakes a user makes there: the default backend (cpu: fused, numba) and "auto" say
    # what is missing and what to use instead, as BackendUnavailable (the CLI's error: line)
    mistakes = ("import json, sys, tinydae\nout = []\nfor b in ('cpu', 'auto'):\n"
                "    try:\n        tinydae.load_model(sys.argv[1], backend=b)\n"
                "    except tinydae.BackendUnavailable as e:\n        out.append(str(e))\n"
                "print(json.dumps(out))\n")
    messages = _run([sys.executable, "-S", "-c", probe + mistakes, str(ckpt)], tmp_path, env)
    assert len(messages) == 2, messages
    for message in messages:
        assert "numba" in message and 'backend="numpy"' in message, message


def test_a_numba_that_fails_to_import_is_named_with_the_way_out(tmp_path):
    """Review finding: numba's own version checks raise ImportError with no module name (e.g.
    "Numba needs NumPy 2.5 or less"); the default backend must still say what to do."""
    fake = tmp_path / "fake" / "numba"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("Numba needs NumPy 2.5 or less. Got NumPy 9.9.")\n')
    probe = ("import tinydae\nfor b in ('cpu', 'auto'):\n    try:\n        tinydae.get_backend(b)\n"
             "    except tinydae.BackendUnavailable as e:\n        print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "fake"), str(ROOT)])
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and all("Numba needs NumPy" in line and 'backend="numpy"' in line
                                   for line in lines), r.stdout


def test_bench_embed_smoke(tmp_path):
    """bench/bench_embed.py runs end to end (one repeat, no cold-cache row, torch if present)."""
    env = dict(os.environ, TINYDAE_BENCH_RESULTS=str(tmp_path))
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_embed.py"), "--repeats", "1", "--quick",
                        "--save"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "| tinydae numpy " in r.stdout, r.stdout
    result = json.loads((tmp_path / "embed.json").read_text())
    numpy_row = next(row for row in result["runtimes"] if row["runtime"] == "tinydae numpy")
    assert numpy_row["first_reconstruct_s"]["median"] > 0 and numpy_row["peak_rss_mib"]["median"] > 0
    assert result["environments"]["tinydae numpy"]["distributions"] == ["h5py", "numpy"]
