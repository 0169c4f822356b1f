import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tinydae.kernels.reference import ACTIVATIONS
from tinydae import DAE, ConfigError, DataError
from tinydae.gradcheck import check_model, random_model
from tinydae.layers import HIDDEN_ACTIVATIONS


def min_abs_preactivation(model, x):
    """Smallest |pre-activation| of any hidden unit: finite differences need it away from 0."""
    smallest = np.inf
    h = x
    for layer in model.layers[:-1]:
        z = h @ layer.W + layer.b
        smallest = min(smallest, np.abs(z).min())
        h = ACTIVATIONS[layer.activation][0](z)
    return smallest


@given(activation=st.sampled_from(HIDDEN_ACTIVATIONS), tied=st.booleans(),
       loss=st.sampled_from(["bce", "mse"]), D=st.integers(1, 7),
       hidden=st.lists(st.integers(1, 5), min_size=1, max_size=3), B=st.integers(1, 4),
       seed=st.integers(0, 2**32 - 1))
def test_whole_model_gradcheck(activation, tied, loss, D, hidden, B, seed):
    model = random_model(D, tuple(hidden), activation, tied, loss, seed)
    rng = np.random.default_rng(seed)
    x, t = rng.random((B, D)), rng.random((B, D))
    if activation in ("relu", "leaky_relu"):
        assume(min_abs_preactivation(model, x) > 1e-3)
    # Central differences carry roundoff of ~eps |L| / h; a saturated model (e.g. MSE with a
    # logit of 20: gradients ~1e-8 against a loss of 0.24) is below what they can resolve.
    loss = model.loss_and_grad(x, t)
    assume(np.abs(model.grads).max() > 1e-3 * abs(loss))
    errors = check_model(model, x, t)
    assert max(errors.values()) < 1e-6, errors


def test_parameters_are_views_of_one_flat_buffer():
    for tied in (False, True):
        m = DAE(12, hidden=(6, 4), tied=tied)
        covered = np.zeros(m.params.size, int)
        for name, view in m.named_params.items():
            assert np.shares_memory(view, m.params) and np.shares_memory(m.named_grads[name], m.grads)
            start = (view.__array_interface__["data"][0] - m.params.__array_interface__["data"][0]) // 4
            covered[start:start + view.size] += 1
        assert (covered == 1).all()  # every element belongs to exactly one parameter
        for layer in m.layers:
            assert np.shares_memory(layer.W, m.params) and np.shares_memory(layer.dW, m.grads)
        m.params[...] = 7
        assert (m.layers[-1].W == 7).all()
    tied = DAE(12, hidden=(6, 4), tied=True)
    assert tied.layers[-1].W.shape == (6, 12) and np.shares_memory(tied.layers[-1].W, tied.layers[0].W)
    assert tied.num_params < DAE(12, hidden=(6, 4)).num_params


def test_seeded_initialisation():
    a, b, c = DAE(784, (1000,), seed=3), DAE(784, (1000,), seed=3), DAE(784, (1000,), seed=4)
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)
    W = a.named_params["enc0.W"]
    assert abs(W.std() / math.sqrt(2 / 784) - 1) < 0.01       # He for relu
    Wout = a.named_params["dec0.W"]
    assert abs(Wout.std() / math.sqrt(2 / (1000 + 784)) - 1) < 0.01  # Glorot for the logits layer
    assert (a.named_params["enc0.b"] == 0).all()
    t = DAE(784, (1000,), activation="tanh")
    assert abs(t.named_params["enc0.W"].std() / math.sqrt(2 / 1784) - 1) < 0.01


def test_forward_shapes_ranges_and_repr(rng):
    m = DAE(20, hidden=(8, 3), activation="softplus")
    x = rng.random((5, 20)).astype(np.float32)
    assert m.encode(x).shape == (5, 3)
    r = m.reconstruct(x)
    assert r.shape == (5, 20) and r.dtype == np.float32 and (r >= 0).all() and (r <= 1).all()
    np.testing.assert_allclose(r, 1 / (1 + np.exp(-m.logits(x).astype(np.float64))), rtol=1e-5)
    assert repr(m) == "DAE(20-8-3-8-20, softplus, tied=False, bce, float32, cpu)"


def test_loss_and_grad_reports_mean_per_example_bce(rng):
    m = DAE(10, hidden=(4,), dtype="float64", seed=2)
    x_in, t = rng.random((6, 10)), rng.random((6, 10))
    s = 1 / (1 + np.exp(-m.logits(x_in)))
    expected = -np.mean(np.sum(t * np.log(s) + (1 - t) * np.log(1 - s), axis=1))
    assert m.loss_and_grad(x_in, t) == pytest.approx(expected, rel=1e-12)
    assert np.abs(m.grads).max() > 0


@pytest.mark.parametrize("tied", [False, True])
def test_loss_sum_and_grad_is_loss_and_grad_without_the_read(rng, tied):
    from tinydae.backend import HOST_READS

    m = DAE(10, hidden=(6, 4), tied=tied, loss="mse", seed=3)
    x_in, t = rng.random((7, 10)).astype(np.float32), rng.random((7, 10)).astype(np.float32)
    loss = m.loss_and_grad(x_in, t)
    grads = m.grads.copy()
    total = np.full(1, np.nan)
    before = HOST_READS["count"]
    assert m.loss_sum_and_grad(x_in, t, total) is None
    assert HOST_READS["count"] == before  # nothing read back
    assert total[0] / 7 == loss
    np.testing.assert_array_equal(m.grads, grads)


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(input_dim=0), "input_dim"),
    (dict(input_dim=5, hidden=()), "hidden"),
    (dict(input_dim=5, hidden=(3, 0)), "hidden"),
    (dict(input_dim=5, activation="gelu"), "activation"),
    (dict(input_dim=5, loss="l1"), "loss"),
    (dict(input_dim=5, dtype="float16"), "dtype"),
    (dict(input_dim=5, seed=-1), "seed"),
])
def test_bad_model_config(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        DAE(**kwargs)


def test_bad_input_shape():
    m = DAE(10, hidden=(4,))
    with pytest.raises(DataError, match=r"\(B, 10\)"):
        m.reconstruct(np.zeros((3, 9)))
    with pytest.raises(DataError):
        m.loss_and_grad(np.zeros(10), np.zeros(10))


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("hidden", [(7,), (9, 5)])
def test_backward_overwrites_stale_gradients(tied, hidden):
    """Backward writes each dW with its first GEMM and zeroes only the accumulated biases, so
    whatever the gradient buffer held before (here NaN) cannot leak into the result: the
    gradient equals that of a fresh model, bit for bit (issue 12: no full-buffer zeroing)."""
    from tinydae import DAE

    rng = np.random.default_rng(5)
    x = rng.random((6, 12), dtype=np.float32)
    fresh = DAE(12, hidden, tied=tied, seed=2)
    stale = DAE(12, hidden, tied=tied, seed=2)
    loss_fresh = fresh.loss_and_grad(x, x)
    stale.grads[...] = np.nan
    loss_stale = stale.loss_and_grad(x, x)
    assert loss_stale == loss_fresh
    np.testing.assert_array_equal(stale.grads, fresh.grads)
    # and a second step on the same model gives the same gradient again (nothing accumulates)
    stale.loss_and_grad(x, x)
    np.testing.assert_array_equal(stale.grads, fresh.grads)


def test_params_given_are_used_and_nothing_is_drawn(monkeypatch, tmp_path):
    """DAE(params=...) starts from the given values without drawing initial weights, and
    restoring a checkpoint goes that way (no second copy of the weights at load, issue 13)."""
    from tinydae import load_model, save_checkpoint

    src = DAE(12, hidden=(5,), tied=True, seed=3)
    src.params[...] = np.random.default_rng(1).standard_normal(src.num_params)
    path = tmp_path / "m.h5"
    save_checkpoint(path, src)

    def no_draw(self):
        raise AssertionError("init_params ran although params were given")

    monkeypatch.setattr(DAE, "init_params", no_draw)
    copy = DAE(12, hidden=(5,), tied=True, seed=3, params=src.params.astype(np.float64))
    np.testing.assert_array_equal(copy.params, src.params)  # float64 given, cast to float32
    loaded = load_model(path, backend="numpy")
    np.testing.assert_array_equal(loaded.params, src.params)
    x = np.random.default_rng(2).random((3, 12), dtype=np.float32)
    np.testing.assert_array_equal(loaded.reconstruct(x), src.reconstruct(x))
    with pytest.raises(ConfigError, match=r"params must have shape \(77,\)"):
        DAE(12, hidden=(5,), tied=True, params=np.ones(76))


def test_params_given_must_be_finite_in_the_model_dtype():
    """A float64 value beyond float32's range would become inf in a float32 model: refused."""
    n = DAE(12, hidden=(5,)).num_params
    big = np.full(n, 0.01)
    big[3] = 1e39
    with pytest.raises(DataError, match="NaN or infinite"):
        DAE(12, hidden=(5,), params=big)
    assert DAE(12, hidden=(5,), dtype="float64", params=big).params[3] == 1e39
