"""Metrics against brute-force formulas on tiny inputs."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinydae import ConfigError, DataError, load_dataset
from tinydae.metrics import (GaussianMixture, knn_radii, make_gmm, parzen_evaluate,
                             parzen_log_likelihood, precision_recall)

small = st.integers(0, 2**32 - 1)


def gauss_pdf(x, mu, var):
    d = len(x)
    return math.exp(-sum((a - b) ** 2 for a, b in zip(x, mu)) / (2 * var)) / (2 * math.pi * var) ** (d / 2)


@given(seed=small, sigma=st.floats(0.0, 0.3))
@settings(max_examples=30)
def test_gmm_log_prob_and_score_brute_force(seed, sigma):
    rng = np.random.default_rng(seed)
    K, D = rng.integers(1, 4), rng.integers(1, 4)
    w = rng.random(K) + 0.1
    g = GaussianMixture(rng.random((K, D)), 0.1 + rng.random() * 0.2, w / w.sum())
    x = rng.random((3, D))
    var = g.std**2 + sigma**2
    for row, lp in zip(x, g.log_prob(x, sigma)):
        p = sum(wk * gauss_pdf(row, mk, var) for wk, mk in zip(g.weights, g.means))
        assert lp == pytest.approx(math.log(p), rel=1e-10, abs=1e-10)
    # score = gradient of log p_sigma, by central differences
    h = 1e-6
    for row, sc in zip(x, g.score(x, sigma)):
        for d in range(D):
            e = np.zeros(D)
            e[d] = h
            num = (g.log_prob((row + e)[None], sigma)[0] - g.log_prob((row - e)[None], sigma)[0]) / (2 * h)
            assert sc[d] == pytest.approx(num, rel=1e-5, abs=1e-6)


def test_gmm_dataset():
    d = load_dataset("gmm:3", limit=500)
    assert d.x.shape == (500, 3) and d.x.dtype == np.float32 and 0 <= d.x.min() and d.x.max() <= 1
    assert d.density is not None and d.density.dim == 3
    assert (d.density.means >= 0.3).all() and (d.density.means <= 0.7).all()
    # the samples really come from the density: their mean log p beats shifted points'
    assert d.density.log_prob(d.x).mean() > d.density.log_prob(np.clip(d.x + 0.2, 0, 1)).mean() + 1
    assert load_dataset("gmm").x.shape[1] == 2
    with pytest.raises(DataError):
        load_dataset("gmm:x")
    tr, va = d.split(0.2)
    assert tr.density is d.density


@given(seed=small, h=st.floats(0.05, 2.0))
@settings(max_examples=30)
def test_parzen_brute_force(seed, h):
    rng = np.random.default_rng(seed)
    D = int(rng.integers(1, 5))
    s, x = rng.random((int(rng.integers(1, 6)), D)), rng.random((int(rng.integers(1, 5)), D))
    expected = [math.log(sum(gauss_pdf(xi, si, h * h) for si in s) / len(s)) for xi in x]
    np.testing.assert_allclose(parzen_log_likelihood(s, x, h, batch_size=2), expected, rtol=1e-9, atol=1e-9)


def test_parzen_stays_finite_far_away_and_picks_a_sensible_bandwidth():
    s = np.zeros((4, 784))
    far = np.ones((2, 784))
    assert np.isfinite(parzen_log_likelihood(s, far, 0.01)).all()  # log-sum-exp, no underflow to -inf
    g = make_gmm(2)
    samples, valid, test = g.sample(2000, 1), g.sample(500, 2), g.sample(500, 3)
    r = parzen_evaluate(samples, valid, test)
    assert 0.01 <= r["bandwidth"] <= 0.1  # the true components have std 0.05
    assert abs(r["mean_ll"] - g.log_prob(test).mean()) < 0.3  # close to the exact log-likelihood
    with pytest.raises(ConfigError):
        parzen_log_likelihood(samples, test, 0.0)


def test_knn_radii_brute_force(rng):
    x = rng.random((9, 3))
    for k in (1, 2, 4):
        expected = [sorted(np.linalg.norm(x[i] - x[j]) for j in range(9) if j != i)[k - 1] for i in range(9)]
        np.testing.assert_allclose(knn_radii(x, k, batch_size=4), expected, rtol=1e-10)
    with pytest.raises(ConfigError):
        knn_radii(x, 9)


@given(seed=small, k=st.integers(1, 3))
@settings(max_examples=30)
def test_precision_recall_brute_force(seed, k):
    rng = np.random.default_rng(seed)
    real, fake = rng.random((7, 2)), rng.random((6, 2)) * 1.5
    def radius(pts, i):  # distance to the k-th nearest *other* point
        return sorted(np.linalg.norm(pts[i] - pts[j]) for j in range(len(pts)) if j != i)[k - 1]

    r_real = [radius(real, i) for i in range(len(real))]
    r_fake = [radius(fake, i) for i in range(len(fake))]
    precision = np.mean([any(np.linalg.norm(f - r) <= rr for r, rr in zip(real, r_real)) for f in fake])
    recall = np.mean([any(np.linalg.norm(r - f) <= rf for f, rf in zip(fake, r_fake)) for r in real])
    got = precision_recall(real, fake, k)
    assert got["precision"] == pytest.approx(precision) and got["recall"] == pytest.approx(recall)


def test_precision_recall_extremes(rng):
    real = rng.random((50, 4))
    same = precision_recall(real, real.copy())
    assert same == {"precision": 1.0, "recall": 1.0}
    far = precision_recall(real, real + 10)
    assert far == {"precision": 0.0, "recall": 0.0}
    with pytest.raises(DataError):
        precision_recall(real, real[:, :3])
