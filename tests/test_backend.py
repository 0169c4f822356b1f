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


def test_cuda_unavailable_says_why_in_one_line():
    with pytest.raises(BackendUnavailable) as info:
        get_backend("cuda")
    msg = str(info.value)
    assert "cuda" in msg and "\n" not in msg and "--backend cpu" in msg
    with pytest.raises(BackendUnavailable):
        DAE(4, hidden=(2,), backend="cuda")


def test_unknown_backend():
    with pytest.raises(ConfigError, match="cpu, cuda, auto"):
        get_backend("tpu")
