"""The boundary density against Monte Carlo, Tweedie and the Beta formulas; claim1_check's
instrument (the ideal DAE scores 1, the trivial controls do not) and its output."""
import math

import numpy as np
import pytest

from tinydae import ConfigError
from tinydae.science.densities import (CLAIM1_QUICK, CONTROLS, GROUPS, METRICS, POINTS, BoundaryMixture, beta_rule,
                               claim1_check, claim1_table, gaussian_score, make_boundary_mixture,
                               nearest_mean_pull, run_claim1, score_agreement)

SIGMA = 0.1


def tiny_density():
    """K = 2, D = 2: every kind of factor (edge singularities a < 1 and b < 1, both spikes,
    no spike, a U-shaped Beta), unequal weights."""
    return BoundaryMixture(a=[[0.5, 3.0], [2.5, 0.7]], b=[[3.0, 0.6], [0.8, 0.7]],
                           p0=[[0.6, 0.2], [0.0, 0.1]], p1=[[0.0, 0.3], [0.25, 0.0]], weights=[0.35, 0.65])


@pytest.mark.parametrize("a, b", [(0.4, 3.0), (4.0, 0.5), (0.5, 0.5), (2.5, 3.7), (1.3, 1.7), (1.0, 1.0), (60.0, 40.0)])
def test_beta_rule_integrates_the_beta_moments(a, b):
    x, lw = beta_rule(a, b)
    w = np.exp(lw)
    assert ((x > 0) & (x < 1)).all()
    mean, second = a / (a + b), a * (a + 1) / ((a + b) * (a + b + 1))
    np.testing.assert_allclose([w.sum(), w @ x, w @ x**2], [1.0, mean, second], rtol=0, atol=1e-8)


def test_sample_moments_and_spikes_match_the_formulas():
    d = tiny_density()
    n = 200_000
    x = d.sample(n, seed=3)
    assert x.shape == (n, 2) and x.min() >= 0 and x.max() <= 1
    m, v = d.factor_moments()
    mean = d.weights @ m
    var = d.weights @ (v + m**2) - mean**2
    se = np.sqrt(var / n)
    assert (np.abs(x.mean(0) - mean) < 5 * se).all(), (x.mean(0), mean)
    np.testing.assert_allclose(x.var(0), var, rtol=0.02)
    for value, spike in ((0.0, d.p0), (1.0, d.p1)):
        frac = d.weights @ spike
        assert (np.abs((x == value).mean(0) - frac) < 5 * np.sqrt(frac * (1 - frac) / n) + 1e-9).all()
    assert not np.array_equal(x, d.sample(n, seed=4))


def test_log_prob_and_posterior_mean_match_importance_sampling():
    """p_sigma(t) = E_x[N(t; x, sigma^2)] and E[x | t] = E_x[x N(t; x, sigma^2)] / p_sigma(t),
    estimated with draws of x; tolerances from the estimators' standard errors."""
    d = tiny_density()
    x = d.sample(400_000, seed=11)
    t = np.array([[0.03, 0.5], [-0.15, 1.08], [0.7, 0.97], [0.5, 0.2], [1.0, 0.0]])
    lp, post = d.log_prob(t, SIGMA), d.posterior_mean(t, SIGMA)
    for i, ti in enumerate(t):
        w = np.exp(-((x - ti) ** 2).sum(1) / (2 * SIGMA**2)) / (2 * math.pi * SIGMA**2)
        p = w.mean()
        assert abs(math.log(p) - lp[i]) < 5 * w.std() / math.sqrt(len(w)) / p, (i, math.log(p), lp[i])
        mc = (w[:, None] * x).sum(0) / w.sum()
        se = np.sqrt((w[:, None] ** 2 * (x - mc) ** 2).sum(0)) / w.sum()  # self-normalised estimator
        assert (np.abs(mc - post[i]) < 5 * se + 1e-6).all(), (i, mc, post[i], se)


def test_tweedie_score_is_the_gradient_of_log_prob():
    """score() is (E[x | x~] - x~) / sigma^2; log_prob() never uses the posterior mean, so its
    finite differences check Tweedie's identity (spikes included)."""
    d = tiny_density()
    rng = np.random.default_rng(5)
    t = np.concatenate([rng.uniform(-0.3, 1.3, (20, 2)), [[0.0, 1.0], [0.02, 0.99]]])
    h = 1e-5
    fd = np.stack([(d.log_prob(t + h * e, SIGMA) - d.log_prob(t - h * e, SIGMA)) / (2 * h) for e in np.eye(2)], 1)
    g = d.score(t, SIGMA)
    assert np.abs(g).max() > 5  # points far enough out to test large scores
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-5)
    post = d.posterior_mean(t, SIGMA)
    np.testing.assert_allclose(post, t + SIGMA**2 * g, rtol=0, atol=1e-12)
    assert ((post > 0) & (post < 1)).all()


def test_quadrature_converges_on_the_built_in_density():
    d = make_boundary_mixture(4)
    t = d.sample(300, seed=2) + SIGMA * np.random.default_rng(2).standard_normal((300, 4))
    fine, coarse = d.with_quadrature(64), d.with_quadrature(8)
    np.testing.assert_allclose(d.log_prob(t, SIGMA), fine.log_prob(t, SIGMA), rtol=0, atol=1e-5)
    np.testing.assert_allclose(d.score(t, SIGMA), fine.score(t, SIGMA), rtol=0, atol=1e-4)
    np.testing.assert_allclose(coarse.score(t, SIGMA), fine.score(t, SIGMA), rtol=0, atol=1e-3)


def test_score_agreement_on_known_vectors():
    g = np.array([[1.0, 2.0], [-3.0, 0.5], [0.2, -1.0]])
    r = score_agreement(2 * g, g)
    assert r["cosine_mean"] == pytest.approx(1) and r["slope"] == pytest.approx(2)
    assert r["norm_ratio_median"] == pytest.approx(2) and r["rel_error_median"] == pytest.approx(1)
    assert score_agreement(-g, g)["cosine_mean"] == pytest.approx(-1)
    mask = np.array([[True, False], [False, False], [False, True]])  # the second point drops out
    v = np.array([[1.0, 99.0], [5.0, 5.0], [7.0, -3.0]])
    r = score_agreement(v, g, mask)
    assert r["points"] == 2 and r["slope"] == pytest.approx((1 * 1 + 3) / (1 + 1))
    assert r["cosine_mean"] == pytest.approx(1)
    assert math.isnan(score_agreement(v, g, np.zeros_like(mask))["slope"])


def _eval_points(d, n=2000, seed=7):
    x = d.sample(n, seed)
    return x, x + SIGMA * np.random.default_rng(seed).standard_normal(x.shape)


def test_ideal_dae_scores_one_and_trivial_controls_fail_at_the_boundary():
    d = make_boundary_mixture(2)
    train, t = _eval_points(d)
    g = d.score(t, SIGMA)
    boundary = np.minimum(np.abs(t), np.abs(t - 1)) < 2 * SIGMA
    assert 0.5 < boundary.mean() < 0.95
    ideal = score_agreement((d.with_quadrature(8).posterior_mean(t, SIGMA).astype(np.float32) - t) / SIGMA**2, g)
    assert ideal["cosine_mean"] > 0.9999 and abs(ideal["slope"] - 1) < 1e-3, ideal
    for v in (nearest_mean_pull(d, t, SIGMA), gaussian_score(train, t, SIGMA)):
        assert score_agreement(v, g, boundary)["cosine_mean"] < 0.6
        assert score_agreement(v, g)["slope"] < 0.6


def test_nearest_mean_control_is_near_exact_on_an_interior_density():
    """The control is not broken: on four well-separated peaked Betas inside [0.3, 0.7]^2 (like
    gmm:D) it scores ~1, so its failure above is the boundary's doing."""
    mu = np.array([[0.3, 0.3], [0.3, 0.7], [0.7, 0.3], [0.7, 0.7]])
    d = BoundaryMixture(200 * mu, 200 * (1 - mu))
    _, t = _eval_points(d)
    assert score_agreement(nearest_mean_pull(d, t, SIGMA), d.score(t, SIGMA))["cosine_mean"] > 0.95


def test_bad_parameters_raise_config_errors():
    with pytest.raises(ConfigError, match="a, b > 0"):
        BoundaryMixture([[0.0]], [[1.0]])
    with pytest.raises(ConfigError, match="p0 \\+ p1 <= 1"):
        BoundaryMixture([[1.0]], [[1.0]], p0=[[0.7]], p1=[[0.5]])
    with pytest.raises(ConfigError, match="one shape"):
        BoundaryMixture([[1.0, 2.0]], [[1.0]])
    with pytest.raises(ConfigError, match="sigma > 0"):
        tiny_density().score(np.full((1, 2), 0.5), 0.0)


def test_quick_claim1_check_returns_finite_figures_with_the_documented_keys():
    (r,) = run_claim1(quick=True, log=lambda *_: None)
    assert r["dim"] == 2 and r["seeds"] == list(CLAIM1_QUICK["boundary"]["seeds"]) and len(r["seeds"]) == 2
    assert r["train_corruption"] == "gaussian:0.1" and [d["told_sigma"] for d in r["daes"]] == [False, False]
    for at in POINTS:
        (res,) = r["results"][at].values()
        assert set(res) == {"bce", "mse", *CONTROLS}
        for method, by_group in res.items():
            assert set(by_group) == set(GROUPS)
            for by_metric in by_group.values():
                assert set(by_metric) == set(METRICS)
                for s in by_metric.values():
                    assert len(s["per_seed"]) == 2 and np.isfinite([s["mean"], s["sd"], *s["per_seed"]]).all()
        ideal = res["posterior_mean"]["all"]
        assert ideal["cosine_mean"]["mean"] > 0.9999 and abs(ideal["slope"]["mean"] - 1) < 1e-3
    table = claim1_table(r)
    assert all(f"| {m} |" in table for m in r["results"]["corrupted"]["0.1"])
    assert "corrupted points" in table and "clean points" in table


def test_a_trained_bce_dae_follows_the_score_and_beats_the_controls():
    r = claim1_check(make_boundary_mixture(2), (SIGMA,), seeds=(1,), losses=("bce",), n_train=5000, n_eval=1000,
                     hidden=(64, 64), epochs=8)["results"]["corrupted"][f"{SIGMA:g}"]
    bce = {g: {k: s["mean"] for k, s in r["bce"][g].items()} for g in GROUPS}
    assert abs(bce["all"]["slope"] - 1) < 0.1, bce
    for control in ("nearest_mean", "gaussian"):
        assert bce["boundary"]["cosine_mean"] > r[control]["boundary"]["cosine_mean"]["mean"] + 0.3


def test_claim1_presets_and_their_mistakes():
    from tinydae.science.densities import claim1_config, claim1_daes, claim1_hidden

    assert claim1_daes((0.1,)) == [("bce", "bce", False), ("mse", "mse", False)]
    assert claim1_daes((0.01, 1.0)) == [("bce", "bce", True), ("mse", "mse", True), ("bce_blind", "bce", False)]
    cfg = claim1_config("gmm", dims=(2, 16))
    assert claim1_hidden(cfg, 2) == (64, 64) and claim1_hidden(cfg, 16) == (256, 256)
    assert claim1_hidden(claim1_config("ladder"), 64) == (256, 256)
    with pytest.raises(ConfigError, match="presets"):
        claim1_config("nope")
    with pytest.raises(ConfigError, match="got sigma"):
        claim1_config("ladder", sigma=0.1)
    with pytest.raises(ConfigError, match="sequences"):
        claim1_config("boundary", sigmas=0.1)
    with pytest.raises(ConfigError, match="sigmas > 0"):
        claim1_check(make_boundary_mixture(2), (0.1, 0.0), seeds=(0,))


def test_kernel_posterior_mean_against_brute_force_and_its_limits():
    """The empirical-law posterior mean, chunked, equals the sum written out; at a tiny sigma it is
    the nearest training draw, at a huge one their mean."""
    from tinydae.science.densities import kernel_posterior_mean

    rng = np.random.default_rng(4)
    train, x = rng.random((300, 5)), rng.random((37, 5))
    sigma = 0.2
    w = np.exp(-((x[:, None, :] - train[None]) ** 2).sum(-1) / (2 * sigma**2))
    want = (w @ train) / w.sum(1, keepdims=True)
    np.testing.assert_allclose(kernel_posterior_mean(train, x, sigma, chunk=8), want, rtol=1e-10, atol=1e-12)
    nearest = train[np.argmin(((x[:, None, :] - train[None]) ** 2).sum(-1), 1)]
    np.testing.assert_allclose(kernel_posterior_mean(train, x, 1e-4), nearest, atol=1e-9)
    np.testing.assert_allclose(kernel_posterior_mean(train, x, 1e4), np.tile(train.mean(0), (37, 1)), atol=1e-6)


def test_claim1_along_a_ladder_separates_what_it_measures():
    """Structure, and the checks inside: the ideal DAE scores 1 at every level (the instrument), the
    kernel mean of the training draws beats the single-Gaussian score, and the logit error of the
    saturation check is the one written out."""
    from tinydae.science.densities import _logit_error

    result = claim1_check(make_boundary_mixture(6), sigmas=(0.05, 0.5), seeds=(0,), n_train=800, n_eval=120,
                          hidden=(16,), epochs=1)
    assert result["train_corruption"] == "gaussian:0.05..0.5"
    assert [d["name"] for d in result["daes"]] == ["bce", "mse", "bce_blind"]
    for at in POINTS:
        assert list(result["results"][at]) == ["0.05", "0.5"]
        for k, res in result["results"][at].items():
            assert set(res) == {"bce", "mse", "bce_blind", *CONTROLS}
            assert res["posterior_mean"]["all"]["cosine_mean"]["mean"] > 0.999, (at, k)
    for k, res in result["results"]["corrupted"].items():
        assert res["kernel_mean"]["all"]["cosine_mean"]["mean"] > res["gaussian"]["all"]["cosine_mean"]["mean"], k
        assert set(result["saturation"][k]) == {"bce", "mse", "bce_blind"}
    assert "saturated share" in claim1_table(result) and "cosine σ=0.05" in claim1_table(result)
    r, e = np.array([[0.5, 0.9], [0.001, 0.2]]), np.array([[0.5, 0.99], [0.01, 0.2]])
    mask = np.array([[False, True], [True, False]])
    want = (abs(np.log(0.9 / 0.1) - np.log(0.99 / 0.01)) + abs(np.log(0.001 / 0.999) - np.log(0.01 / 0.99))) / 2
    assert _logit_error(r, e, mask) == pytest.approx(want)


def test_gmm_posterior_mean_is_tweedie_and_matches_monte_carlo():
    """The Gaussian mixture's E[x | x~] (used by the one claim-1 check for evaluate --theorem)
    against importance sampling over the mixture's own draws."""
    from tinydae.metrics import make_gmm

    g = make_gmm(3)
    x = np.array([[0.5, 0.4, 0.6], [0.2, 0.9, 0.5]])
    sigma = 0.1
    draws = g.sample(400_000, seed=3)
    w = np.exp(-((x[:, None, :] - draws[None]) ** 2).sum(-1) / (2 * sigma**2))
    want = (w @ draws) / w.sum(1, keepdims=True)
    np.testing.assert_allclose(g.posterior_mean(x, sigma), want, atol=2e-3)
    means, var = g.factor_moments()
    assert means.shape == var.shape == (4, 3) and np.allclose(var, 0.05**2)
