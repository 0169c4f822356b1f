import numpy as np
import pytest

from tinydae import DAE, BackendUnavailable, ConfigError, get_backend


def test_cpu_and_auto_backends():
    cpu = get_backend("cpu")
    assert cpu.xp is np and cpu.name == "cpu"
    a = np.arange(6, dtype=np.float64).reshape(2, 3)[:, ::2]  # non-contiguous input
    d = cpu.to_device(a, dtype=np.float32)
    assert d.flags.c_contiguous and d.dtype == np.float32
    np.testing.assert_array_equal(cpu.to_host(d), a)
    assert get_backend("auto").name in ("cpu", "cuda")


def cupy_missing():
    try:
        import cupy  # noqa: F401
    except ImportError:
        return True
    return False


@pytest.mark.skipif(not cupy_missing(), reason="CuPy is installed here; this checks the message without it")
def test_cuda_without_cupy_names_the_install_command():
    with pytest.raises(BackendUnavailable) as info:
        get_backend("cuda")
    msg = str(info.value)
    assert "\n" not in msg and "CuPy" in msg and 'pip install -e ".[cuda12]"' in msg
    with pytest.raises(BackendUnavailable):
        DAE(4, hidden=(2,), backend="cuda")
    assert get_backend("auto").name == "cpu"  # auto falls back quietly


def test_gemm_acc_on_numpy_is_the_plain_accumulation(rng):
    """out += a.T @ b, bit for bit as NumPy's own expression, into C- and F-ordered outputs
    (a tied decoder's dW is the transpose view of the encoder's)."""
    cpu = get_backend("cpu")
    a, b = rng.normal(size=(9, 5)).astype(np.float32), rng.normal(size=(9, 4)).astype(np.float32)
    for out0 in (rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32).T):
        expected, out = out0.copy(order="K"), out0.copy(order="K")
        expected += a.T @ b
        cpu.gemm_acc(a, b, out)
        np.testing.assert_array_equal(out, expected)
        assert out.flags.c_contiguous == out0.flags.c_contiguous


def test_gemm_acc_write_ignores_what_out_held(rng):
    """accumulate=False: the GEMM writes out = a.T @ b itself (no temporary), equal to the
    accumulation into zeros, into C- and F-ordered outputs holding NaN."""
    cpu = get_backend("cpu")
    a, b = rng.normal(size=(9, 5)).astype(np.float32), rng.normal(size=(9, 4)).astype(np.float32)
    for out in (np.full((5, 4), np.nan, np.float32), np.full((4, 5), np.nan, np.float32).T):
        zeros = np.zeros_like(out, order="K")
        cpu.gemm_acc(a, b, zeros)
        cpu.gemm_acc(a, b, out, accumulate=False)
        np.testing.assert_array_equal(out, zeros)


def test_host_reads_are_counted():
    from tinydae.backend import HOST_READS

    cpu = get_backend("cpu")
    before = HOST_READS["count"]
    assert cpu.to_host(np.float64(2.0)) == 2.0 and cpu.to_host(np.ones(3)).shape == (3,)
    assert HOST_READS["count"] == before + 2


def test_reference_kernels_are_cpu_only():
    assert get_backend("cpu", kernels="reference").kernels.__name__ == "tinydae.kernels.reference"
    assert get_backend("cpu").kernels.__name__ == "tinydae.kernels.cpu"
    with pytest.raises(ConfigError, match="fused"):
        get_backend("cuda", kernels="reference")
    with pytest.raises(ConfigError):
        get_backend("cpu", kernels="fast")


def test_unknown_backend():
    with pytest.raises(ConfigError, match="cpu, cuda, auto"):
        get_backend("tpu")
