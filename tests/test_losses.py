import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradcheck_helpers import numeric_grad, rel_error
from tinydae.kernels.reference import sigmoid_bce_forward_backward, sigmoid_mse_forward_backward
from tinydae.backend import get_backend
from tinydae.losses import loss_forward_backward, loss_sum_forward_backward

OPS = {"bce": sigmoid_bce_forward_backward, "mse": sigmoid_mse_forward_backward}


@given(loss=st.sampled_from(["bce", "mse"]), B=st.integers(1, 5), D=st.integers(1, 7),
       seed=st.integers(0, 2**32 - 1), scale=st.floats(0.01, 3.0))
def test_loss_gradient_matches_finite_differences(loss, B, D, seed, scale):
    rng = np.random.default_rng(seed)
    z, t = rng.normal(0, 3, (B, D)), rng.random((B, D))
    dz = np.empty_like(z)
    OPS[loss](dz, z, t, scale)
    numeric = numeric_grad(lambda: OPS[loss](np.empty_like(z), z, t, 1.0) * scale, z)
    assert rel_error(dz, numeric) < 1e-6


@given(B=st.integers(1, 5), D=st.integers(1, 7), seed=st.integers(0, 2**32 - 1))
def test_losses_match_their_definitions(B, D, seed):
    rng = np.random.default_rng(seed)
    z, t = rng.normal(0, 3, (B, D)), rng.random((B, D))
    s = 1 / (1 + np.exp(-z))
    bce = -np.sum(t * np.log(s) + (1 - t) * np.log(1 - s))
    assert sigmoid_bce_forward_backward(np.empty_like(z), z, t, 1.0) == pytest.approx(bce, rel=1e-12)
    assert sigmoid_mse_forward_backward(np.empty_like(z), z, t, 1.0) == pytest.approx(np.sum((s - t) ** 2), rel=1e-12)


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_extreme_logits_float32(loss):
    z = np.array([[-1e4, -1e3, -88.0, -30.0, -1.0, 0.0, 1.0, 30.0, 88.0, 1e3, 1e4]], np.float32)
    for tv in (0.0, 0.3, 1.0):
        t = np.full_like(z, tv)
        dz = np.empty_like(z)
        total = OPS[loss](dz, z, t, 1.0)
        assert np.isfinite(total) and np.isfinite(dz).all() and dz.dtype == np.float32
        z64, t64 = z.astype(np.float64), t.astype(np.float64)
        s64 = np.where(z64 >= 0, 1 / (1 + np.exp(-np.abs(z64))), np.exp(-np.abs(z64)) / (1 + np.exp(-np.abs(z64))))
        if loss == "bce":
            # exact: softplus(z) - z t, with softplus evaluated in float64
            expected = np.sum(np.logaddexp(0, z64) - z64 * t64)
            np.testing.assert_allclose(dz, s64 - t64, atol=1e-7)
        else:
            expected = np.sum((s64 - t64) ** 2)
            np.testing.assert_allclose(dz, 2 * (s64 - t64) * s64 * (1 - s64), atol=1e-7)
        assert total == pytest.approx(expected, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("kernels", ["fused", "reference"])
@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_loss_sum_on_the_device_is_the_reported_loss_times_the_batch(rng, kernels, loss):
    backend = get_backend("cpu", kernels)
    z, t = rng.normal(size=(8, 5)).astype(np.float32), rng.random((8, 5)).astype(np.float32)
    d1, d2, total = np.empty_like(z), np.empty_like(z), np.full(1, np.nan)
    assert loss_sum_forward_backward(backend, loss, d1, z, t, total) is None
    assert total[0] / 8 == loss_forward_backward(backend, loss, d2, z, t)  # the same sum, exactly
    np.testing.assert_array_equal(d1, d2)
    with pytest.raises(ValueError, match="unknown loss"):
        loss_sum_forward_backward(backend, "l1", d1, z, t, total)


def test_reported_loss_is_nats_per_example(rng):
    z, t = rng.normal(size=(8, 5)), rng.random((8, 5))
    dz = np.empty_like(z)
    per_example = loss_forward_backward(get_backend("cpu"), "bce", dz, z, t)
    s = 1 / (1 + np.exp(-z))
    manual = -np.mean(np.sum(t * np.log(s) + (1 - t) * np.log(1 - s), axis=1))
    assert per_example == pytest.approx(manual, rel=1e-12)
    np.testing.assert_allclose(dz, (s - t) / 8, rtol=1e-12)
