"""Sample-quality metrics and the known-density toy data.

Legend: N reference points, M samples, D dimensions.

  GaussianMixture     isotropic mixture with closed-form density, smoothed density
                      p_sigma = p * N(0, sigma^2 I) and score grad log p_sigma
  parzen_log_likelihood / parzen_evaluate
                      Parzen-window (Gaussian kernel density) log-likelihood of held-out
                      data under the samples; bandwidth chosen on a validation split.
                      Biased in high dimension (Theis et al. 2016): use to compare, not as truth.
  precision_recall    k-nearest-neighbour precision and recall (Kynkaenniemi et al. 2019)

Everything is float64 on the host and batched so that memory stays bounded.
"""
import math

import numpy as np

from tinydae.backend import as_host_array
from tinydae.errors import ConfigError, DataError


def logsumexp(a, axis):
    """log(sum(exp(a))) along axis, without overflow."""
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


def sq_distances(a, b):
    """||a_i - b_j||^2 for a: (n, D), b: (m, D) -> (n, m) float64 (never negative)."""
    a = as_host_array(a, "the first rows", np.float64)
    b = as_host_array(b, "the second rows", np.float64)
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0)


def check_rows(x, name, dim=None, min_rows=1):
    """Check a set of rows: (N, D) finite, N >= min_rows -> float64."""
    x = as_host_array(x, name, np.float64)  # any array in host memory, see tinydae.backend
    if x.ndim != 2 or x.shape[0] < min_rows:
        need = "non-empty" if min_rows == 1 else f"N >= {min_rows}"
        raise DataError(f"{name} must be an (N, D) array with {need} rows, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise DataError(f"{name} has {x.shape[1]} dimensions, expected {dim}")
    if not np.isfinite(x).all():
        raise DataError(f"{name} holds NaN or infinite values")
    return x


# ----------------------------------------------------------------------------------------
# Known density
# ----------------------------------------------------------------------------------------


class GaussianMixture:
    """p(x) = sum_k w_k N(x; mu_k, s^2 I).  Convolved with N(0, sigma^2 I) it stays a mixture,
    with variance v = s^2 + sigma^2, so log p_sigma and its gradient are closed-form:

        log p_sigma(x) = logsumexp_k [log w_k - |x - mu_k|^2 / 2v] - D/2 log(2 pi v)
        grad log p_sigma(x) = sum_k gamma_k(x) (mu_k - x) / v,  gamma = responsibilities

    means: (K, D), std: s, weights: (K,) summing to 1 (default equal)
    """

    def __init__(self, means, std, weights=None):
        self.means = np.asarray(means, np.float64)
        self.std = float(std)
        K = self.means.shape[0]
        self.weights = np.full(K, 1.0 / K) if weights is None else np.asarray(weights, np.float64)
        if self.std <= 0 or self.weights.shape != (K,) or abs(self.weights.sum() - 1) > 1e-9:
            raise ConfigError("GaussianMixture needs std > 0 and K weights summing to 1")

    @property
    def dim(self):
        return self.means.shape[1]

    def sample(self, n, seed=0):
        """-> (n, D) float64 draws (not clipped)."""
        rng = np.random.default_rng([seed, 0x6A17])
        k = rng.choice(len(self.weights), size=n, p=self.weights)
        return self.means[k] + self.std * rng.standard_normal((n, self.dim))

    def _log_terms(self, x, sigma):
        v = self.std**2 + sigma**2
        diff = self.means[None, :, :] - x[:, None, :]                     # (n, K, D)
        return np.log(self.weights)[None] - (diff**2).sum(-1) / (2 * v), diff, v

    def log_prob(self, x, sigma=0.0):
        """log p_sigma(x): (n, D) -> (n,)"""
        x = check_rows(x, "points", self.dim)
        terms, _, v = self._log_terms(x, sigma)
        return logsumexp(terms, 1) - 0.5 * self.dim * math.log(2 * math.pi * v)

    def score(self, x, sigma=0.0):
        """grad_x log p_sigma(x): (n, D) -> (n, D)"""
        x = check_rows(x, "points", self.dim)
        terms, diff, v = self._log_terms(x, sigma)
        gamma = np.exp(terms - logsumexp(terms, 1)[:, None])               # responsibilities
        return (gamma[:, :, None] * diff).sum(1) / v

    def posterior_mean(self, x, sigma):
        """E[x | x~] for x~ = x + sigma eps, by Tweedie: x~ + sigma^2 grad log p_sigma(x~): (n, D) -> (n, D)"""
        x = check_rows(x, "points", self.dim)
        return x + sigma**2 * self.score(x, sigma)

    def factor_moments(self):
        """Per component, the mean and variance of every coordinate: two (K, D) arrays."""
        return self.means, np.full_like(self.means, self.std**2)


def make_gmm(dim, components=4, std=0.05):
    """The built-in mixture for D = dim: means drawn once (fixed seed) in [0.3, 0.7]^D,
    so every component sits at least 6 std inside the unit cube."""
    rng = np.random.default_rng([dim, components, 0x6AA])
    return GaussianMixture(rng.uniform(0.3, 0.7, (components, dim)), std)


# ----------------------------------------------------------------------------------------
# Parzen windows
# ----------------------------------------------------------------------------------------


def parzen_log_likelihood(samples, data, bandwidth, batch_size=256):
    """log of the Gaussian-kernel density of `samples` at each row of `data`.

    log p(x) = logsumexp_i(-|x - s_i|^2 / 2h^2) - log M - D/2 log(2 pi h^2)
    samples: (M, D), data: (N, D) -> (N,) float64
    """
    samples = check_rows(samples, "samples")
    data = check_rows(data, "data", samples.shape[1])
    if not bandwidth > 0:
        raise ConfigError(f"Parzen bandwidth must be > 0, got {bandwidth}")
    M, D = samples.shape
    const = -math.log(M) - 0.5 * D * math.log(2 * math.pi * bandwidth**2)
    out = np.empty(len(data))
    for start in range(0, len(data), batch_size):
        d = sq_distances(data[start:start + batch_size], samples)
        out[start:start + batch_size] = logsumexp(-d / (2 * bandwidth**2), 1) + const
    return out


DEFAULT_BANDWIDTHS = tuple(np.round(np.logspace(-2, 0, 13), 4))


def parzen_evaluate(samples, valid, test, bandwidths=DEFAULT_BANDWIDTHS, batch_size=256):
    """Choose the bandwidth that maximises the mean log-likelihood of `valid`, then report
    the mean (and standard error) log-likelihood of `test` at that bandwidth.

    -> {'bandwidth', 'mean_ll', 'stderr', 'valid_ll': {h: mean}}
    """
    samples = np.asarray(samples, np.float64)
    M, D = samples.shape
    valid, test = np.asarray(valid), np.asarray(test)
    hs = [float(h) for h in bandwidths]

    def log_likelihood(d, h):  # log of (1/M) sum_i N(x; s_i, h^2 I), per row of d
        return logsumexp(-d / (2 * h * h), 1) - math.log(M) - 0.5 * D * math.log(2 * math.pi * h * h)

    # Each block of rows' distances computed once for every bandwidth; memory bounded by the block.
    total = dict.fromkeys(hs, 0.0)
    for start in range(0, len(valid), batch_size):
        d = sq_distances(valid[start:start + batch_size], samples)
        for h in hs:
            total[h] += float(log_likelihood(d, h).sum())
    valid_ll = {h: total[h] / len(valid) for h in hs}
    best = max(valid_ll, key=valid_ll.get)
    ll = np.concatenate([log_likelihood(sq_distances(test[start:start + batch_size], samples), best)
                         for start in range(0, len(test), batch_size)])
    return dict(bandwidth=best, mean_ll=float(ll.mean()), stderr=float(ll.std(ddof=1) / math.sqrt(len(ll)))
                if len(ll) > 1 else 0.0, valid_ll=valid_ll)


# ----------------------------------------------------------------------------------------
# k-NN precision and recall
# ----------------------------------------------------------------------------------------


def knn_radii(x, k=3, batch_size=512):
    """Distance from each row to its k-th nearest other row. (n, D) -> (n,)"""
    x = check_rows(x, "points")
    if not 1 <= k < len(x):
        raise ConfigError(f"k must be in [1, {len(x) - 1}] for {len(x)} points, got {k}")
    radii = np.empty(len(x))
    for start in range(0, len(x), batch_size):
        d = sq_distances(x[start:start + batch_size], x)
        rows = np.arange(d.shape[0])
        d[rows, start + rows] = np.inf  # a point is not its own neighbour
        radii[start:start + batch_size] = np.sqrt(np.partition(d, k - 1, axis=1)[:, k - 1])
    return radii


def covered(points, centres, radii, batch_size=512):
    """For each point: is it inside any ball (centre_j, radius_j)? -> (n,) bool"""
    inside = np.empty(len(points), bool)
    r2 = radii**2
    for start in range(0, len(points), batch_size):
        inside[start:start + batch_size] = (sq_distances(points[start:start + batch_size], centres)
                                            <= r2[None, :]).any(1)
    return inside


def precision_recall(real, fake, k=3):
    """Improved precision and recall (Kynkaenniemi et al. 2019) in pixel space.

    precision: fraction of fake samples inside the k-NN ball of some real point
    recall:    fraction of real points inside the k-NN ball of some fake sample
    real: (N, D), fake: (M, D) -> {'precision', 'recall'}
    """
    real = check_rows(real, "real data")
    fake = check_rows(fake, "samples", real.shape[1])
    return dict(precision=float(covered(fake, real, knn_radii(real, k)).mean()),
                recall=float(covered(real, fake, knn_radii(fake, k)).mean()))
