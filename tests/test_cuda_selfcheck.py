"""The CUDA self-check and its fallbacks, in numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1).

Before any real work the cuda backend launches known answers (kernels/cuda.py: self_check)
through its launcher; a launcher that fails is reported in one warning and replaced by numba's
dispatcher; if that fails too, --backend cuda ends in one error line and --backend auto runs on
the CPU with one warning.  Here the CuPy launcher is the real CupyLauncher on stand-in arrays
(bench/cupy_standin.py), broken on purpose by a bundle whose entries do not match the
signatures, and CuPy's device queries are stood in for; verdicts are cached on disk.
"""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

pytestmark = pytest.mark.cudasim
if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.skip("the self-check launches kernels: NUMBA_ENABLE_CUDASIM=1 (as .ci/run sets)", allow_module_level=True)

import tinydae.kernels.cuda as kc  # noqa: E402
from bench import cupy_standin  # noqa: E402
from tinydae import backend as backend_module  # noqa: E402
from tinydae.kernels import cuda_build, cuda_launch  # noqa: E402


def broken_bundle(path, drop=0, leave_out=()):
    """A bundle of every variant (but those in leave_out) whose records say the .entry lost its
    last `drop` parameters (and whose cubins are empty files): what a bundle from other sources or
    a botched build looks like."""
    os.makedirs(path, exist_ok=True)
    for k in cuda_launch.KERNELS.values():
        for dtype in k.variants:
            if (k.name, dtype) in leave_out:
                continue
            stem = cuda_build._stem(k, dtype, (9, 0))
            open(os.path.join(path, stem + ".cubin"), "wb").close()
            params = cuda_launch.ptx_param_types(k.parsed[dtype])
            record = dict(name=k.name, dtype=dtype, entry=k.name, cubin=stem + ".cubin",
                          ptx_params=params[:len(params) - drop])
            with open(os.path.join(path, stem + ".json"), "w") as f:
                json.dump(record, f)
    return str(path)


class BrokenNumba(cuda_launch.NumbaLauncher):
    """numba's dispatcher after an illegal address has poisoned the context."""

    def launch(self, k, blocks, threads, args):
        raise RuntimeError("[700] Call to cuLaunchKernel results in CUDA_ERROR_ILLEGAL_ADDRESS")


class CountingNumba(cuda_launch.NumbaLauncher):
    launches = 0

    def launch(self, k, blocks, threads, args):
        CountingNumba.launches += 1
        super().launch(k, blocks, threads, args)


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """No verdicts in memory, a cache folder of the test's own, the launcher put back after."""
    monkeypatch.setattr(kc, "_VERDICTS", {})
    monkeypatch.setattr(backend_module, "_CHECKED", set())
    monkeypatch.setenv("TINYDAE_CUDA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TINYDAE_CUDA_SELFCHECK", raising=False)
    monkeypatch.delenv("TINYDAE_CUDA_CUBINS", raising=False)
    saved = kc.LAUNCHER
    yield tmp_path
    kc.LAUNCHER = saved


def use(monkeypatch, cupy_launcher, numba_cls=cuda_launch.NumbaLauncher):
    """Start on cupy_launcher; a switch to numba gets numba_cls."""
    kc.LAUNCHER = cupy_launcher
    monkeypatch.setattr(kc, "set_launcher", lambda name: setattr(
        kc, "LAUNCHER", cupy_launcher if name == "cupy" else numba_cls()))


def test_a_working_launcher_passes_and_its_verdict_is_cached_on_disk(fresh, monkeypatch):
    use(monkeypatch, CountingNumba(), CountingNumba)
    CountingNumba.launches = 0
    assert kc.ensure_launcher() == []
    assert CountingNumba.launches == 3  # philox, sgd, the loss: one launch each
    saved = list((fresh / "cache").glob("selfcheck-numba-*.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["ok"] is True
    monkeypatch.setattr(kc, "_VERDICTS", {})  # as a later process: the verdict comes from disk
    assert kc.ensure_launcher() == [] and CountingNumba.launches == 3
    monkeypatch.setenv("TINYDAE_CUDA_SELFCHECK", "always")
    assert kc.ensure_launcher() == [] and CountingNumba.launches == 6
    monkeypatch.setenv("TINYDAE_CUDA_SELFCHECK", "off")
    assert kc.ensure_launcher() == [] and CountingNumba.launches == 6
    monkeypatch.setenv("TINYDAE_CUDA_SELFCHECK", "sometimes")
    with pytest.raises(ValueError, match="TINYDAE_CUDA_SELFCHECK must be one of once, always, off"):
        kc.ensure_launcher()


def test_the_self_check_catches_a_kernel_that_computes_wrongly(fresh, monkeypatch):
    use(monkeypatch, cuda_launch.NumbaLauncher())
    right = kc.sgd_update

    def wrong_in_the_fifth_digit(p, *args, **kw):
        right(p, *args, **kw)
        p[7] = np.nextafter(p[7], np.float32(np.inf))
        p[7] = np.nextafter(p[7], np.float32(np.inf))
        p[7] = np.nextafter(p[7], np.float32(np.inf)) * np.float32(1.0001)
    monkeypatch.setattr(kc, "sgd_update", wrong_in_the_fifth_digit)
    with pytest.raises(cuda_launch.LaunchError, match="sgd_update float32: 1 of 1000 values differ"):
        kc.self_check()
    monkeypatch.setattr(kc, "sgd_update", right)
    kc.self_check()


def test_a_broken_bundle_falls_back_to_numbas_dispatcher_with_one_warning(fresh, monkeypatch):
    launcher = cupy_standin.EmulatedCupyLauncher(broken_bundle(fresh / "bundle", drop=1))
    use(monkeypatch, launcher)
    notes = kc.ensure_launcher()
    assert len(notes) == 1 and kc.LAUNCHER.name == "numba"
    assert notes[0].startswith("the cupy launcher failed its self-check (loading every variant: LaunchError: ")
    assert "_philox_uint32 any: the cubin's .entry takes 11 parameters" in notes[0] and "using numba's dispatcher" in notes[0]
    assert launcher.launches == 0
    # a later process reads both verdicts and launches nothing through the broken bundle
    monkeypatch.setattr(kc, "_VERDICTS", {})
    again = cupy_standin.EmulatedCupyLauncher(launcher.bundle)
    use(monkeypatch, again, CountingNumba)
    CountingNumba.launches = 0
    notes = kc.ensure_launcher()
    assert len(notes) == 1 and "(cached verdict " in notes[0] and "TINYDAE_CUDA_SELFCHECK=always checks again" in notes[0]
    assert not again.loaded
    assert CountingNumba.launches == 0


def test_a_good_bundle_passes_on_the_emulated_cupy_launcher(fresh, monkeypatch):
    """The same check passes where the cupy launcher works (its entries taken from the declared
    signatures here; tests/test_cupy_emulation.py uses a real sm_90 bundle)."""
    class Declared(cupy_standin.EmulatedCupyLauncher):
        def _built(self, k, dtype, arch):
            return dict(name=k.name, dtype=dtype, entry=k.name, cubin_path="declared",
                        ptx_params=cuda_launch.ptx_param_types(k.parsed[dtype]))
    launcher = Declared()
    use(monkeypatch, launcher)
    assert kc.ensure_launcher() == [] and kc.LAUNCHER is launcher and launcher.launches == 3


def test_when_every_launcher_fails_the_error_names_both(fresh, monkeypatch):
    use(monkeypatch, cupy_standin.EmulatedCupyLauncher(broken_bundle(fresh / "bundle", drop=1)), BrokenNumba)
    with pytest.raises(cuda_launch.LaunchError) as info:
        kc.ensure_launcher()
    text = str(info.value)
    assert text.startswith("cupy launcher: loading every variant: LaunchError: ")
    assert "; numba launcher: philox_uint32 words: RuntimeError: [700] Call to cuLaunchKernel results in " \
           "CUDA_ERROR_ILLEGAL_ADDRESS" in text
    # only the first launcher's failure is remembered: numba's may be the poisoned context's doing
    saved = sorted(p.name.split("-")[1] for p in (fresh / "cache").glob("selfcheck-*.json"))
    assert saved == ["cupy"]


def test_a_bundle_without_a_variant_fails_the_check_before_any_work(fresh, monkeypatch):
    """Every variant is loaded (not launched) by the check: a bundle that lacks one, on a machine
    that cannot compile it, fails here rather than in the middle of training."""
    def cannot_build(*args, **kwargs):
        raise cuda_build.BuildError("no cubin assembler")
    monkeypatch.setattr(cuda_build, "cached_build", cannot_build)
    launcher = cupy_standin.EmulatedCupyLauncher(broken_bundle(fresh / "bundle", leave_out={("_adam", "float64")}))
    use(monkeypatch, launcher, BrokenNumba)
    with pytest.raises(cuda_launch.LaunchError, match=r"^cupy launcher: loading every variant: LaunchError: the cupy "
                       r"launcher could not load _adam float64 for sm_90: BuildError: _adam float64 for sm_90 is "
                       r"not in the bundle"):
        kc.ensure_launcher()
    assert launcher.launches == 0


# -- what the user sees: --backend cuda and auto ---------------------------------------------------


class FakeCupy:
    """CuPy's device queries (the self-check itself runs in the simulator on NumPy arrays)."""

    class cuda:
        class Device:
            id = 0

        class runtime:
            @staticmethod
            def getDeviceProperties(i):
                return {"name": b"Simulated GPU"}


@pytest.fixture
def gpu_found(fresh, monkeypatch):
    """A 'GPU' that passes every probe, so that get_backend reaches the self-check."""
    monkeypatch.setattr(backend_module, "_cuda_probe", lambda: (FakeCupy, kc))
    return fresh


def test_backend_cuda_and_auto_when_the_self_check_fails(gpu_found, monkeypatch):
    from tinydae.errors import BackendUnavailable

    use(monkeypatch, cupy_standin.EmulatedCupyLauncher(broken_bundle(gpu_found / "bundle", drop=1)), BrokenNumba)
    with pytest.raises(BackendUnavailable, match=r"^--backend cuda: the GPU failed its self-check \(cupy launcher: "):
        backend_module.get_backend("cuda")
    with pytest.warns(backend_module.BackendWarning) as caught:
        b = backend_module.get_backend("auto")
    assert b.name == "cpu" and len(caught) == 1
    assert str(caught[0].message).startswith("--backend auto runs on the CPU: --backend cuda: the GPU failed")


def test_backend_cuda_falls_back_to_numba_with_one_warning(gpu_found, monkeypatch):
    use(monkeypatch, cupy_standin.EmulatedCupyLauncher(broken_bundle(gpu_found / "bundle", drop=1)))
    with pytest.warns(backend_module.BackendWarning) as caught:
        b = backend_module.get_backend("cuda")
    assert b.name == "cuda" and b.device == "Simulated GPU (CUDA device 0)" and kc.LAUNCHER.name == "numba"
    assert len(caught) == 1 and "the cupy launcher failed its self-check" in str(caught[0].message)
    assert backend_module.get_backend("cuda").name == "cuda"  # checked once per process: no second warning


def test_the_cli_ends_cuda_with_one_error_line_and_auto_on_the_cpu_with_one_warning(gpu_found, monkeypatch):
    from tinydae.cli import cli

    use(monkeypatch, cupy_standin.EmulatedCupyLauncher(broken_bundle(gpu_found / "bundle", drop=1)), BrokenNumba)
    args = ["train", "--limit", "60", "--hidden", "8", "--epochs", "1", "--batch-size", "30"]
    r = CliRunner().invoke(cli, args + ["--backend", "cuda", "--out", str(gpu_found / "run-cuda")])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --backend cuda: the GPU failed its self-check (cupy "), r.stderr
    assert "CUDA_ERROR_ILLEGAL_ADDRESS" in lines[0]
    assert not (gpu_found / "run-cuda").exists()  # refused before any work

    r = CliRunner().invoke(cli, args + ["--backend", "auto", "--out", str(gpu_found / "run-auto")])
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: --backend auto runs on the CPU: --backend cuda: "
                                                         "the GPU failed its self-check"), r.stderr
    assert (gpu_found / "run-auto" / "checkpoint.h5").exists()


def test_the_twins_refuse_another_librarys_device_array_clearly():
    """A device array that is not CuPy's (here an object with only __cuda_array_interface__, as a
    torch CUDA tensor has) is refused with the fix in the message, not misread by the launcher."""
    class TorchLike:
        __cuda_array_interface__ = {"data": (0x7F0000001000, False), "shape": (4,), "typestr": "<f4", "version": 3}
        dtype, shape, ndim = np.dtype(np.float32), (4,), 1

    good = np.ones(4, np.float32)
    with pytest.raises(TypeError, match=r"grads: the CUDA twins take CuPy arrays, got a .*TorchLike in device "
                                        r"memory; convert it without a copy first: cupy.asarray\(grads\)"):
        kc.sgd_update(good, TorchLike(), good.copy(), 0.1, 0.0, False, 0.0)
    with pytest.raises(TypeError, match="expected a CuPy array, got list"):
        kc.sgd_update(good, [1.0] * 4, good.copy(), 0.1, 0.0, False, 0.0)
