import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinydae.kernels.philox import philox4x32_10, philox4x32_10_np, philox_words_np
from tinydae.kernels.reference import (philox_normal, philox_uniform, uniform_from_words,
                               uniform_open_from_words)

# Random123's known-answer vectors for philox4x32_10 (kat_vectors).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_scalar_known_answers(counter, key, expected):
    assert tuple(int(w) for w in philox4x32_10(*counter, *key)) == expected


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_vectorised_known_answers(counter, key, expected):
    out = philox4x32_10_np(np.array(counter, np.uint32)[:, None], np.array(key, np.uint32))
    assert tuple(int(w) for w in out[:, 0]) == expected


def test_scalar_compiles_with_numba_and_matches():
    numba = pytest.importorskip("numba")
    jitted = numba.njit(philox4x32_10)
    for counter, key, expected in KAT:
        assert tuple(int(w) for w in jitted(*counter, *key)) == expected


@given(n=st.integers(0, 40), offset=st.integers(0, 2**33), seed=st.integers(0, 2**64 - 1),
       step=st.integers(0, 2**32 - 1), stream=st.integers(0, 7))
def test_stream_is_a_function_of_element_index(n, offset, seed, step, stream):
    whole = philox_words_np(n + 5, seed, step, stream, offset)
    part = philox_words_np(n, seed, step, stream, offset + 5)
    np.testing.assert_array_equal(whole[5:], part)
    # element j is word j % 4 of block j // 4
    if n:
        j = offset
        block = philox4x32_10(j >> 2 & 0xFFFFFFFF, j >> 34, step, stream, seed & 0xFFFFFFFF, seed >> 32)
        assert int(whole[0]) == int(block[j & 3])


def test_streams_steps_and_seeds_differ():
    base = philox_words_np(64, 1, 2, 0)
    assert not np.array_equal(base, philox_words_np(64, 1, 3, 0))
    assert not np.array_equal(base, philox_words_np(64, 1, 2, 1))
    assert not np.array_equal(base, philox_words_np(64, 2, 2, 0))


def test_uniform_ranges_at_extreme_words():
    w = np.array([0, 1, 255, 256, 0xFFFFFFFF, 0xFFFFFF00], np.uint32)
    u = uniform_from_words(w)
    assert u.dtype == np.float32 and u.min() == 0.0 and u.max() < 1.0
    assert u.max() == np.float32(1 - 2**-24)
    o = uniform_open_from_words(w)
    assert o.min() > 0.0 and o.max() < 1.0


@given(n=st.integers(1, 30), offset=st.integers(0, 1000), seed=st.integers(0, 2**32))
def test_normal_is_a_function_of_element_index(n, offset, seed):
    whole = philox_normal(offset + n, seed, 4, 0)
    np.testing.assert_array_equal(whole[offset:], philox_normal(n, seed, 4, 0, offset))


def test_distribution_moments():
    u = philox_uniform(400_000, 7, 0, 0).astype(np.float64)
    assert abs(u.mean() - 0.5) < 0.003 and abs(u.var() - 1 / 12) < 0.002
    z = philox_normal(400_000, 7, 0, 0).astype(np.float64)
    assert np.isfinite(z).all()
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs(np.mean(z**4) - 3) < 0.1  # Gaussian kurtosis
