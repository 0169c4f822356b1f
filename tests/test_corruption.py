import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinydae import ConfigError, Corruption, get_backend
from tinydae.corruption import gaussian, masking, none, salt_pepper

CPU = get_backend("cpu")


def data(rng, shape=(400, 500)):
    return rng.uniform(0.1, 0.9, shape).astype(np.float32)  # no exact 0s or 1s in the clean data


def binomial_ok(count, n, p, sigmas=5):
    return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("p", [0.05, 0.25, 0.7])
def test_masking_zeroes_a_fraction_p(rng, p):
    x = data(rng)
    y = masking(p).apply(CPU, x, seed=1, step=0)
    zero = y == 0
    assert binomial_ok(zero.sum(), x.size, p)
    np.testing.assert_array_equal(y[~zero], x[~zero])


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_salt_and_pepper_fractions(rng, p):
    x = data(rng)
    y = salt_pepper(p).apply(CPU, x, seed=2, step=5)
    assert binomial_ok((y == 0).sum(), x.size, p / 2)
    assert binomial_ok((y == 1).sum(), x.size, p / 2)
    kept = (y != 0) & (y != 1)
    np.testing.assert_array_equal(y[kept], x[kept])


@pytest.mark.parametrize("sigma", [0.1, 0.5])
def test_gaussian_is_additive_unit_normal_times_sigma(rng, sigma):
    x = data(rng)
    n = (gaussian(sigma).apply(CPU, x, seed=3, step=1).astype(np.float64) - x) / sigma
    assert abs(n.mean()) < 0.01 and abs(n.std() - 1) < 0.01
    assert abs(np.mean(n**4) - 3) < 0.1
    assert abs(np.corrcoef(n[:, :-1].ravel(), n[:, 1:].ravel())[0, 1]) < 0.01  # independent pixels


def test_none_is_identity(rng):
    x = data(rng, (7, 9))
    np.testing.assert_array_equal(none().apply(CPU, x, 0, 0), x)


@pytest.mark.parametrize("spec", ["gaussian:0.3", "masking:0.25", "salt_pepper:0.1"])
def test_determinism(rng, spec):
    c = Corruption.parse(spec)
    x = data(rng, (32, 50))
    a, b = c.apply(CPU, x, seed=9, step=4), c.apply(CPU, x, seed=9, step=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c.apply(CPU, x, seed=9, step=5))   # different step
    assert not np.array_equal(a, c.apply(CPU, x, seed=10, step=4))  # different seed
    assert not np.array_equal(a, c.apply(CPU, x, seed=9, step=4, stream=1))


@given(spec=st.sampled_from(["gaussian:0.3", "masking:0.4", "salt_pepper:0.3"]),
       rows=st.integers(2, 9), cols=st.integers(1, 13), cut=st.integers(1, 8), seed=st.integers(0, 2**40))
def test_batches_with_offsets_equal_one_big_batch(spec, rows, cols, cut, seed):
    cut = min(cut, rows - 1)
    x = np.random.default_rng(seed % 2**32).uniform(0.1, 0.9, (rows, cols)).astype(np.float32)
    c = Corruption.parse(spec)
    whole = c.apply(CPU, x, seed, 3)
    top = c.apply(CPU, x[:cut], seed, 3)
    bottom = c.apply(CPU, np.ascontiguousarray(x[cut:]), seed, 3, offset=cut * cols)
    np.testing.assert_array_equal(whole, np.concatenate([top, bottom]))


def test_parse_round_trip():
    for spec in ["gaussian:0.3", "masking:0.25", "salt_pepper:0.1", "none"]:
        assert str(Corruption.parse(spec)) == spec


@pytest.mark.parametrize("spec", ["gaussian", "gaussian:x", "gaussian:-1", "gaussian:nan",
                                  "masking:1.5", "blur:0.1", "none:0.2", ""])
def test_bad_specs(spec):
    with pytest.raises(ConfigError):
        Corruption.parse(spec)
