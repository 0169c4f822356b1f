"""Feature-space metrics: brute-force formulas on tiny inputs, then sanity checks on real data.

The sanity checks are what pixel-space Parzen and k-NN figures fail: blurred real digits must
score worse than real ones, copies of the mean image worst of all, and a useless feature map
(untrained, or trained on shuffled labels) must be flagged.
"""
import doctest
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tinydae.science.features
from tinydae import DataError, glyphs, load_dataset
from tinydae.classifier import Classifier, load_classifier, save_classifier, train_classifier
from tinydae.science.features import (box_blur, check_feature_map, class_entropy, feature_report, fid,
                              frechet_distance, inception_score, kid, mmd2_unbiased, nearest_distances,
                              novelty, one_nn_accuracy, prdc, sqrtm_psd)
from tinydae.metrics import precision_recall
from tinydae.sampling import PCABaseline

seeds = st.integers(0, 2**32 - 1)


def test_doctests():
    assert doctest.testmod(tinydae.science.features).failed == 0


def random_spd(rng, F, rank=None):
    a = rng.normal(size=(F, rank or F + 2))
    return a @ a.T / a.shape[1]


# ----------------------------------------------------------------------------------------
# FID
# ----------------------------------------------------------------------------------------


@given(seed=seeds)
@settings(max_examples=30)
def test_frechet_distance_closed_forms(seed):
    rng = np.random.default_rng(seed)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    m1, m2, s1, s2 = rng.normal(), rng.normal(), rng.uniform(0.1, 3), rng.uniform(0.1, 3)
    assert frechet_distance([m1], [[s1**2]], [m2], [[s2**2]]) == pytest.approx((m1 - m2)**2 + (s1 - s2)**2,
                                                                               rel=1e-10, abs=1e-12)
    # diagonal: the 1-D form summed over dimensions
    F = int(rng.integers(2, 6))
    mu1, mu2 = rng.normal(size=F), rng.normal(size=F)
    v1, v2 = rng.uniform(0.1, 2, F), rng.uniform(0.1, 2, F)
    expected = ((mu1 - mu2)**2).sum() + ((np.sqrt(v1) - np.sqrt(v2))**2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


@given(seed=seeds, singular=st.booleans())
@settings(max_examples=30)
def test_frechet_distance_against_direct_sqrtm(seed, singular):
    rng = np.random.default_rng(seed)
    F = int(rng.integers(2, 6))
    c2 = random_spd(rng, F)
    mu1, mu2 = rng.normal(size=F), rng.normal(size=F)
    if singular:  # c1 = v v^T: c1 c2 has one nonzero eigenvalue, v^T c2 v
        v = rng.normal(size=F)
        c1 = np.outer(v, v)
        tr_sqrt = math.sqrt(v @ c2 @ v)
    else:  # tr sqrt(c1 c2) by the (non-symmetric) eigenvalues of c1 c2, which are real and > 0
        c1 = random_spd(rng, F)
        tr_sqrt = np.sqrt(np.linalg.eigvals(c1 @ c2).real).sum()
    expected = ((mu1 - mu2)**2).sum() + np.trace(c1) + np.trace(c2) - 2 * tr_sqrt
    # a singular c1 leaves F - 1 eigenvalues at roundoff level (1e-16), whose square roots are 1e-8
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-8, abs=1e-6 if singular else 1e-9)
    assert frechet_distance(mu1, c1, mu1, c1) == pytest.approx(0, abs=1e-9)
    s = sqrtm_psd(c2)
    assert np.allclose(s @ s, c2) and np.allclose(s, s.T)


def test_fid_fits_mean_and_unbiased_covariance():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 3)), rng.normal(1, 2, size=(40, 3))

    def stats(x):  # explicit loops: the mean and the ddof = 1 covariance
        mu = [sum(r[i] for r in x) / len(x) for i in range(3)]
        cov = [[sum((r[i] - mu[i]) * (r[j] - mu[j]) for r in x) / (len(x) - 1) for j in range(3)] for i in range(3)]
        return np.array(mu), np.array(cov)

    assert fid(a, b) == pytest.approx(frechet_distance(*stats(a), *stats(b)), rel=1e-10)
    assert fid(a, b) > 3  # the means differ by 1 in each of 3 dimensions


# ----------------------------------------------------------------------------------------
# KID
# ----------------------------------------------------------------------------------------


def naive_mmd2(a, b):
    def k(x, y):
        return (sum(p * q for p, q in zip(x, y)) / len(x) + 1) ** 3

    m, n = len(a), len(b)
    xx = sum(k(a[i], a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(b[i], b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(a[i], b[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


@given(seed=seeds)
@settings(max_examples=20)
def test_kid_against_naive_double_loop(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(int(rng.integers(2, 8)), 3)).tolist()
    b = (rng.normal(size=(int(rng.integers(2, 8)), 3)) + rng.normal()).tolist()
    assert mmd2_unbiased(np.array(a), np.array(b)) == pytest.approx(naive_mmd2(a, b), rel=1e-9, abs=1e-9)


def test_kid_subsets():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(50, 4)), rng.normal(0.5, 1, size=(60, 4))
    whole = kid(a, a[::-1].copy() + 0.5, subset_size=1000)
    assert whole["subsets"] == 1 and whole["subset_size"] == 50 and whole["std"] == 0
    r = kid(a, b, subset_size=20, subsets=5, seed=3)
    assert r == kid(a, b, subset_size=20, subsets=5, seed=3)  # seeded
    assert r["subsets"] == 5 and r["std"] > 0 and r["kid"] > 0
    same = kid(a[:25], a[25:], subset_size=1000)["kid"]
    assert abs(same) < r["kid"]  # unbiased: near 0 for one distribution


# ----------------------------------------------------------------------------------------
# Class probabilities
# ----------------------------------------------------------------------------------------


@given(seed=seeds)
@settings(max_examples=30)
def test_inception_score_and_class_entropy_brute_force(seed):
    rng = np.random.default_rng(seed)
    N, C = int(rng.integers(2, 9)), int(rng.integers(2, 6))
    p = rng.dirichlet(np.full(C, 0.5), N)
    p[0, 0], p[0, 1:] = 1.0, 0.0  # a certain prediction: 0 log 0 terms
    py = [sum(row[c] for row in p) / N for c in range(C)]
    kl = [sum(row[c] * math.log(row[c] / py[c]) for c in range(C) if row[c] > 0) for row in p]
    assert inception_score(p) == pytest.approx(math.exp(sum(kl) / N), rel=1e-10)
    counts = Counter(int(np.argmax(row)) for row in p)
    assert class_entropy(p) == pytest.approx(-sum(k / N * math.log(k / N) for k in counts.values()), abs=1e-12)


def test_inception_score_and_entropy_extremes():
    onehot = np.eye(10)[np.arange(50) % 10]
    assert inception_score(onehot) == pytest.approx(10) and class_entropy(onehot) == pytest.approx(math.log(10))
    same = np.tile(np.linspace(1, 2, 10) / 15, (50, 1))
    assert inception_score(same) == pytest.approx(1) and class_entropy(same) == 0


# ----------------------------------------------------------------------------------------
# k-NN figures
# ----------------------------------------------------------------------------------------


def dist(x, y):
    return math.sqrt(sum((p - q) ** 2 for p, q in zip(x, y)))


def kth_radius(points, i, k):
    return sorted(dist(points[i], q) for j, q in enumerate(points) if j != i)[k - 1]


@given(seed=seeds, k=st.integers(1, 4))
@settings(max_examples=25)
def test_prdc_against_explicit_loops(seed, k):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(k + 2, 14))
    real = rng.normal(size=(n, 2)).tolist()
    fake = (rng.normal(size=(n, 2)) * rng.uniform(0.3, 2) + rng.normal(0, 0.5, 2)).tolist()
    r_real = [kth_radius(real, i, k) for i in range(n)]
    r_fake = [kth_radius(fake, j, k) for j in range(n)]
    eps = 1e-9  # distances on a ball's boundary: sq_distances rounds differently from math.sqrt
    inside = [[dist(f, r) <= r_real[i] + eps for i, r in enumerate(real)] for f in fake]
    expected = dict(precision=sum(any(row) for row in inside) / n,
                    recall=sum(any(dist(r, f) <= r_fake[j] + eps for j, f in enumerate(fake)) for r in real) / n,
                    density=sum(map(sum, inside)) / (k * n),
                    coverage=sum(any(inside[j][i] for j in range(n)) for i in range(n)) / n)
    got = prdc(np.array(real), np.array(fake), k)
    assert got == pytest.approx(expected)
    assert precision_recall(real, fake, k) == pytest.approx({key: got[key] for key in ("precision", "recall")})


@given(seed=seeds)
@settings(max_examples=25)
def test_one_nn_accuracy_against_explicit_loop(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(int(rng.integers(2, 10)), 3)).tolist()
    b = (rng.normal(size=(int(rng.integers(2, 10)), 3)) + rng.uniform(0, 2)).tolist()
    points = [(p, 0) for p in a] + [(p, 1) for p in b]
    correct = 0
    for i, (p, label) in enumerate(points):
        others = [(dist(p, q), j) for j, (q, _) in enumerate(points) if j != i]
        correct += points[min(others)[1]][1] == label
    assert one_nn_accuracy(np.array(a), np.array(b)) == pytest.approx(correct / len(points))


def test_one_nn_accuracy_extremes():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(200, 3))
    assert one_nn_accuracy(a, a + 100) == 1.0  # far apart
    assert 0.4 < one_nn_accuracy(a[:100], a[100:]) < 0.6  # one distribution
    assert one_nn_accuracy(a[:100], a[:100] + 1e-6) < 0.05  # each sample on a real point: copies


def test_batching_changes_nothing(monkeypatch):
    rng = np.random.default_rng(7)
    a, b, t = rng.normal(size=(23, 3)), rng.normal(0.3, 1, size=(23, 3)), rng.normal(size=(40, 3))
    whole = (prdc(a, b, 3), one_nn_accuracy(a, b), novelty(b, t, a), nearest_distances(b, t).tolist())
    monkeypatch.setattr(tinydae.science.features, "BATCH", 5)  # blocks of 5 rows, the last one short
    assert (prdc(a, b, 3), one_nn_accuracy(a, b), novelty(b, t, a), nearest_distances(b, t).tolist()) == whole


def test_novelty_against_explicit_loop_and_copies():
    rng = np.random.default_rng(5)
    train, ref, samples = rng.normal(size=(40, 3)), rng.normal(size=(30, 3)), rng.normal(size=(20, 3))
    d_s = [min(dist(s, t) for t in train) for s in samples]
    d_r = [min(dist(r, t) for t in train) for r in ref]
    assert nearest_distances(samples, train) == pytest.approx(d_s)
    got = novelty(samples, train, ref)
    assert got["median_ratio"] == pytest.approx(np.median(d_s) / np.median(d_r))
    assert got["copy_fraction"] == pytest.approx(np.mean(np.array(d_s) < np.quantile(d_r, 0.05)))
    copies = novelty(train[:20] + 1e-9, train, ref)
    assert copies["copy_fraction"] == 1 and copies["median_ratio"] < 1e-6


def test_box_blur_against_explicit_loop():
    rng = np.random.default_rng(6)
    x = rng.random((2, 5 * 4)).astype(np.float32)
    img = x.reshape(2, 5, 4)
    out = box_blur(x, (5, 4)).reshape(2, 5, 4)
    for n in range(2):
        for i in range(5):
            for j in range(4):
                window = [img[n, min(max(i + di, 0), 4), min(max(j + dj, 0), 3)]
                          for di in (-1, 0, 1) for dj in (-1, 0, 1)]  # edges replicated
                assert out[n, i, j] == pytest.approx(sum(window) / 9, rel=1e-6)


# ----------------------------------------------------------------------------------------
# Sanity checks on real data
# ----------------------------------------------------------------------------------------

N = 500  # samples per report: every figure is compared with its floor at this size


@pytest.fixture(scope="module")
def mnist(mnist_path, tmp_path_factory):
    """MNIST's test split, shuffled (the file groups writers, so contiguous blocks differ), a
    classifier trained once on 5,000 of its rows, saved and read back as a user would, and one
    report on five sets of samples against one floor."""
    labels = mnist_path.parent / "t10k-labels-idx1-ubyte.gz"
    if not labels.exists():
        pytest.skip(f"MNIST labels not found at {labels}")
    d = load_dataset(mnist_path, labels=labels)
    d = d.subset(np.random.default_rng(0).permutation(len(d)))
    path = tmp_path_factory.mktemp("features") / "mnist-classifier.h5"
    save_classifier(path, train_classifier(d.subset(slice(0, 5000)), epochs=3))
    model = load_classifier(path)
    train, real, holdout = d.x[:8000], d.x[8000:9000], d.subset(slice(9000, 10000))
    samples = dict(unseen=d.x[9000:9000 + N],  # held-out reals as "samples": a perfect generator
                   blurred=box_blur(d.x[9500:], (28, 28)),
                   mean=np.repeat(train.mean(0, keepdims=True), N, 0),
                   pca=PCABaseline(20).fit(train).sample(N, seed=0),
                   copies=train[:N])
    report = feature_report(samples, real, holdout.x, model, train=train, seed=0,
                            holdout_labels=holdout.labels, image_shape=(28, 28))
    return dict(data=d, model=model, real=real, holdout=holdout, report=report, **report["samples"])


def test_mnist_classifier_and_floor(mnist):
    assert mnist["model"].info["accuracy"] > 0.9
    assert mnist["report"]["check"]["ok"], mnist["report"]["check"]
    floor = mnist["report"]["floor"]
    assert 0.4 < floor["one_nn_accuracy"] < 0.6 and 0.8 < floor["density"] < 1.2
    assert floor["precision"] > 0.85 and floor["recall"] > 0.85 and floor["coverage"] > 0.85
    assert floor["class_entropy"] > 2.2 and floor["inception_score"] > 4
    assert 0.8 < floor["novelty_median_ratio"] < 1.2 and floor["copy_fraction"] < 0.15
    # held-out reals as samples land on the floor, not far above it
    assert mnist["unseen"]["fid"] < 2 * floor["fid"] and 0.4 < mnist["unseen"]["one_nn_accuracy"] < 0.6
    assert mnist["unseen"]["kid"] < 3 * abs(floor["kid"]) + 0.05 * mnist["mean"]["kid"]


def test_mnist_blurred_digits_score_worse_than_real(mnist):
    blurred, floor = mnist["blurred"], mnist["report"]["floor"]
    assert blurred["fid"] > 1.5 * floor["fid"]
    assert blurred["kid"] > 3 * abs(floor["kid"])  # the floor's size is KID's noise at this n
    assert blurred["recall"] < floor["recall"] - 0.05
    assert blurred["one_nn_accuracy"] > floor["one_nn_accuracy"] + 0.05


def test_mnist_mean_image_copies_score_worst(mnist):
    mean = mnist["mean"]
    assert mean["fid"] > max(f["fid"] for name, f in mnist["report"]["samples"].items() if name != "mean")
    assert mean["kid"] > max(f["kid"] for name, f in mnist["report"]["samples"].items() if name != "mean")
    assert mean["class_entropy"] < 0.01 and mean["inception_score"] < 1.01
    assert mean["recall"] < 0.02 and mean["coverage"] < 0.05 and mean["one_nn_accuracy"] > 0.95


def test_mnist_pca_baseline_scores_worse_than_real(mnist):
    pca, floor = mnist["pca"], mnist["report"]["floor"]
    assert pca["fid"] > 5 * floor["fid"] and pca["kid"] > 3 * abs(floor["kid"])
    assert pca["inception_score"] < floor["inception_score"] - 2 and pca["recall"] < floor["recall"] - 0.3


def test_mnist_copies_of_training_images_are_flagged_as_memorised(mnist):
    assert mnist["copies"]["copy_fraction"] == 1 and mnist["copies"]["novelty_median_ratio"] < 1e-3
    assert mnist["unseen"]["copy_fraction"] < 0.15  # new reals are not copies


def test_mnist_useless_feature_maps_are_flagged(mnist):
    d, holdout = mnist["data"], mnist["holdout"]
    untrained = Classifier(784, (256, 128), 10, seed=0)
    shuffled = train_classifier(d.x[:2000], np.random.default_rng(1).permutation(d.labels[:2000]), epochs=2)
    for useless in (untrained, shuffled):
        check = check_feature_map(useless, holdout.x, None, (28, 28))  # caught without labels
        assert not check["ok"] and check["inception_score"] < 2, check
    assert any("near chance" in p for p in check_feature_map(untrained, holdout.x, holdout.labels)["problems"])
    assert any("recorded held-out accuracy" in p for p in check_feature_map(shuffled, holdout.x)["problems"])
    # the report carries the verdict
    report = feature_report(d.x[9000:9000 + 50], mnist["real"][:50], holdout.x, untrained)
    assert not report["check"]["ok"]


class ConstantMap:
    """A feature map that ignores its input: one feature vector, one class, for every row."""

    input_dim = 4

    def features(self, x):
        return np.ones((len(x), 3))

    def probs(self, x):
        return np.tile([0.9, 0.05, 0.05], (len(x), 1))


def test_check_feature_map_flags_a_map_that_ignores_its_input():
    x = np.random.default_rng(8).random((40, 4))
    check = check_feature_map(ConstantMap(), x, np.arange(40) % 3, image_shape=(2, 2))
    assert not check["ok"] and len(check["problems"]) == 4, check  # chance, IS, one class, constant
    assert check["accuracy"] == pytest.approx(14 / 40) and check["class_entropy"] == 0
    with pytest.raises(DataError, match="one per row"):
        check_feature_map(ConstantMap(), x, np.arange(39))


def test_glyph_classes():
    data = glyphs(3000)
    model = train_classifier(data.subset(slice(0, 2000)), hidden=(128, 64), epochs=4)
    held = data.subset(slice(2000, 3000))
    train, real, holdout = data.x[:2000], held.x[:500], held.subset(slice(500, 1000))
    other = glyphs(N, seed=1).x  # new glyphs: as good as real
    samples = dict(other=other, blurred=box_blur(other, (28, 28)), mean=np.repeat(train.mean(0, keepdims=True), N, 0))
    r = feature_report(samples, real, holdout.x, model, train, seed=0, holdout_labels=holdout.labels,
                       image_shape=(28, 28))
    assert r["check"]["ok"], r["check"]
    other, blurred, mean, floor = r["samples"]["other"], r["samples"]["blurred"], r["samples"]["mean"], r["floor"]
    assert other["fid"] < 1.5 * floor["fid"] and 0.4 < other["one_nn_accuracy"] < 0.6
    # blurred glyphs look like glyphs of wider strokes: a small but clear step from the floor
    assert blurred["fid"] > 1.3 * floor["fid"] and blurred["recall"] < floor["recall"]
    assert mean["fid"] > 10 * blurred["fid"] and mean["kid"] > 10 * abs(floor["kid"])
    assert mean["class_entropy"] < 0.01 and mean["recall"] < 0.02
    assert floor["class_entropy"] > 2.2 and 0.4 < floor["one_nn_accuracy"] < 0.6


class PixelMap:
    """Features: the pixels themselves (sees every blur); probs: confident, varied classes."""

    input_dim = 36

    def features(self, x):
        return np.asarray(x, np.float64)

    def probs(self, x):
        cls = (np.asarray(x)[:, :3] > 0.5) @ np.array([1, 2, 4]) % 3  # varied, a function of the image
        return np.eye(3)[cls] * 0.97 + 0.01


class MeanMap(PixelMap):
    """Features: each image's mean brightness (and its square), which a 3x3 box blur nearly keeps."""

    def features(self, x):
        m = np.asarray(x, np.float64).mean(1, keepdims=True)
        return np.hstack([m, m * m])


def test_blur_check_separates_a_map_that_sees_blur_from_one_that_does_not():
    """min_blur_ratio: the check issue 21 asks (3x3-blurred real rows >= 10x the real-vs-real FID
    floor); the pixels see blur, the mean brightness does not, and only the threshold tells."""
    x = (np.random.default_rng(5).random((1000, 36)) > 0.6).astype(np.float64)
    sees = check_feature_map(PixelMap(), x, image_shape=(6, 6), min_blur_ratio=10)
    blind = check_feature_map(MeanMap(), x, image_shape=(6, 6), min_blur_ratio=10)
    assert sees["ok"] and sees["blur_ratio"] > 10 and sees["n_half"] == 500, sees
    assert not blind["ok"] and blind["blur_ratio"] < 10, blind
    assert [p for p in blind["problems"] if "barely sees blur" in p and "needs >= 10x" in p], blind["problems"]
    assert sees["blur_ratio"] == pytest.approx(sees["fid_blurred"] / sees["fid_floor"])
    # without the threshold the blind map passes the old, weak check (blurred only worse than the floor)
    weak = check_feature_map(MeanMap(), x, image_shape=(6, 6))
    assert not [p for p in weak["problems"] if "barely sees blur" in p]
    with pytest.raises(DataError, match="image shape"):
        check_feature_map(PixelMap(), x, min_blur_ratio=10)


def test_spearman_against_known_rankings():
    from tinydae.science.features import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(1 - 6 * 4 / (5 * 24))  # sum d^2 = 4
    # ties share the mean rank: ranks (0, 1.5, 1.5, 3) against (0, 1, 2, 3)
    r = np.array([0, 1.5, 1.5, 3]) - 1.5
    assert spearman([1, 2, 2, 5], [1, 2, 3, 4]) == pytest.approx(r @ (np.arange(4) - 1.5) / np.sqrt(r @ r * 5))
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(DataError):
        spearman([1, 2], [1, 2, 3])
