"""The CuPy launcher and cuBLAS bookkeeping emulated without a GPU, on whole runs.

Until a GPU runs tinydae, this is the strongest evidence that `--backend cuda` will: every
launch of whole training runs and of every sampler goes through the real CupyLauncher (its
memo key, check and flattening), each flat value is packed by CuPy's own scalar packer and
compared with the variant's PTX .entry from a real ``build-cuda --arch sm_90`` bundle, the
kernel's arguments are rebuilt from the packed bytes alone and the kernel runs in numba's
CUDA simulator (bench/cupy_standin.py); every gemm goes through CuPy 14.2.0's cublas.gemm
operand and leading-dimension logic over a column-major host GEMM (tests/emulated_cublas.py).
Results must match the CPU reference to float32 tolerance.

Needs NUMBA_ENABLE_CUDASIM=1, CuPy (its scalar packer imports without a GPU) and numba-cuda
with an assembler to build the bundle: .ci/run runs it in its Python 3.12 `cuda13` venv.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import tinydae as td

pytestmark = pytest.mark.cudasim
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _missing():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        return "the emulation runs kernels in numba's CUDA simulator: NUMBA_ENABLE_CUDASIM=1 (as .ci/run sets)"
    try:
        from cupy._core._scalar import CScalar  # noqa: F401
    except Exception as e:
        if os.environ.get("TINYDAE_EMULATION_BUNDLE"):  # CI's cuda13 run: a skip would hide the emulation
            raise
        return f"CuPy's scalar packer is not importable ({type(e).__name__}: {e}); .ci/run's cuda13 venv has it"
    return None


if _missing():
    pytest.skip(_missing(), allow_module_level=True)

from bench import cupy_standin  # noqa: E402
from tests import emulated_cublas  # noqa: E402
from tinydae.backend import Backend, get_backend  # noqa: E402
from tinydae.sampling import chain, noise_start  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A real sm_90 bundle: TINYDAE_EMULATION_BUNDLE (CI's build-cuda output), else built now
    by ``cli.py build-cuda`` in a process without the simulator."""
    given = os.environ.get("TINYDAE_EMULATION_BUNDLE")
    if given:
        return given
    out = tmp_path_factory.mktemp("bundle")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run([sys.executable, "cli.py", "build-cuda", "--arch", "sm_90", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, env=env)
    if r.returncode:
        pytest.skip(f"no sm_90 bundle could be built here: {(r.stderr or r.stdout).strip()[-300:]}")
    return str(out)


@pytest.fixture
def emulated(bundle):
    """(backend, launcher): kernels/cuda.py launching through the emulated CuPy launcher."""
    import tinydae.kernels.cuda as kc

    launcher, saved = cupy_standin.EmulatedCupyLauncher(bundle), kc.LAUNCHER
    kc.LAUNCHER = launcher
    try:
        yield Backend("cupy-emulated", np, kc, "CuPy launcher emulated", gemm=emulated_cublas.gemm), launcher
    finally:
        kc.LAUNCHER = saved


def reference():
    return get_backend("cpu", kernels="reference")


FIT_CASES = [  # every activation, corruption, optimizer and loss, tied and untied
    dict(activation="relu", tied=False, loss="bce", optimizer="adam", corruption="gaussian:0.3"),
    dict(activation="leaky_relu", tied=True, loss="bce", optimizer="sgd", corruption="masking:0.25"),
    dict(activation="tanh", tied=False, loss="mse", optimizer="adamw", corruption="salt_pepper:0.2"),
    dict(activation="sigmoid", tied=True, loss="mse", optimizer="adam", corruption="none"),
    dict(activation="softplus", tied=False, loss="bce", optimizer="adamw", corruption="gaussian:0.1..0.5"),
    dict(activation="silu", tied=True, loss="bce", optimizer="adam", corruption="gaussian:0.3"),  # reads z + b
]


def fit_run(backend, case, dtype="float32"):
    model = td.DAE(12, hidden=(7, 5), seed=3, backend=backend, activation=case["activation"],
                   tied=case["tied"], loss=case["loss"], dtype=dtype)
    hyper = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3) if case["optimizer"] == "sgd" else \
        dict(lr=1e-2, weight_decay=1e-3)
    opt = td.make_optimizer(case["optimizer"], model, **hyper)
    data = np.random.default_rng(1).uniform(0.05, 0.95, (23, 12)).astype(dtype)
    state = td.fit(model, data[:18], data[18:], optimizer=opt, corruption=case["corruption"], epochs=2,
                   batch_size=7, seed=5, handle_sigint=False)  # 3 steps per epoch, the last one short
    return model, state


@pytest.mark.parametrize("case", FIT_CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_whole_fit_runs_match_the_cpu_through_the_emulated_cupy_launcher(emulated, case):
    backend, launcher = emulated
    want_model, want = fit_run(reference(), case)
    got_model, got = fit_run(backend, case)
    assert launcher.launches > 6 * 5  # every kernel of 6 steps went through the emulation
    for g, w in zip(got.history, want.history):
        for key in ("train_loss", "val_bce_denoise", "val_bce_clean"):
            np.testing.assert_allclose(g[key], w[key], rtol=2e-5, err_msg=key)
    np.testing.assert_allclose(got_model.params, want_model.params, rtol=1e-4, atol=2e-5)
    assert np.abs(got_model.params - td.DAE(12, hidden=(7, 5), seed=3, activation=case["activation"],
                                            tied=case["tied"]).params).max() > 1e-3  # it trained


def test_a_float64_fit_matches_too(emulated):
    backend, _ = emulated
    # masking: exact draws in both (the Gaussian draws' cos/sin are float32 libdevice calls on
    # the GPU, a few float32 ulp from the reference's, which a float64 comparison would see)
    case = dict(FIT_CASES[0], corruption="masking:0.3")
    want_model, want = fit_run(reference(), case, "float64")
    got_model, got = fit_run(backend, case, "float64")
    np.testing.assert_allclose(got_model.params, want_model.params, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.history[-1]["train_loss"], want.history[-1]["train_loss"], rtol=1e-10)


SAMPLERS = [("mean", {}), ("bernoulli", {}), ("langevin", dict(final="sample")), ("annealed", dict(levels=3))]


@pytest.mark.parametrize("sampler, kw", SAMPLERS)
def test_every_sampler_matches_the_cpu_through_the_emulated_cupy_launcher(emulated, sampler, kw):
    backend, launcher = emulated
    x0 = noise_start(7, 12, seed=3)
    kw = dict(kw, corruption="gaussian:0.1..0.5", sampler=sampler, seed=1, batch_size=4)
    want = chain(td.DAE(12, hidden=(7,), seed=2, backend=reference()), x0, 3, **kw)
    before = launcher.launches
    got = chain(td.DAE(12, hidden=(7,), seed=2, backend=backend), x0, 3, **kw)
    assert launcher.launches - before >= 2 * 3 * 2  # 2 batches x 3 steps, >= 2 kernels each
    np.testing.assert_allclose(got.samples, want.samples, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.mean_abs_change, want.mean_abs_change, rtol=1e-5, atol=1e-7)


# -- the emulation itself can fail ---------------------------------------------------------------


def test_a_wrong_flat_value_or_entry_is_caught(emulated, monkeypatch):
    """The emulation is a check, not a pass-through: a flattening that drops a stride, a
    scalar of the wrong width and a bundle entry whose parameters moved each fail."""
    import tinydae.kernels.cuda as kc
    from tinydae.kernels import cuda_launch

    backend, launcher = emulated
    x = np.random.default_rng(0).uniform(0.1, 0.9, (3, 8)).astype(np.float32)
    out = np.zeros_like(x)
    kc.corrupt(out, x, 1, 0.3, 9, 3, 0, 0)  # the right path runs
    assert not np.array_equal(out, x)

    real = cuda_launch.key_and_flatten

    def patched(change):
        def key_and_flatten(args):
            key, flat = real(args)
            return key, change(flat)
        monkeypatch.setattr(cuda_launch, "key_and_flatten", key_and_flatten)
    patched(lambda flat: flat[:-1])
    with pytest.raises(TypeError, match="flat values for"):
        kc.corrupt(np.zeros_like(x), x, 1, 0.3, 9, 3, 0, 0)
    patched(lambda flat: [np.int64(v) if isinstance(v, np.int32) else v for v in flat])
    with pytest.raises(TypeError, match="the .entry declares .u32"):
        kc.corrupt(np.zeros_like(x), x, 1, 0.3, 9, 3, 0, 0)
    # the input's data pointer one element on (flat value 7 + 4: out takes 7 values before it): the
    # rebuilt array reads the wrong memory and the results differ (x has a spare element after
    # its end, so the shifted read stays inside its buffer)
    spare = np.append(x.ravel(), np.float32(0.5))
    shifted_x = spare[:-1].reshape(x.shape)
    patched(lambda flat: [v + 4 if i == 11 else v for i, v in enumerate(flat)])
    y = np.zeros_like(x)
    kc.corrupt(y, shifted_x, 1, 0.3, 9, 3, 0, 0)
    assert not np.array_equal(y, out)
    noise = (out - x).ravel()  # mode 1 is Gaussian: y[i] = x[i + 1] + the same noise[i]
    np.testing.assert_allclose(y.ravel() - spare[1:], noise, rtol=0, atol=1e-6)
    monkeypatch.setattr(cuda_launch, "key_and_flatten", real)

    fresh = cupy_standin.EmulatedCupyLauncher(launcher.bundle)
    real_built = fresh._built
    monkeypatch.setattr(fresh, "_built", lambda k, dtype, arch: dict(real_built(k, dtype, arch),
                                                                      ptx_params=["u64"] * 3))
    kc.LAUNCHER = fresh
    with pytest.raises(cuda_launch.LaunchError, match="the cubin's .entry takes 3 parameters"):
        kc.corrupt(np.zeros_like(x), x, 1, 0.3, 9, 3, 0, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_convolution_kernels_through_the_emulated_cupy_launcher(emulated, dtype):
    """im2col and col2im (4-D and 2-D arrays, six int64 scalars) through the real launcher,
    CuPy's packing against the bundle's entries, and the simulator: equal to the reference."""
    import tinydae.kernels.cuda as kc
    import tinydae.kernels.reference as ref
    from tinydae.kernels.common import conv_output_size

    _, launcher = emulated
    x = np.random.default_rng(4).uniform(-1, 1, (2, 7, 6, 3)).astype(dtype)
    kh, kw, stride, pad = 3, 2, 2, 1
    rows = 2 * conv_output_size(7, kh, stride, pad) * conv_output_size(6, kw, stride, pad)
    want, got = np.zeros((rows, kh * kw * 3), dtype), np.full((rows, kh * kw * 3), np.nan, dtype)
    ref.im2col(want, x, kh, kw, stride, pad)
    before = launcher.launches
    kc.im2col(got, x, kh, kw, stride, pad)
    np.testing.assert_array_equal(got, want)
    d = np.random.default_rng(5).normal(size=want.shape).astype(dtype)
    want_dx, got_dx = np.zeros_like(x), np.full_like(x, np.nan)
    ref.col2im(want_dx, d, kh, kw, stride, pad)
    kc.col2im(got_dx, d, kh, kw, stride, pad)
    np.testing.assert_array_equal(got_dx, want_dx)
    assert launcher.launches - before == 2


@pytest.mark.parametrize("tied", [False, True])
def test_a_conv_dae_fit_and_chain_match_the_cpu_through_the_emulated_cupy_launcher(emulated, tied):
    """A conv DAE (Conv2d, ConvTranspose2d, a dense bottleneck; its bias kernels on image rows)
    trained by fit() and sampled by a chain, every launch and GEMM through the emulation."""
    backend, launcher = emulated
    data = np.random.default_rng(1).uniform(0.05, 0.95, (14, 49)).astype(np.float32)

    def run(b):
        model = td.DAE(49, arch="conv:3,4,fc5", tied=tied, seed=3, backend=b)
        state = td.fit(model, data[:10], data[10:], optimizer=td.Adam(model, lr=1e-2), corruption="gaussian:0.3",
                       epochs=2, batch_size=5, seed=5, handle_sigint=False)
        return model, state, chain(model, data[:3], 2, corruption="gaussian:0.2", seed=1, keep_chains=0)

    want_model, want, want_chain = run(reference())
    before = launcher.launches
    got_model, got, got_chain = run(backend)
    assert launcher.launches - before > 4 * 10  # every step's im2col, col2im and bias kernels
    for g, w in zip(got.history, want.history):
        np.testing.assert_allclose(g["val_bce_denoise"], w["val_bce_denoise"], rtol=2e-5)
    np.testing.assert_allclose(got_model.params, want_model.params, rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(got_chain.samples, want_chain.samples, rtol=1e-4, atol=1e-5)
