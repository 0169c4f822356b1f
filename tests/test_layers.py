import os

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

from gradcheck_helpers import numeric_grad, rel_error
from tinydae.kernels.activations import BY_NAME, RECORDS
from tinydae.backend import get_backend
from tinydae.layers import ACTIVATIONS, HIDDEN_ACTIVATIONS, Linear, standalone

KINKED = ("relu", "leaky_relu")
shapes = st.tuples(st.integers(1, 5), st.integers(1, 6))


@given(act=st.sampled_from(sorted(ACTIVATIONS)), shape=shapes, seed=st.integers(0, 2**32 - 1))
def test_activation_pair_matches_finite_differences(act, shape, seed):
    rng = np.random.default_rng(seed)
    fwd, bwd = ACTIVATIONS[act]
    z = rng.normal(0, 2, shape)
    if act in KINKED:
        assume(np.abs(z).min() > 1e-3)  # the derivative is undefined at 0
    dy = rng.normal(0, 1, shape)
    analytic = bwd(dy, z if BY_NAME[act].reads == "z" else fwd(z))  # what its gradient reads
    numeric = numeric_grad(lambda: float(np.sum(dy * fwd(z))), z)
    assert rel_error(analytic, numeric) < 1e-6


def test_activations_match_their_definitions():
    z = np.linspace(-30, 30, 121)
    f = {name: pair[0] for name, pair in ACTIVATIONS.items()}
    np.testing.assert_allclose(f["sigmoid"](z), 1 / (1 + np.exp(-z)), rtol=1e-14)
    np.testing.assert_allclose(f["softplus"](z), np.logaddexp(0, z), rtol=1e-14)  # log(1+e^z) naively loses digits
    np.testing.assert_array_equal(f["relu"](z), np.where(z > 0, z, 0))
    np.testing.assert_allclose(f["leaky_relu"](z), np.where(z > 0, z, 0.01 * z))
    np.testing.assert_allclose(f["silu"](z), z / (1 + np.exp(-z)), rtol=1e-14)
    # extreme inputs stay finite in float32
    big = np.array([-1e4, -100, 100, 1e4], np.float32)
    for act in HIDDEN_ACTIVATIONS:
        y = ACTIVATIONS[act][0](big)
        assert np.isfinite(y).all() and np.isfinite(ACTIVATIONS[act][1](np.ones_like(big), y)).all()


def test_each_activation_record_is_complete_and_the_c_page_computes_it():
    """One record per activation (kernels/activations.py): every hidden one offered by the CLI,
    He or Glorot, an ONNX emitter, and the C page's act() written with the record's expression."""
    page = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "embed",
                             "dae.c")).read()
    assert set(HIDDEN_ACTIVATIONS) == {a.name for a in RECORDS} - {"identity"}
    assert [a.name for a in RECORDS if a.he] == ["relu", "leaky_relu"]
    for a in RECORDS:
        assert a.reads in ("y", "z") and callable(a.onnx)
        if a.name != "identity":
            assert f'if (!strcmp(name, "{a.name}")) return {a.c};' in page, a.name


@given(act=st.sampled_from(sorted(ACTIVATIONS)), B=st.integers(1, 4), I=st.integers(1, 5),
       O=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_linear_layer_gradients(act, B, I, O, seed):
    rng = np.random.default_rng(seed)
    layer = standalone(Linear(O, act), (I,), get_backend("cpu"))
    x, W, b, dW, db = rng.normal(size=(B, I)), layer.W, layer.b, layer.dW, layer.db
    W[...], b[...] = rng.normal(size=(I, O)), rng.normal(size=O)
    if act in KINKED:
        assume(np.abs(x @ W + b).min() > 1e-3)
    dy = rng.normal(size=(B, O))
    y, cache = layer.forward(x)
    np.testing.assert_allclose(y, ACTIVATIONS[act][0](x @ W + b), rtol=1e-12, atol=1e-12)
    dx = layer.backward(dy, cache)

    def loss():
        return float(np.sum(dy * layer.forward(x)[0]))

    for analytic, var in ((dx, x), (dW, W), (db, b)):
        assert rel_error(analytic, numeric_grad(loss, var), floor=1e-4) < 1e-6  # hypothesis found all-saturated tanh


def test_backward_adds_into_gradient_buffers(rng):
    layer = standalone(Linear(2, "tanh"), (3,), get_backend("cpu"))
    layer.write_dW = False  # as for a tied encoder's second use of its W: backward adds
    dW, db = layer.dW, layer.db
    layer.b[...] = rng.normal(size=2)
    x, dy = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
    y, cache = layer.forward(x)
    layer.backward(dy, cache)
    once_W, once_b = dW.copy(), db.copy()
    layer.backward(dy, cache)
    np.testing.assert_allclose(dW, 2 * once_W)
    np.testing.assert_allclose(db, 2 * once_b)
    assert np.abs(once_W).max() > 0
