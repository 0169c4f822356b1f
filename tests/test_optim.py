"""Optimizers against an independent scalar (pure Python) transcription of their formulas."""
import math

import numpy as np
import pytest

from tinydae import SGD, Adam, AdamW, ConfigError, DAE, get_backend, make_optimizer


def scalar_sgd(p, grads, lr, momentum, nesterov, wd):
    v = 0.0
    for g in grads:
        g = g + wd * p
        v = momentum * v + g
        p -= lr * (g + momentum * v if nesterov else v)
    return p


def scalar_adam(p, grads, lr, b1, b2, eps, wd, decoupled):
    m = v = 0.0
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p -= lr * wd * p
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p -= lr * (m / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + eps)
    return p


def run(opt_factory, steps, rng):
    model = DAE(3, hidden=(2,), dtype="float64", seed=1)
    start = model.params.copy()
    opt = opt_factory(model)
    grads = rng.normal(size=(steps, model.params.size))
    for g in grads:
        model.grads[...] = g
        opt.step()
    return start, grads, model.params.copy(), opt


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.01), (0.9, True, 0.1)])
def test_sgd_matches_formula(rng, momentum, nesterov, wd):
    start, grads, end, _ = run(lambda m: SGD(m, lr=0.05, momentum=momentum, nesterov=nesterov,
                                              weight_decay=wd), 5, rng)
    expected = [scalar_sgd(start[i], grads[:, i], 0.05, momentum, nesterov, wd) for i in range(start.size)]
    np.testing.assert_allclose(end, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls,wd", [(Adam, 0.0), (Adam, 0.05), (AdamW, 0.05)])
def test_adam_matches_formula(rng, cls, wd):
    start, grads, end, opt = run(lambda m: cls(m, lr=0.01, weight_decay=wd), 6, rng)
    expected = [scalar_adam(start[i], grads[:, i], 0.01, 0.9, 0.999, 1e-8, wd, cls is AdamW)
                for i in range(start.size)]
    np.testing.assert_allclose(end, expected, rtol=1e-12, atol=1e-14)
    assert opt.t == 6


def test_state_dict_round_trip_continues_identically(rng):
    _, grads, _, opt = run(lambda m: Adam(m, lr=0.01), 3, rng)
    state = opt.state_dict()
    twin_model = DAE(3, hidden=(2,), dtype="float64", seed=1)
    twin_model.params[...] = opt.model.params
    twin = Adam(twin_model, lr=0.01)
    twin.load_state_dict(state)
    g = rng.normal(size=opt.model.params.size)
    for o in (opt, twin):
        o.model.grads[...] = g
        o.step()
    np.testing.assert_array_equal(opt.model.params, twin_model.params)


@pytest.mark.parametrize("kernels", ["fused", "reference"])
@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_guarded_step_skips_a_non_finite_loss_and_is_uncounted(rng, kernels, name):
    model = DAE(3, hidden=(2,), dtype="float64", seed=1, backend=get_backend("cpu", kernels))
    opt = make_optimizer(name, model, lr=0.1, **({"momentum": 0.9} if name == "sgd" else {}))
    model.grads[...] = rng.normal(size=model.params.size)
    opt.step(guard=np.array([2.5]))  # finite: an ordinary update
    assert opt.t == 1
    params, buffers = model.params.copy(), {k: v.copy() for k, v in opt.buffers.items()}
    model.grads[...] = rng.normal(size=model.params.size)
    for bad in (np.nan, np.inf, -np.inf):
        opt.step(guard=np.array([bad]))
        opt.step_skipped()  # what fit() does when it then reads the non-finite loss
        np.testing.assert_array_equal(model.params, params)
        for k, v in opt.buffers.items():
            np.testing.assert_array_equal(v, buffers[k])
        assert opt.t == 1
    twin = make_optimizer(name, DAE(3, hidden=(2,), dtype="float64", seed=1, backend=model.backend), lr=0.1,
                          **({"momentum": 0.9} if name == "sgd" else {}))
    twin.model.params[...] = params
    twin.load_state_dict(dict(opt.state_dict()))
    for o in (opt, twin):
        o.model.grads[...] = model.grads
    opt.step(guard=np.array([1.0]))
    twin.step()  # the unguarded step, as other callers use it
    np.testing.assert_array_equal(model.params, twin.model.params)
    assert opt.t == twin.t == 2


@pytest.mark.parametrize("name,kwargs", [("adam", dict(lr=-1)), ("adam", dict(lr=float("nan"))),
                                         ("adam", dict(beta1=1.0)), ("sgd", dict(momentum=1.5)),
                                         ("sgd", dict(nesterov=True)), ("rmsprop", {}),
                                         ("sgd", dict(betas=3))])
def test_bad_hyperparameters(name, kwargs):
    with pytest.raises(ConfigError):
        make_optimizer(name, DAE(3, hidden=(2,)), **kwargs)
