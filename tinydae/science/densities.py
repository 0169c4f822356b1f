"""Known densities with mass at and near the edges of [0, 1]^D, and claim 1 checked on them.

Legend: n points, K mixture components, D dimensions, J quadrature atoms per 1-D factor.

Claim 1 (Creswell et al., after Alain & Bengio): a DAE trained with Gaussian corruption sigma
learns r(x~) -> E[x | x~], and by Tweedie's formula E[x | x~] = x~ + sigma^2 grad log p_sigma(x~),
so (r(x) - x) / sigma^2 follows the score of the smoothed density.  The Gaussian mixture of
`gmm:D` sits inside [0.3, 0.7]^D, where a sigmoid output is linear enough that BCE and MSE
cannot differ, and on gmm:16 "pull to the nearest component mean" is already the exact score
(cosine 1.000 at sigma = 0.1).

The density here, `BoundaryMixture`, is a mixture of K product laws, each 1-D factor a
spike-and-Beta law
    f_kd = p0_kd delta_0 + p1_kd delta_1 + (1 - p0_kd - p1_kd) Beta(a_kd, b_kd).
Why this one:
  - exact zeros and ones (the spikes), as in MNIST (82% of its pixels are exactly 0): there the
    ideal r(x~) is close to 0 or 1, BCE must drive the logits far out and MSE's gradient
    (r - x) r (1 - r) fades, which is where the two losses can differ;
  - Beta parts with a < 1 or b < 1 pile continuous mass against an edge (faint ink, saturation);
  - a "stroke" factor is bimodal inside one component (0, or near 1), so the score at a point
    is not a pull towards any mean: the trivial controls of the old check fail here;
  - and it stays exactly computable: given the component, the factors are independent, so
    p_sigma(x~) = sum_k w_k prod_d Z_kd(x~_d) with 1-D integrals
    Z_kd(t) = int f_kd(x) N(t; x, sigma^2) dx, and E[x_d | x~] = sum_k gamma_k(x~) m_kd(x~_d)
    with m_kd(t) = int x f_kd(x) N(t; x, sigma^2) dx / Z_kd(t) and gamma the responsibilities.
Each Beta part is replaced once by J weighted atoms (a quadrature rule, `beta_rule`, built so
that the edge singularity x^(a-1) disappears); with the two spikes every factor is then a
discrete measure, and Z, m and log p_sigma are log-sum-exps over atoms: float64, vectorised,
no overflow for any x~.  E[x | x~] minimises both the MSE and the BCE pointwise, so it is what
an unconstrained DAE converges to for either loss.

claim1_check, the one claim-1 check (at one sigma, or along a ladder of them; also on the
Gaussian mixture of gmm:D for `evaluate --theorem`), trains BCE and MSE DAEs on draws from such
a density and compares v = (r(x) - x) / sigma^2 with the exact score beside controls (the kernel
posterior mean of the same draws, nearest-mean pull, single-Gaussian score) and the ideal DAE
(the exact posterior mean, a check of the instrument).
"""
import math
import time

import numpy as np

from tinydae.corruption import gaussian
from tinydae.data import Dataset
from tinydae.errors import ConfigError
from tinydae.metrics import check_rows, logsumexp
from tinydae.model import DAE
from tinydae.optim import Adam
from tinydae.science.stats import mean_sd
from tinydae.train import fit

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


# ----------------------------------------------------------------------------------------
# The density
# ----------------------------------------------------------------------------------------


def _gauss_legendre(lo, hi, panels, order):
    """Composite Gauss-Legendre rule on [lo, hi]: nodes, weights, both (panels * order,)."""
    z, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(lo, hi, panels + 1)
    half = np.diff(edges)[:, None] / 2
    return (edges[:-1, None] + half * (z + 1)).ravel(), (half * w).ravel()


def beta_rule(a, b, panels=16, order=8):
    """Atoms x: (J,) in (0, 1) and log-weights: (J,), J = 2 * panels * order, such that
    sum_j exp(logw_j) h(x_j) ~= int Beta(x; a, b) h(x) dx for smooth h.

    On [0, 1/2] the substitution x = s^p turns x^(a-1) dx into p s^(pa - 1) ds: with p = 1/a
    when a < 1 that is constant (the integrable singularity at 0 is gone); with p = 2 when
    a >= 1 it is at least s^1, and smoother than x^(a-1) for non-integer a, so the composite
    Gauss-Legendre rule converges faster.  [1/2, 1] is done the same way in y = 1 - x with b.

    >>> x, lw = beta_rule(0.5, 2.0)
    >>> round(float(np.exp(lw).sum()), 10), round(float(np.exp(lw) @ x), 10)  # mass, mean a/(a+b)
    (1.0, 0.2)
    """
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    xs, lws = [], []
    for near, far, flip in ((a, b, False), (b, a, True)):  # exponents at the near and far edge
        p = 1.0 / near if near < 1 else 2.0
        s, w = _gauss_legendre(0.0, 0.5 ** (1 / p), panels, order)
        y = s**p  # distance from the near edge
        lws.append(np.log(w) + math.log(p) + (p * near - 1) * np.log(s) + (far - 1) * np.log1p(-y) - log_beta)
        xs.append(1 - y if flip else y)
    return np.concatenate(xs), np.concatenate(lws)


class BoundaryMixture:
    """p(x) = sum_k w_k prod_d f_kd(x_d) on [0, 1]^D, each factor a spike-and-Beta law
        f_kd = p0_kd delta_0 + p1_kd delta_1 + (1 - p0_kd - p1_kd) Beta(a_kd, b_kd).

    a, b: (K, D) > 0;  p0, p1: (K, D) >= 0 with p0 + p1 <= 1 (default 0);  weights: (K,)
    summing to 1 (default equal);  panels, order: the Beta quadrature (`beta_rule`).
    The smoothed density is p_sigma = p * N(0, sigma^2 I), the law of x~ = x + sigma eps.
    """

    def __init__(self, a, b, p0=None, p1=None, weights=None, panels=16, order=8):
        self.a, self.b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        K, D = self.a.shape if self.a.ndim == 2 else (0, 0)
        zero = np.zeros((K, D))
        self.p0 = zero if p0 is None else np.asarray(p0, np.float64)
        self.p1 = zero if p1 is None else np.asarray(p1, np.float64)
        self.weights = np.full(K, 1.0 / max(K, 1)) if weights is None else np.asarray(weights, np.float64)
        if K == 0 or any(v.shape != (K, D) for v in (self.b, self.p0, self.p1)) or self.weights.shape != (K,):
            raise ConfigError(f"BoundaryMixture needs a, b, p0, p1 of one shape (K, D) and K weights; got "
                              f"{[np.shape(v) for v in (self.a, self.b, self.p0, self.p1, self.weights)]}")
        if not ((self.a > 0).all() and (self.b > 0).all() and np.isfinite(self.a + self.b).all()):
            raise ConfigError("BoundaryMixture needs finite Beta parameters a, b > 0")
        if (self.p0 < 0).any() or (self.p1 < 0).any() or (self.p0 + self.p1 > 1 + 1e-12).any():
            raise ConfigError("BoundaryMixture needs spike masses p0, p1 >= 0 with p0 + p1 <= 1")
        if (self.weights <= 0).any() or abs(self.weights.sum() - 1) > 1e-9:
            raise ConfigError("BoundaryMixture needs positive component weights summing to 1")
        self.panels, self.order = int(panels), int(order)
        # Every factor becomes a discrete measure: J Beta atoms, then the spikes at 0 and 1.
        J = 2 * self.panels * self.order
        self.atoms = np.empty((K, D, J + 2))                          # (K, D, J + 2)
        self.log_mass = np.empty((K, D, J + 2))
        with np.errstate(divide="ignore"):  # a spike of mass 0 is an atom of log-mass -inf
            for k in range(K):
                for d in range(D):
                    x, lw = beta_rule(self.a[k, d], self.b[k, d], self.panels, self.order)
                    c = 1 - self.p0[k, d] - self.p1[k, d]
                    self.atoms[k, d] = np.concatenate([x, [0.0, 1.0]])
                    self.log_mass[k, d] = np.concatenate([lw + np.log(max(c, 0.0)),
                                                          [np.log(self.p0[k, d]), np.log(self.p1[k, d])]])

    def __repr__(self):
        return f"BoundaryMixture(K={self.components}, D={self.dim}, J={self.atoms.shape[-1]})"

    @property
    def dim(self):
        return self.a.shape[1]

    @property
    def components(self):
        return self.a.shape[0]

    def with_quadrature(self, panels, order=None):
        """The same density with another quadrature rule (to check the rule's error)."""
        return BoundaryMixture(self.a, self.b, self.p0, self.p1, self.weights, panels, order or self.order)

    def factor_moments(self):
        """Mean and variance of every factor, from the Beta formulas: two (K, D) arrays."""
        a, b, c = self.a, self.b, 1 - self.p0 - self.p1
        m1 = self.p1 + c * a / (a + b)
        m2 = self.p1 + c * a * (a + 1) / ((a + b) * (a + b + 1))
        return m1, m2 - m1**2

    def mean(self):
        """E[x]: (D,)"""
        return self.weights @ self.factor_moments()[0]

    def sample(self, n, seed=0):
        """-> (n, D) float64 draws in [0, 1], exact 0s and 1s included."""
        rng = np.random.default_rng([seed, 0xBE7A])
        k = rng.choice(self.components, size=n, p=self.weights)
        u = rng.random((n, self.dim))
        cont = rng.beta(self.a[k], self.b[k])
        return np.where(u < self.p0[k], 0.0, np.where(u < self.p0[k] + self.p1[k], 1.0, cont))

    def _smoothed(self, x, sigma, chunk_elems=1 << 22):
        """x~: (n, D) -> log p_sigma(x~): (n,), E[x | x~]: (n, D)."""
        x = check_rows(x, "points", self.dim)
        if not sigma > 0:
            raise ConfigError(f"the smoothed density needs sigma > 0 (p itself has atoms), got {sigma}")
        n, (K, D, J) = len(x), self.atoms.shape
        log_p, post = np.empty(n), np.empty((n, D))
        step = max(1, chunk_elems // (K * D * J))  # rows per chunk: bounded (n, K, D, J) temporaries
        for i in range(0, n, step):
            t = x[i:i + step, None, :, None]                                         # (c, 1, D, 1)
            e = self.log_mass[None] - (t - self.atoms[None]) ** 2 / (2 * sigma**2)  # (c, K, D, J)
            top = e.max(-1, keepdims=True)  # factor out the largest atom: no underflow far from [0, 1]
            p = np.exp(e - top)
            s = p.sum(-1)
            log_z = top[..., 0] + np.log(s) - LOG_SQRT_2PI - math.log(sigma)         # (c, K, D)
            m = (p * self.atoms[None]).sum(-1) / s          # E[x_d | x~_d, component k]: (c, K, D)
            lk = np.log(self.weights)[None] + log_z.sum(-1)                          # (c, K)
            log_p[i:i + step] = logsumexp(lk, 1)
            gamma = np.exp(lk - log_p[i:i + step, None])                             # responsibilities
            post[i:i + step] = np.einsum("ck,ckd->cd", gamma, m)
        return log_p, post

    def log_prob(self, x, sigma):
        """log p_sigma(x~): (n, D) -> (n,)"""
        return self._smoothed(x, sigma)[0]

    def posterior_mean(self, x, sigma):
        """E[x | x~]: (n, D) -> (n, D), values in [0, 1]: the ideal DAE's r(x~)."""
        return self._smoothed(x, sigma)[1]

    def score(self, x, sigma):
        """grad log p_sigma(x~): (n, D) -> (n, D), by Tweedie: (E[x | x~] - x~) / sigma^2
        (d/dt log Z(t) = int (x - t)/sigma^2 N(t; x, sigma^2) dF(x) / Z(t), atoms included)."""
        x = check_rows(x, "points", self.dim)
        return (self._smoothed(x, sigma)[1] - x) / sigma**2


def make_boundary_mixture(dim, components=4, stroke_fraction=0.4):
    """The built-in boundary density for D = dim (parameters drawn once, fixed seed), MNIST-like:
    each factor is a 'background' one (p0 in [0.5, 0.8], Beta(a < 1, b in [2, 5]): exact zeros
    and faint values piled at 0) or, with probability stroke_fraction, a 'stroke' one (p0, p1 in
    [0.1, 0.3], Beta(a in [2, 5], b < 1): off, saturated or nearly saturated)."""
    if dim < 1 or components < 1:
        raise ConfigError(f"make_boundary_mixture needs dim >= 1 and components >= 1, got {dim}, {components}")
    rng = np.random.default_rng([dim, components, 0xB0DA])
    shape = (components, dim)
    stroke = rng.random(shape) < stroke_fraction
    u = lambda lo, hi: rng.uniform(lo, hi, shape)  # noqa: E731
    small, large = u(0.4, 0.9), u(2.0, 5.0)
    a, b = np.where(stroke, large, small), np.where(stroke, small, large)
    p0 = np.where(stroke, u(0.1, 0.3), u(0.5, 0.8))
    p1 = np.where(stroke, u(0.1, 0.3), 0.0)
    return BoundaryMixture(a, b, p0, p1)


# ----------------------------------------------------------------------------------------
# Claim 1 on a known density: the DAE against the exact score and trivial controls
# ----------------------------------------------------------------------------------------

METRICS = ("cosine_mean", "cosine_median", "slope", "norm_ratio_median", "rel_error_median")
GROUPS = ("all", "boundary", "rest")

def score_agreement(v, g, mask=None):
    """How well v: (n, D) follows the exact score g: (n, D), over the coordinates where the
    (n, D) bool mask is true (all by default); points with no such coordinate are left out.

    -> {cosine_mean, cosine_median (per point), slope (sum v.g / sum g.g: the least-squares
        step size of v on g, 1 for an exact step), norm_ratio_median (|v| / |g|),
        rel_error_median (|v - g| / |g|), points}
    """
    if mask is not None:
        keep = mask.any(1)
        v, g = np.where(mask, v, 0.0)[keep], np.where(mask, g, 0.0)[keep]
    if len(v) == 0:
        return dict({m: float("nan") for m in METRICS}, points=0)
    nv, ng = np.linalg.norm(v, axis=1), np.maximum(np.linalg.norm(g, axis=1), 1e-300)
    cos = (v * g).sum(1) / np.maximum(nv * ng, 1e-300)
    return dict(cosine_mean=float(cos.mean()), cosine_median=float(np.median(cos)),
                slope=float((v * g).sum() / (g * g).sum()), norm_ratio_median=float(np.median(nv / ng)),
                rel_error_median=float(np.median(np.linalg.norm(v - g, axis=1) / ng)), points=int(len(v)))


def nearest_mean_pull(density, x, sigma):
    """The old check's trivial control: the exact score were every component a Gaussian of its
    own mean and per-coordinate variance, with only the nearest component: (n, D) -> (n, D)."""
    means, var = density.factor_moments()                                  # (K, D) each
    k = np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), 1)
    return (means[k] - x) / (var[k] + sigma**2)


def gaussian_score(train, x, sigma):
    """Score of the single Gaussian fitted to the training rows, smoothed by sigma:
    -(C + sigma^2 I)^-1 (x - m).  train: (N, D), x: (n, D) -> (n, D)"""
    m = train.mean(0)
    cov = np.atleast_2d(np.cov(train, rowvar=False)) + sigma**2 * np.eye(train.shape[1])
    return -np.linalg.solve(cov, (x - m).T).T


def kernel_posterior_mean(train, x, sigma, chunk=256):
    """The posterior mean E[x | x~] under the empirical law of the training draws: the exact
    denoiser of a DAE that memorised its training set, sum_i w_i x_i with w = softmax over i of
    -|x~ - x_i|^2 / (2 sigma^2).  A control that needs no network: what the DAE must beat to have
    learned more than its draws.  train: (N, D), x: (n, D) -> (n, D)"""
    train = np.asarray(train, np.float64)
    x = np.asarray(x, np.float64)
    sq = (train * train).sum(1)
    out = np.empty_like(x)
    for i in range(0, len(x), chunk):  # (chunk, N) distances at a time
        xc = x[i:i + chunk]
        logw = -((xc * xc).sum(1)[:, None] - 2 * xc @ train.T + sq[None]) / (2 * sigma**2)
        logw -= logw.max(1, keepdims=True)
        w = np.exp(logw)
        out[i:i + chunk] = (w @ train) / w.sum(1, keepdims=True)
    return out


# ----------------------------------------------------------------------------------------
# Claim 1: one check, at one noise level or along a ladder of them
# ----------------------------------------------------------------------------------------

# Presets of run_claim1.  "boundary": the paper's setting, one sigma, D = 2 and 16.  "ladder":
# where the samplers run, sigma from 0.01 to 1 in D = 64.  "gmm": the easy check of evaluate
# --theorem (the Gaussian mixture of gmm:D, inside [0.3, 0.7]^D).
CLAIM1 = dict(
    boundary=dict(density="boundary", dims=(2, 16), sigmas=(0.1,), seeds=(0, 1, 2), n_train=10000, n_eval=2000,
                  hidden={2: (64, 64), 16: (128, 128)}, epochs=15, batch_size=128, lr=1e-3),
    ladder=dict(density="boundary", dims=(64,), sigmas=(0.01, 0.03, 0.1, 0.3, 1.0), seeds=(0, 1, 2), n_train=10000,
                n_eval=2000, hidden=(256, 256), epochs=15, batch_size=128, lr=1e-3),
    gmm=dict(density="gmm", dims=(2, 16), sigmas=(0.1,), seeds=(0,), n_train=20000, n_eval=2000,
             hidden={2: (64, 64)}, hidden_large=(256, 256), epochs=10, batch_size=128, lr=1e-3))
CLAIM1_QUICK = dict(
    boundary=dict(CLAIM1["boundary"], dims=(2,), seeds=(0, 1), n_train=2000, n_eval=400, hidden={2: (32, 32)},
                  epochs=2),
    ladder=dict(CLAIM1["ladder"], dims=(8,), sigmas=(0.03, 0.3), seeds=(0, 1), n_train=2000, n_eval=300,
                hidden=(64, 64), epochs=2),
    gmm=dict(CLAIM1["gmm"], dims=(2,), n_train=4000, n_eval=500, epochs=3))
POINTS = ("corrupted", "clean")
CONTROLS = ("kernel_mean", "nearest_mean", "gaussian", "posterior_mean")
SATURATED = 0.01  # a posterior mean within this of 0 or 1 is "saturated" (the BCE/MSE prediction below)


def claim1_daes(sigmas, losses=("bce", "mse")):
    """The DAEs claim1_check trains: [(name, loss, told sigma)].  At one sigma, one per loss at
    that level (the paper's setting).  Along a ladder, one per loss trained across it and told
    the level (mlp:...,sigma, as the sampling U-Net is), and a noise-blind BCE one (the old
    annealing DAE): 'bce_blind'."""
    if len(set(sigmas)) == 1:
        return [(loss, loss, False) for loss in losses]
    return [(loss, loss, True) for loss in losses] + ([("bce_blind", "bce", False)] if "bce" in losses else [])


def claim1_memory(dim, hidden, n_train=20000, n_eval=2000, batch_size=128):
    """Bytes claim1_check needs at its peak, on the high side: the draws (float64 and float32),
    the held-out points and their scores, one DAE's training, and kernel_posterior_mean's
    (256, n_train) float64 blocks (three temporaries at a time)."""
    from tinydae.train import training_memory

    config = dict(input_dim=dim, hidden=list(hidden), dtype="float32", tied=False)
    return (n_train * dim * 12 + n_eval * dim * 8 * 8 + 3 * 256 * n_train * 8
            + training_memory(config, n_train, batch_size))


def _logit_error(r, e, mask):
    """Mean |logit(r) - logit(e)| over the masked coordinates (both clipped to [1e-6, 1 - 1e-6])."""
    if not mask.any():
        return float("nan")
    lo, hi = 1e-6, 1 - 1e-6
    r, e = np.clip(r[mask], lo, hi), np.clip(e[mask], lo, hi)
    return float(np.mean(np.abs(np.log(r / (1 - r)) - np.log(e / (1 - e)))))


def claim1_check(density, sigmas=(0.1,), seeds=(0, 1, 2), losses=("bce", "mse"), n_train=10000, n_eval=2000,
                 hidden=(64, 64), activation="relu", epochs=15, batch_size=128, lr=1e-3, backend="cpu", log=None):
    """Claim 1 on a density with an exact score (BoundaryMixture, or metrics.GaussianMixture).
    Per seed: the DAEs of claim1_daes(sigmas, losses), trained on n_train draws (clipped to
    [0, 1]) with gaussian:sigma, or across gaussian:min..max (log-uniform, a level per row).  At
    each sigma, n_eval held-out points, corrupted (x~ = x + sigma eps: what the DAEs see in
    training) and clean: v = (r(x) - x) / sigma^2 against the exact score g = grad log p_sigma(x),
    beside the controls
      kernel_mean     the posterior mean under the empirical law of the same training draws
                      (the exact denoiser of a DAE that memorised them: what a DAE must beat to
                      have learned more than its draws),
      nearest_mean    pull to the nearest component mean, gaussian: the single-Gaussian score,
      posterior_mean  the ideal DAE: E[x | x~] (a BoundaryMixture's from a second, coarser
                      quadrature rule), rounded to float32 like a DAE's output: a check of the
                      instrument, 1.000 everywhere.
    Groups: all coordinates; 'boundary', those within 2 sigma of 0 or 1; 'rest', the others.

    BCE against MSE: at corrupted points both losses have one minimiser, E[x | x~], so no
    difference is predicted from the losses alone.  One IS predicted from training: where E[x | x~]
    is within SATURATED of 0 or 1 the sigmoid saturates, and MSE's gradient (r - x) r (1 - r) fades
    there while BCE's (r - x) does not, so after equal training BCE should sit closer to E[x | x~]
    in logit terms on those coordinates, and not elsewhere.  Measured: 'saturation', the mean
    |logit r - logit E[x | x~]| at corrupted points, on saturated coordinates and on the rest.

    -> {'density', 'dim', 'sigmas', 'seeds', 'daes', 'train_corruption', ..., 'seconds',
        'boundary_fraction': {at: {sigma}}, 'saturated_fraction': {sigma},
        'results': {at: {sigma: {method: {group: {metric: {'mean', 'sd', 'per_seed'}}}}}},
        'saturation': {sigma: {dae: {'saturated', 'rest': stats}}}}
       at in POINTS, sigma keys as strings ('0.1'), method in the DAEs' names + CONTROLS, group in
       GROUPS (a group without points, e.g. 'rest' of clean points at sigma >= 0.5, left out), metric
       in METRICS
    """
    sigmas = tuple(float(v) for v in sigmas)
    if len(sigmas) < 1 or not all(v > 0 and math.isfinite(v) for v in sigmas) or len(seeds) < 1:
        raise ConfigError(f"claim1_check needs sigmas > 0 and at least one seed, got {sigmas}, {tuple(seeds)}")
    t0 = time.perf_counter()
    lo, hi = min(sigmas), max(sigmas)
    corruption = gaussian(lo, hi) if hi > lo else gaussian(lo)
    daes = claim1_daes(sigmas, losses)
    spec = "mlp:" + ",".join(map(str, hidden))
    ideal = density.with_quadrature(max(1, density.panels // 2)) if hasattr(density, "with_quadrature") else density
    keys = [f"{v:g}" for v in sigmas]
    methods = [name for name, _, _ in daes] + list(CONTROLS)
    rows = {at: {k: {m: {g: {mm: [] for mm in METRICS} for g in GROUPS} for m in methods} for k in keys}
            for at in POINTS}
    sat = {k: {name: {"saturated": [], "rest": []} for name, _, _ in daes} for k in keys}
    boundary_fraction = {at: {k: [] for k in keys} for at in POINTS}
    saturated_fraction = {k: [] for k in keys}
    train_seconds = {name: [] for name, _, _ in daes}
    for seed in seeds:
        train = np.clip(density.sample(n_train, seed), 0, 1).astype(np.float32)
        clean = np.clip(density.sample(n_eval, 2**32 + seed), 0, 1)  # 2**32 + seed: apart from every training stream
        models = {}
        for name, loss, told in daes:
            if log:  # each DAE trains for seconds to minutes: say which is running
                log(f"D = {density.dim}, seed {seed}: training the {name} DAE ({epochs} epochs on {n_train:,} draws, "
                    f"{corruption})")
            t1 = time.perf_counter()
            m = DAE(density.dim, loss=loss, activation=activation, seed=seed, backend=backend,
                    arch=spec + (",sigma" if told else ""))
            fit(m, Dataset(train, None, repr(density)), None, optimizer=Adam(m, lr=lr), corruption=corruption,
                epochs=epochs, batch_size=batch_size, seed=seed, handle_sigint=False)
            models[name] = (m, told)
            train_seconds[name].append(time.perf_counter() - t1)
        for k, sigma in zip(keys, sigmas):
            eps = np.random.default_rng([seed, 0xC1A1, int(round(sigma * 1e6))]).standard_normal(clean.shape)
            # Points rounded to float32 once: the DAEs, the score and the controls see the same numbers.
            for at, x in (("corrupted", clean + sigma * eps), ("clean", clean)):
                x = x.astype(np.float32).astype(np.float64)
                g = density.score(x, sigma)
                r = {name: m.backend.to_host(m.reconstruct(x.astype(np.float32), sigma=sigma if told else None))
                     .astype(np.float64) for name, (m, told) in models.items()}
                v = {name: (rx - x) / sigma**2 for name, rx in r.items()}
                v["kernel_mean"] = (kernel_posterior_mean(train, x, sigma) - x) / sigma**2
                v["nearest_mean"] = nearest_mean_pull(density, x, sigma)
                v["gaussian"] = gaussian_score(train.astype(np.float64), x, sigma)
                v["posterior_mean"] = (ideal.posterior_mean(x, sigma).astype(np.float32) - x) / sigma**2
                boundary = np.minimum(np.abs(x), np.abs(x - 1)) < 2 * sigma
                boundary_fraction[at][k].append(float(boundary.mean()))
                for method, vm in v.items():
                    for group, mask in zip(GROUPS, (None, boundary, ~boundary)):
                        agreement = score_agreement(vm, g, mask)
                        for mm in METRICS if agreement["points"] else ():  # an empty group has no figures
                            rows[at][k][method][group][mm].append(agreement[mm])
                if at == "corrupted":
                    exact = density.posterior_mean(x, sigma)
                    saturated = (exact < SATURATED) | (exact > 1 - SATURATED)
                    saturated_fraction[k].append(float(saturated.mean()))
                    for name, rx in r.items():
                        for part, mask in (("saturated", saturated), ("rest", ~saturated)):
                            if mask.any():
                                sat[k][name][part].append(_logit_error(rx, exact, mask))
    def nest(tree):  # lists of per-seed values -> stats; what no point had is left out (clean points at a
        # large sigma all lie within 2 sigma of an edge: no 'rest'; gmm:D has no saturated coordinates)
        if not isinstance(tree, dict):
            return mean_sd(tree) if tree else None
        out = {key: nest(sub) for key, sub in tree.items()}
        return {key: sub for key, sub in out.items() if sub not in (None, {})} or None
    return dict(density=repr(density), dim=density.dim, sigmas=list(sigmas), seeds=list(seeds),
                daes=[dict(name=name, loss=loss, told_sigma=told) for name, loss, told in daes], n_train=n_train,
                n_eval=n_eval, hidden=list(hidden), activation=activation, epochs=epochs, batch_size=batch_size, lr=lr,
                train_corruption=str(corruption), saturated_below=SATURATED,
                boundary_fraction={at: {k: float(np.mean(f)) for k, f in by.items()} for at, by in boundary_fraction.items()},
                saturated_fraction={k: float(np.mean(f)) for k, f in saturated_fraction.items()},
                train_seconds={name: float(np.mean(v)) for name, v in train_seconds.items()},
                results=nest(rows), saturation=nest(sat) or {}, seconds=time.perf_counter() - t0)


def claim1_config(preset="boundary", quick=False, **overrides):
    """run_claim1's settings: the preset (CLAIM1, or CLAIM1_QUICK with quick), entries replaced
    by overrides; unknown names and malformed entries refused (ConfigError)."""
    if preset not in CLAIM1:
        raise ConfigError(f"claim 1 presets: {', '.join(CLAIM1)}; got {preset!r}")
    unknown = set(overrides) - set(CLAIM1[preset])
    if unknown:
        raise ConfigError(f"run_claim1 takes {', '.join(sorted(CLAIM1[preset]))}; got {', '.join(sorted(unknown))}")
    cfg = dict((CLAIM1_QUICK if quick else CLAIM1)[preset], **overrides)
    if not isinstance(cfg["dims"], (tuple, list)) or not isinstance(cfg["sigmas"], (tuple, list)):
        raise ConfigError(f"dims and sigmas are sequences, e.g. dims=(64,), sigmas=(0.01, 0.1, 1); got "
                          f"{cfg['dims']!r}, {cfg['sigmas']!r}")
    return cfg


def claim1_hidden(cfg, dim):
    """The DAE widths for dimension dim: cfg['hidden'] itself, or its entry for dim (a dict), or
    cfg['hidden_large'] for a dim it does not name."""
    h = cfg["hidden"]
    return tuple(h.get(dim, cfg.get("hidden_large", (256, 256)))) if isinstance(h, dict) else tuple(h)


def claim1_density(cfg, dim):
    from tinydae.metrics import make_gmm

    return make_gmm(dim) if cfg["density"] == "gmm" else make_boundary_mixture(dim)


def run_claim1(preset="boundary", quick=False, backend="cpu", log=print, **overrides):
    """claim1_check on each D of a preset (claim1_config) -> [claim1_check result per D]."""
    cfg = claim1_config(preset, quick, **overrides)
    out = []
    for dim in cfg["dims"]:
        density = claim1_density(cfg, dim)
        log(f"claim 1 on {'the boundary density' if cfg['density'] == 'boundary' else f'gmm:{dim}'}, D = {dim}, "
            f"sigma {', '.join(f'{v:g}' for v in cfg['sigmas'])} ({len(cfg['seeds'])} seed{'s' * (len(cfg['seeds']) > 1)})")
        out.append(claim1_check(density, cfg["sigmas"], tuple(cfg["seeds"]), n_train=cfg["n_train"],
                                n_eval=cfg["n_eval"], hidden=claim1_hidden(cfg, dim), epochs=cfg["epochs"],
                                batch_size=cfg["batch_size"], lr=cfg["lr"], backend=backend,
                                log=lambda m: log(f"  {m}")))
    return out


def claim1_table(result):
    """Markdown for one claim1_check result, mean +- sd over seeds.  At one sigma: per kind of
    point, cosine, slope and median norm ratio on all and on the boundary coordinates.  Along a
    ladder: cosine and slope per sigma (corrupted points, all coordinates), then the BCE / MSE
    saturation check."""
    f = lambda s: f"{s['mean']:.3f} ± {s['sd']:.3f}"  # noqa: E731
    keys = [f"{v:g}" for v in result["sigmas"]]
    L = [f"D = {result['dim']}, DAEs {', '.join(d['name'] for d in result['daes'])} trained with "
         f"`{result['train_corruption']}` ({result['epochs']} epochs, {result['n_train']:,} draws), "
         f"{len(result['seeds'])} seeds; {result['n_eval']:,} held-out points.", ""]
    if len(keys) == 1:
        (k,) = keys
        for at in POINTS:
            L += [f"sigma = {k}, {at} points; boundary coordinates (within 2 sigma of 0 or 1): "
                  f"{result['boundary_fraction'][at][k]:.0%}", "",
                  "| method | cosine | slope | norm ratio | cosine (boundary) | slope (boundary) | norm ratio (boundary) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
            for method, by_group in result["results"][at][k].items():
                cells = [f(by_group[g][m]) if g in by_group else "-" for g in ("all", "boundary")
                         for m in ("cosine_mean", "slope", "norm_ratio_median")]
                L.append(f"| {method} | " + " | ".join(cells) + " |")
            L.append("")
        return "\n".join(L[:-1])
    res = result["results"]["corrupted"]
    L += ["Corrupted points, all coordinates:", "",
          "| method | " + " | ".join(f"cosine σ={k}" for k in keys) + " | " + " | ".join(f"slope σ={k}" for k in keys)
          + " |", "|" + " --- |" * (1 + 2 * len(keys))]
    for method in res[keys[0]]:
        cells = [f(res[k][method]["all"][mm]) for mm in ("cosine_mean", "slope") for k in keys]
        L.append(f"| {method} | " + " | ".join(cells) + " |")
    if not result["saturation"]:
        return "\n".join(L)
    names = list(dict.fromkeys(n for by in result["saturation"].values() for n in by))
    L += ["", f"Mean |logit r − logit E[x | x~]| on saturated coordinates (E within {result['saturated_below']} of 0 "
          f"or 1; predicted: BCE below MSE there, from MSE's fading gradient) and on the rest (no difference "
          f"predicted):", "",
          "| sigma | saturated share | " + " | ".join(f"{n} saturated | {n} rest" for n in names) + " |",
          "|" + " --- |" * (2 + 2 * len(names))]
    for k in keys:
        s = result["saturation"].get(k, {})
        L.append(f"| {k} | {result['saturated_fraction'][k]:.0%} | "
                 + " | ".join(" | ".join(f(s[n][part]) if part in s.get(n, {}) else "-" for part in ("saturated", "rest"))
                              for n in names) + " |")
    return "\n".join(L)
