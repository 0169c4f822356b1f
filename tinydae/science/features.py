"""Sample quality in a learned feature space, each figure beside its real-vs-real floor.

Pixel-space Parzen windows and pixel k-NN precision fail simple sanity checks (blurred real
digits score better than real ones; copies of the mean image get precision 1.0).  Here every
figure is measured on a classifier's penultimate features (tinydae/classifier.py), or on its
class probabilities, and reported beside the same figure for held-out real images at the same
sample size: the best a generator can hope for with that many samples.

Legend: N real rows, M sample rows, F feature width, C classes, D pixels, H x W image shape.

A feature map is any object with input_dim (D), features(x): (N, D) -> (N, F) float64 and
probs(x): (N, D) -> (N, C) float64 (a Classifier is one; an optional .info dict with 'accuracy'
and 'chance' is used by check_feature_map).

  fid                 Frechet distance of Gaussians fitted to two feature sets (Heusel et al. 2017)
  kid                 unbiased MMD^2, cubic polynomial kernel (Binkowski et al. 2018), over subsets
  inception_score     exp(E_x KL(p(y|x) || p(y))) with the classifier's p(y|x)
  class_entropy       entropy (nats) of the histogram of predicted classes; ln C when balanced
  prdc                precision/recall (Kynkaanniemi et al. 2019), density/coverage (Naeem et al.
                      2020) from k-NN balls, equal set sizes
  one_nn_accuracy     leave-one-out 1-NN two-sample test accuracy; 0.5 when indistinguishable
  novelty             distance of each sample to its nearest training image, against the same for
                      held-out reals: memorisation shows as a small ratio and many near-copies
  check_feature_map   flags a useless feature map (untrained, trained on shuffled labels)
  feature_report      all of the above for samples and for the real-vs-real floor
  sharded_figures     FID, inception score and class entropy of sets split over the ranks of an
                      MPI run (tinydae/distributed.py): every rank sums over its rows, one
                      all-reduce of the sums, the figures from them

Everything is float64 on the host and batched so that memory stays bounded; the pixel-space
helpers (sq_distances, knn_radii) are tinydae/metrics.py's.
"""
import math

import numpy as np

from tinydae.backend import as_host_array
from tinydae.errors import ConfigError, DataError
from tinydae.metrics import covered, check_rows, knn_radii, sq_distances

BATCH = 512  # rows per block of a distance matrix: BATCH x N float64 at a time


def _features(x, name, dim=None):
    """Check a feature (or probability) set: (N, F) finite, N >= 2 -> float64"""
    return check_rows(x, name, dim, min_rows=2)


# ----------------------------------------------------------------------------------------
# Frechet inception distance
# ----------------------------------------------------------------------------------------


def sqrtm_psd(s):
    """Symmetric square root of a symmetric positive semi-definite matrix: (F, F) -> (F, F).

    Eigen-decomposition s = V diag(w) V^T -> V diag(sqrt(w)) V^T; roundoff makes tiny
    eigenvalues slightly negative, so they are clipped to 0.
    """
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2):
    """Frechet (2-Wasserstein squared) distance between N(mu1, cov1) and N(mu2, cov2).

    mu: (F,), cov: (F, F)
    d = |mu1 - mu2|^2 + tr(cov1) + tr(cov2) - 2 tr((cov1 cov2)^(1/2))
    cov1 cov2 = A (A cov2 A) A^-1 with A = cov1^(1/2) (AB and BA share eigenvalues even when A
    is singular), so tr((cov1 cov2)^(1/2)) = sum of sqrt(eigenvalues of the symmetric PSD
    A cov2 A): no complex sqrtm, no scipy.

    >>> frechet_distance(np.zeros(1), np.eye(1), np.ones(1), 4 * np.eye(1))  # 1 + (1 - 2)^2
    2.0
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    a = sqrtm_psd(cov1)
    inner = a @ cov2 @ a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)).sum()
    d = ((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * tr_sqrt
    return float(max(d, 0.0))  # >= 0 in exact arithmetic; roundoff can give -1e-13


def gaussian_stats(f):
    """f: (N, F) -> mean (F,), covariance (F, F) with ddof = 1"""
    f = _features(f, "features")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def fid(a, b):
    """Frechet distance of Gaussians fitted to feature sets a: (N, F) and b: (M, F).  Biased
    upwards at small N (compare with the real-vs-real floor at the same N)."""
    return frechet_distance(*gaussian_stats(a), *gaussian_stats(b))


# ----------------------------------------------------------------------------------------
# Kernel inception distance
# ----------------------------------------------------------------------------------------


def polynomial_kernel(a, b):
    """k(x, y) = (x . y / F + 1)^3 for a: (N, F), b: (M, F) -> (N, M)"""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(a, b):
    """Unbiased MMD^2 with the cubic polynomial kernel, a: (m, F), b: (n, F), m, n >= 2.

    MMD^2 = sum_{i != j} k(a_i, a_j) / m(m-1) + sum_{i != j} k(b_i, b_j) / n(n-1)
            - 2 sum_{i, j} k(a_i, b_j) / mn
    (can be slightly negative when the two sets come from one distribution)
    """
    m, n = len(a), len(b)
    kaa, kbb = polynomial_kernel(a, a), polynomial_kernel(b, b)
    return float((kaa.sum() - np.trace(kaa)) / (m * (m - 1)) + (kbb.sum() - np.trace(kbb)) / (n * (n - 1))
                 - 2 * polynomial_kernel(a, b).mean())


def kid(a, b, subset_size=1000, subsets=10, seed=0):
    """Kernel inception distance: mean of mmd2_unbiased over random subsets (without
    replacement within a subset), as Binkowski et al. 2018.

    a: (N, F), b: (M, F) -> {'kid': mean, 'std': over subsets (0 for one subset), 'subset_size', 'subsets'}
    When subset_size >= both set sizes there is one subset: everything.
    """
    a = _features(a, "first feature set")  # first: b's check reads a's width from the array
    b = _features(b, "second feature set", a.shape[1])
    if subset_size < 2 or subsets < 1:
        raise ConfigError(f"KID needs subset_size >= 2 and subsets >= 1, got {subset_size}, {subsets}")
    s = min(subset_size, len(a), len(b))
    if s == len(a) == len(b):
        values = [mmd2_unbiased(a, b)]  # every subset would be the whole of both sets
    else:
        rng = np.random.default_rng([seed, 0x41D])
        values = [mmd2_unbiased(a[rng.choice(len(a), s, replace=False)], b[rng.choice(len(b), s, replace=False)])
                  for _ in range(subsets)]
    return dict(kid=float(np.mean(values)), std=float(np.std(values)), subset_size=s, subsets=len(values))


# ----------------------------------------------------------------------------------------
# Class probabilities: inception score, class-histogram entropy
# ----------------------------------------------------------------------------------------


def inception_score(probs):
    """exp(mean_x KL(p(y|x) || p(y))), p(y) = mean_x p(y|x).  probs: (N, C) rows summing to 1.

    Between 1 (every sample gets the same class distribution) and C (confident, balanced).
    """
    p = _features(probs, "class probabilities")
    py = p.mean(0)
    # 0 log 0 = 0: classes with p(y|x) = 0 contribute nothing (and never divide by p(y) = 0)
    terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) - np.log(np.where(py > 0, py, 1))), 0.0)
    return float(math.exp(terms.sum(1).mean()))


def class_entropy(probs):
    """Entropy (nats) of the histogram of predicted classes argmax p(y|x).  probs: (N, C).

    ln C for a balanced set of classes, 0 when every sample is given one class (mode collapse).
    """
    p = _features(probs, "class probabilities")
    q = np.bincount(p.argmax(1), minlength=p.shape[1]) / len(p)
    q = q[q > 0]
    return float(-(q * np.log(q)).sum()) + 0.0  # + 0.0: a single class gives 0.0, not -0.0


# ----------------------------------------------------------------------------------------
# k-NN manifolds: precision, recall, density, coverage; 1-NN two-sample test; novelty
# ----------------------------------------------------------------------------------------


def prdc(real, fake, k=5):
    """Precision, recall, density and coverage from k-NN balls (use equal set sizes).

    r_i = distance from real_i to its k-th nearest other real point; B_i the ball (real_i, r_i)
    precision = fraction of fakes inside some B_i
    recall    = fraction of reals inside the k-NN ball of some fake (same construction on fakes)
    density   = sum_j #{i: fake_j in B_i} / (k M)        (about 1 for a matching distribution)
    coverage  = fraction of reals whose ball B_i holds some fake
    real: (N, F), fake: (M, F) -> {'precision', 'recall', 'density', 'coverage'}
    """
    real = _features(real, "real features")
    fake = _features(fake, "sample features", real.shape[1])
    r2 = knn_radii(real, k) ** 2
    inside_count = np.empty(len(fake))
    hit = np.zeros(len(real), bool)
    for start in range(0, len(fake), BATCH):
        inside = sq_distances(fake[start:start + BATCH], real) <= r2[None, :]   # (batch, N)
        inside_count[start:start + BATCH] = inside.sum(1)
        hit |= inside.any(0)
    return dict(precision=float((inside_count > 0).mean()),
                recall=float(covered(real, fake, knn_radii(fake, k)).mean()),
                density=float(inside_count.sum() / (k * len(fake))),
                coverage=float(hit.mean()))


def one_nn_accuracy(a, b):
    """Leave-one-out accuracy of the 1-nearest-neighbour classifier telling a from b.

    a: (N, F), b: (M, F), best with N = M.  0.5 when the sets are indistinguishable; 1.0
    when every point's nearest neighbour is from its own set; near 0 when each sample sits on
    a real point (memorised copies)."""
    a = _features(a, "first feature set")
    b = _features(b, "second feature set", a.shape[1])
    z = np.concatenate([a, b])
    label = np.r_[np.zeros(len(a), bool), np.ones(len(b), bool)]
    correct = 0
    for start in range(0, len(z), BATCH):
        d = sq_distances(z[start:start + BATCH], z)
        rows = np.arange(d.shape[0])
        d[rows, start + rows] = np.inf  # leave one out: a point is not its own neighbour
        correct += int((label[d.argmin(1)] == label[start:start + BATCH]).sum())
    return correct / len(z)


def nearest_distances(x, ref):
    """Distance from each row of x: (N, F) to its nearest row of ref: (M, F) -> (N,)"""
    x, ref = as_host_array(x, "rows"), as_host_array(ref, "reference rows")  # see tinydae.backend
    out = np.empty(len(x))
    for start in range(0, len(x), BATCH):
        out[start:start + BATCH] = np.sqrt(sq_distances(x[start:start + BATCH], ref).min(1))
    return out


def novelty(samples, train, reference, quantile=0.05):
    """Are samples new, or (near-)copies of training images?

    samples: (M, F); train: (T, F) the generator's training set; reference: (N, F) real rows
    that are not in train (its distances to train show what "new" looks like).
    -> {'median_ratio': median NN distance of samples / that of the reference (~1; << 1: copies),
        'copy_fraction': fraction of samples closer to train than the reference's `quantile`
                         (~quantile; >> quantile: memorisation)}
    """
    d_s = nearest_distances(samples, train)
    d_r = nearest_distances(reference, train)
    median_r = float(np.median(d_r))
    return dict(median_ratio=float(np.median(d_s) / median_r) if median_r > 0 else math.inf,
                copy_fraction=float((d_s < np.quantile(d_r, quantile)).mean()))


# ----------------------------------------------------------------------------------------
# Sanity checks of the feature map itself
# ----------------------------------------------------------------------------------------


def box_blur(x, image_shape, size=3):
    """Mean over a size x size window, edges replicated, each channel apart.
    x: (N, H*W*C) rows of (H, W) or (H, W, C) images -> (N, H*W*C) float32"""
    H, W, C = (*image_shape, 1)[:3]
    p = size // 2
    x = as_host_array(x, "the images", np.float32)  # any array in host memory, see tinydae.backend
    img = np.pad(x.reshape(-1, H, W, C), ((0, 0), (p, p), (p, p), (0, 0)), mode="edge")
    out = np.zeros((len(x), H, W, C), np.float32)
    for dy in range(size):
        for dx in range(size):
            out += img[:, dy:dy + H, dx:dx + W]
    return (out / size**2).reshape(len(x), H * W * C)


def _near_chance(accuracy, chance):
    """A useful classifier closes at least half of the gap between chance and perfect."""
    return accuracy < chance + 0.5 * (1 - chance)


def check_feature_map(feature_map, x, labels=None, image_shape=None, seed=0, min_blur_ratio=None):
    """Is this feature map any use for judging samples of x's distribution?

    x: (N, D) real rows (N >= 20), labels: (N,) int or None, image_shape: (H, W) or None.
    Checks, each adding a line to 'problems' when it fails:
      * accuracy on `labels`, and the held-out accuracy recorded with a trained Classifier
        (feature_map.info), must close half the gap from chance to 1 (an untrained map, or one
        trained on shuffled labels, sits at chance);
      * without labels too: the classifier must be confident and varied on real rows,
        ln IS(real) = I(x; y) >= ln(C) / 2 (measured on MNIST: trained 8.8, untrained and
        shuffled-label maps 1.03; the threshold for C = 10 is 3.16);
      * the predicted classes of real rows must not collapse (class entropy >= ln(C) / 2);
      * the features must vary over real rows;
      * with image_shape: 3x3 box-blurred real images must score a worse FID than real ones
        (against the real-vs-real floor between two halves of x).  A weak check, for maps blind
        to image detail: random features pass it too (measured FID ratio blurred / floor on
        MNIST: 2.4 untrained, 2.1 trained; 1.2 for a perfect classifier of the glyphs, whose
        features cluster by class and shrug off blur).
      * with min_blur_ratio too: the blurred FID must be at least that many times the floor, the
        check that a map sees blur (issue 21 asks 10; measured on MNIST with halves of 1,000 rows:
        conv:32,64,fc32 10.2-14.6x, the dense mlp:256,128 2.4-2.8x; bench/NOTES.md attempt 25).
        The floor shrinks as the halves grow, so the ratio is only comparable at one size.
    -> {'ok', 'problems': [str], 'accuracy', 'chance', 'recorded_accuracy', 'inception_score',
        'class_entropy', 'fid_floor', 'fid_blurred', 'blur_ratio', 'n_half'}
    """
    if min_blur_ratio is not None and (isinstance(min_blur_ratio, bool) or not isinstance(min_blur_ratio, (int, float))
                                       or not math.isfinite(min_blur_ratio) or min_blur_ratio <= 0):
        raise ConfigError(f"min_blur_ratio must be a finite number > 0 (e.g. 10), got {min_blur_ratio!r}")
    x = as_host_array(x, "the real rows")  # any array in host memory, see tinydae.backend
    if x.ndim != 2 or len(x) < 20:
        raise DataError(f"checking a feature map needs at least 20 real rows (N, D), got shape {x.shape}")
    problems = []
    probs = feature_map.probs(x)
    C = probs.shape[1]
    out = dict(accuracy=None, chance=None, recorded_accuracy=None, fid_floor=None, fid_blurred=None,
               blur_ratio=None, n_half=None)
    if labels is not None:
        labels = as_host_array(labels, "labels")
        if labels.shape != (len(x),) or labels.dtype.kind not in "ui" or labels.min() < 0:
            raise DataError(f"labels must be {len(x)} non-negative integers, one per row, got "
                            f"{labels.dtype} of shape {labels.shape}")
        out["accuracy"] = float((probs.argmax(1) == labels).mean())
        out["chance"] = float(np.bincount(labels).max() / len(labels))
        if _near_chance(out["accuracy"], out["chance"]):
            problems.append(f"its accuracy on the given labels, {out['accuracy']:.3f}, is near chance "
                            f"({out['chance']:.3f})")
    info = getattr(feature_map, "info", None) or {}
    if info.get("accuracy") is not None:
        out["recorded_accuracy"] = info["accuracy"]
        chance = info.get("chance", 1 / C)
        if _near_chance(info["accuracy"], chance):
            problems.append(f"its recorded held-out accuracy, {info['accuracy']:.3f}, is near chance "
                            f"({chance:.3f}): trained on wrong labels?")
    out["inception_score"] = inception_score(probs)
    if out["inception_score"] < math.sqrt(C):
        problems.append(f"it is unsure or undiscriminating on real data (classifier IS {out['inception_score']:.2f} "
                        f"< sqrt({C})): untrained, or trained on wrong labels?")
    out["class_entropy"] = class_entropy(probs)
    if out["class_entropy"] < 0.5 * math.log(C):
        problems.append(f"it gives real data few classes (class entropy {out['class_entropy']:.2f} nats "
                        f"< ln({C}) / 2)")
    f = feature_map.features(x)
    if not f.var(0).sum() > 1e-12 * max(1.0, float((f * f).mean())):
        problems.append("its features are constant over real data")
    elif image_shape is not None:
        half = np.random.default_rng([seed, 0xB1D]).permutation(len(x))
        a, b = half[: len(x) // 2], half[len(x) // 2:]
        out["fid_floor"] = fid(f[a], f[b])
        out["fid_blurred"] = fid(feature_map.features(box_blur(x[a], image_shape)), f[b])
        out["n_half"] = len(a)
        out["blur_ratio"] = out["fid_blurred"] / out["fid_floor"] if out["fid_floor"] > 0 else math.inf
        if not out["fid_blurred"] > out["fid_floor"]:
            problems.append(f"its FID does not separate blurred real images ({out['fid_blurred']:.3g}) "
                            f"from real ones ({out['fid_floor']:.3g}): blind to image detail")
        elif min_blur_ratio is not None and not out["blur_ratio"] >= min_blur_ratio:
            problems.append(f"it barely sees blur: 3x3-blurred real rows score FID {out['fid_blurred']:.3g}, "
                            f"{out['blur_ratio']:.1f}x the real-vs-real floor {out['fid_floor']:.3g} "
                            f"(needs >= {min_blur_ratio:g}x)")
    elif min_blur_ratio is not None:
        raise DataError("the blur check needs the image shape (H, W) of the rows")
    return dict(ok=not problems, problems=problems, **out)


def ranks(values):
    """Ranks 0..n-1 of a sequence, ties sharing their mean rank."""
    v = np.asarray(values, np.float64)
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(len(v))
    for value in np.unique(v):  # ties: the mean of their ranks
        tied = v == value
        r[tied] = r[tied].mean()
    return r


def spearman(x, y):
    """Spearman's rank correlation of two equal-length sequences (Pearson's of their ranks; ties
    share a mean rank).  -> float in [-1, 1]; nan if either sequence is constant."""
    if len(x) != len(y) or len(x) < 2:
        raise DataError(f"rank correlation needs two sequences of one length >= 2, got {len(x)} and {len(y)}")
    if not (np.isfinite(np.asarray(x, np.float64)).all() and np.isfinite(np.asarray(y, np.float64)).all()):
        return math.nan  # a NaN or infinite figure has no rank: no agreement to claim
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def family_fids(feature_map, family, reference):
    """FID of each set of a family against one set of real rows, in one feature map.

    family: {name: (n_i, D) rows}; reference: (n, D) real rows -> {name: FID}.  Compare sets of
    one size (FID's bias depends on it)."""
    f_ref = feature_map.features(reference)
    return {name: fid(feature_map.features(rows), f_ref) for name, rows in family.items()}


# ----------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------

# (key, label, what a perfect generator scores) in report order
FIGURES = (
    ("fid", "FID", "0"),
    ("kid", "KID", "0"),
    ("inception_score", "classifier IS", "= floor"),
    ("class_entropy", "class entropy (nats)", "= floor"),
    ("precision", "precision", "1"),
    ("recall", "recall", "1"),
    ("density", "density", "1"),
    ("coverage", "coverage", "1"),
    ("one_nn_accuracy", "1-NN accuracy", "0.5"),
    ("novelty_median_ratio", "novelty: median NN ratio", "1"),
    ("copy_fraction", "near-copies of train", "0.05"),
)


def sample_figures(f, p, f_real, f_train, f_reference, k, seed):
    """Every figure of one set (features f: (n, F), probs p: (n, C)) against the real set."""
    out = dict(fid=fid(f, f_real), kid=kid(f, f_real, seed=seed)["kid"], inception_score=inception_score(p),
               class_entropy=class_entropy(p), **prdc(f_real, f, k), one_nn_accuracy=one_nn_accuracy(f, f_real))
    if f_train is not None:
        nov = novelty(f, f_train, f_reference)
        out.update(novelty_median_ratio=nov["median_ratio"], copy_fraction=nov["copy_fraction"])
    return out


def feature_report(samples, real, holdout, feature_map, train=None, seed=0, holdout_labels=None,
                   image_shape=None, k=5):
    """Sample quality in feature space, beside the real-vs-real floor at the same sample size.

    samples: (M, D) generated rows, or {name: (M_i, D) rows} to judge several sets against one
    floor; real: (N, D) real rows, the reference every set is compared with; holdout: (N', D)
    other real rows, disjoint from `real` (and from `train`), standing in for a perfect
    generator; feature_map: see the module doc; train: (T, D) the generator's training rows,
    for novelty (None: no novelty figures); holdout_labels: (N',) for check_feature_map;
    image_shape: (H, W) for its blur check.
    n = the smallest of the sets' sizes; n rows of each set are used (a seeded choice), so
    samples and floor are measured at one sample size; the novelty reference is the n real rows.
    -> {'n', 'k', 'seed', 'samples': {figure: value} (or {name: {figure: value}} for a dict),
        'floor': {figure: value}, 'check': check_feature_map(...) on the holdout}
    """
    named = samples if isinstance(samples, dict) else {"samples": samples}
    sets = {}
    for name, rows in (*named.items(), ("real", real), ("holdout", holdout)):
        rows = as_host_array(rows, name)  # any array in host memory, see tinydae.backend
        if rows.ndim != 2 or rows.shape[1] != feature_map.input_dim:
            raise DataError(f"{name} must be rows (N, {feature_map.input_dim}) for this feature map, "
                            f"got shape {rows.shape}")
        sets[name] = rows
    n = min(len(r) for r in sets.values())
    if n <= k + 1:
        raise DataError(f"need more than {k + 1} rows in each of {', '.join(sets)}, got {n}")
    rng = np.random.default_rng([seed, 0xFEA7])
    sets = {name: rows[np.sort(rng.choice(len(rows), n, replace=False))] for name, rows in sets.items()}
    f_real = feature_map.features(sets.pop("real"))
    f_train = None if train is None else feature_map.features(train)

    def figures(rows):
        return sample_figures(feature_map.features(rows), feature_map.probs(rows), f_real, f_train, f_real, k, seed)

    floor = figures(sets.pop("holdout"))
    judged = {name: figures(rows) for name, rows in sets.items()}
    return dict(n=n, k=k, seed=seed, samples=judged if isinstance(samples, dict) else judged["samples"],
                floor=floor, check=check_feature_map(feature_map, holdout, holdout_labels, image_shape, seed))


# ----------------------------------------------------------------------------------------
# Figures of sets split over the ranks of a distributed run: sums, one reduction
# ----------------------------------------------------------------------------------------


def _sums(feature_map, rows, batch=4096):
    """The sums the reducible figures need, over rows (n, D): [n, sum f (F), sum f f^T (F*F),
    sum p (C), class counts (C), sum_x sum_y p log p] as one float64 vector."""
    F, C = None, None
    parts = None
    for start in range(0, len(rows), batch):
        x = rows[start:start + batch]
        f, p = np.asarray(feature_map.features(x), np.float64), np.asarray(feature_map.probs(x), np.float64)
        F, C = f.shape[1], p.shape[1]
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0).sum()
        block = [np.array([len(x)], np.float64), f.sum(0), (f.T @ f).ravel(), p.sum(0),
                 np.bincount(p.argmax(1), minlength=C).astype(np.float64), np.array([plogp])]
        parts = block if parts is None else [a + b for a, b in zip(parts, block)]
    return parts, F, C


def sharded_figures(feature_map, samples, reference, comm=None, batch=4096):
    """FID (samples against reference), inception score and class entropy (of the samples), with
    each set split over the ranks: each rank passes its own rows (any number, 0 too), sums its
    features' first and second moments, its class probabilities, class counts and sum p log p,
    and one all-reduce of all of them gives every rank the figures (the same on every rank).
    The figures equal fid / inception_score / class_entropy of the whole sets up to the order
    of the float sums (covariance from sums: (S2 - n mu mu^T) / (n - 1)).

    samples, reference: (n_r, D) this rank's rows -> dict(fid, inception_score, class_entropy,
    n_samples, n_reference)
    """
    from tinydae.distributed import SingleProcess

    comm = comm if comm is not None else SingleProcess()
    vectors, F, C = [], None, None
    for name, rows in (("samples", samples), ("reference", reference)):
        rows = as_host_array(rows, name)
        if rows.ndim != 2 or rows.shape[1] != feature_map.input_dim:
            raise DataError(f"{name} must be rows (N, {feature_map.input_dim}) for this feature map, got {rows.shape}")
        parts, F_, C_ = _sums(feature_map, rows, batch) if len(rows) else (None, None, None)
        F, C = F_ or F, C_ or C
        vectors.append(None if parts is None else np.concatenate(parts))
    if F is None:  # this rank has no rows of either set: the widths from one probe row
        probe = np.full((1, feature_map.input_dim), 0.5, np.float32)
        F, C = np.asarray(feature_map.features(probe)).shape[1], np.asarray(feature_map.probs(probe)).shape[1]
    size = 1 + F + F * F + 2 * C + 1
    buf = np.concatenate([v if v is not None else np.zeros(size) for v in vectors])
    total = comm.allreduce_host(buf)
    stats = []
    for k in range(2):
        v = total[k * size:(k + 1) * size]
        n = v[0]
        if n < 2:
            raise DataError(f"{('samples', 'reference')[k]}: {int(n)} rows in all; the figures need at least 2")
        mu = v[1:1 + F] / n
        cov = (v[1 + F:1 + F + F * F].reshape(F, F) - n * np.outer(mu, mu)) / (n - 1)
        p_sum, counts, plogp = v[1 + F + F * F:1 + F + F * F + C], v[1 + F + F * F + C:-1], v[-1]
        stats.append(dict(n=int(n), mu=mu, cov=(cov + cov.T) / 2, py=p_sum / n, counts=counts, plogp=plogp))
    s, r = stats
    py = s["py"]
    kl = s["plogp"] / s["n"] - float(np.where(py > 0, py * np.log(np.where(py > 0, py, 1)), 0.0).sum())
    q = s["counts"][s["counts"] > 0] / s["n"]
    return dict(fid=frechet_distance(s["mu"], s["cov"], r["mu"], r["cov"]), inception_score=float(math.exp(kl)),
                class_entropy=float(-(q * np.log(q)).sum()) + 0.0, n_samples=s["n"], n_reference=r["n"])
