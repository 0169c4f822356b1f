"""im2col and col2im (NHWC), the kernels a convolution is built from: the NumPy reference is the
specification (checked here against a direct loop and as an adjoint pair), and the numba CPU
twin and the CUDA twin (in numba's simulator, NUMBA_ENABLE_CUDASIM=1) must equal it bit for bit,
for strides 1-3, padding 0-2, odd sizes, batch 1, float32 and float64, never on zeros."""
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinydae.kernels.reference as ref
from tinydae.kernels.common import conv_output_size

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


@st.composite
def problems(draw):
    """(x, kh, kw, stride, pad) with a window that fits: nonzero values of both signs."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    pad = draw(st.integers(0, min(kh, kw) - 1))
    stride = draw(st.integers(1, 3))
    H = draw(st.integers(max(1, kh - 2 * pad), 9))
    W = draw(st.integers(max(1, kw - 2 * pad), 9))
    B, C = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = (rng.uniform(0.5, 2.0, (B, H, W, C)) * rng.choice([-1, 1], (B, H, W, C))).astype(dtype)
    return x, kh, kw, stride, pad


def cols_for(x, kh, kw, stride, pad):
    B, H, W, C = x.shape
    Ho, Wo = conv_output_size(H, kh, stride, pad), conv_output_size(W, kw, stride, pad)
    return np.full((B * Ho * Wo, kh * kw * C), np.nan, x.dtype)  # NaN: every entry must be written


@given(problems())
def test_the_reference_im2col_is_the_windows_and_col2im_its_adjoint(p):
    x, kh, kw, stride, pad = p
    B, H, W, C = x.shape
    cols = cols_for(*p)
    ref.im2col(cols, x, kh, kw, stride, pad)
    Ho, Wo = conv_output_size(H, kh, stride, pad), conv_output_size(W, kw, stride, pad)
    for b, ho, wo, i, j in np.ndindex(B, Ho, Wo, kh, kw):  # the definition, element by element
        h, w = ho * stride - pad + i, wo * stride - pad + j
        want = x[b, h, w] if 0 <= h < H and 0 <= w < W else np.zeros(C, x.dtype)
        np.testing.assert_array_equal(cols[(b * Ho + ho) * Wo + wo, (i * kw + j) * C:(i * kw + j + 1) * C], want)
    d = np.random.default_rng(1).normal(size=cols.shape).astype(x.dtype)
    dx = np.full_like(x, np.nan)
    ref.col2im(dx, d, kh, kw, stride, pad)
    # <im2col(x), d> == <x, col2im(d)>: col2im is the adjoint (the gradient of im2col)
    lhs, rhs = np.sum(cols.astype(np.float64) * d), np.sum(x.astype(np.float64) * dx)
    assert abs(lhs - rhs) <= 1e-5 * (np.abs(cols).sum() * np.abs(d).max() + 1)


def twin(name):
    if name == "cpu":
        import tinydae.kernels.cpu as module
        return module
    if not SIM:
        pytest.skip("the CUDA twin runs here under NUMBA_ENABLE_CUDASIM=1 (as .ci/run sets)")
    import tinydae.kernels.cuda as module
    return module


@pytest.mark.parametrize("name", ["cpu", pytest.param("cuda", marks=pytest.mark.cudasim)])
def test_the_twins_equal_the_reference_bit_for_bit(name):
    K = twin(name)

    @settings(max_examples=40 if name == "cpu" else 8, deadline=None)
    @given(problems())
    def check(p):
        x, kh, kw, stride, pad = p
        want, got = cols_for(*p), cols_for(*p)
        ref.im2col(want, x, kh, kw, stride, pad)
        K.im2col(got, x, kh, kw, stride, pad)
        np.testing.assert_array_equal(got, want)
        d = np.random.default_rng(2).normal(size=want.shape).astype(x.dtype)
        want_dx, got_dx = np.full_like(x, np.nan), np.full_like(x, np.nan)
        ref.col2im(want_dx, d, kh, kw, stride, pad)
        K.col2im(got_dx, d, kh, kw, stride, pad)
        np.testing.assert_array_equal(got_dx, want_dx)  # same adds in the same order

    check()


@pytest.mark.parametrize("name", ["cpu", pytest.param("cuda", marks=pytest.mark.cudasim)])
def test_bad_arguments_are_refused(name):
    K = twin(name)
    x = np.ones((1, 5, 5, 2), np.float32)
    with pytest.raises(ValueError, match="cols must have shape"):
        K.im2col(np.zeros((10, 18), np.float32), x, 3, 3, 1, 0)
    with pytest.raises(ValueError, match="pad must be an integer in"):
        K.im2col(np.zeros((25, 18), np.float32), x, 3, 3, 1, 3)
    with pytest.raises(ValueError, match="does not fit"):
        K.im2col(np.zeros((1, 72), np.float32), x, 6, 6, 1, 0)
    with pytest.raises(ValueError, match="one dtype"):
        K.col2im(np.zeros((1, 5, 5, 2)), np.zeros((25, 18), np.float32), 3, 3, 1, 1)
