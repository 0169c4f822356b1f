"""The feature-space classifier: softmax cross-entropy, gradients, training, files, labels, CLI."""
import doctest
import json
import math

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import tinydae.classifier
from tinydae import CheckpointError, DataError, glyphs, load_dataset
from tinydae.classifier import (Classifier, load_classifier, save_classifier, shift_images,
                                softmax_cross_entropy_backward, softmax_cross_entropy_forward,
                                train_classifier)
from tinydae.cli import cli
from tinydae.data import load_labels
from tinydae.gradcheck import check_model

from gradcheck_helpers import numeric_grad, rel_error


def brute_force_xent(logits, labels):
    """mean_i -log(exp(z_i,y_i) / sum_c exp(z_ic)), term by term in Python floats."""
    total = 0.0
    for z, y in zip(logits.tolist(), labels.tolist()):
        total += -math.log(math.exp(z[y]) / sum(math.exp(v) for v in z))
    return total / len(labels)


def test_doctests():
    assert doctest.testmod(tinydae.classifier).failed == 0


@given(seed=st.integers(0, 2**32 - 1), B=st.integers(1, 6), C=st.integers(2, 7))
@settings(max_examples=40)
def test_softmax_cross_entropy_against_brute_force(seed, B, C):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, (B, C))
    y = rng.integers(0, C, B)
    assert softmax_cross_entropy_forward(z, y) == pytest.approx(brute_force_xent(z, y), rel=1e-12)
    # the gradient's closed form, softmax - onehot over B, written out element by element
    d = np.empty_like(z)
    softmax_cross_entropy_backward(d, z, y)
    for i in range(B):
        norm = sum(math.exp(v) for v in z[i])
        for c in range(C):
            assert d[i, c] == pytest.approx((math.exp(z[i, c]) / norm - (c == y[i])) / B, abs=1e-14)
    # float32 logits: the same loss to float32 precision
    z32 = z.astype(np.float32)
    assert softmax_cross_entropy_forward(z32, y) == pytest.approx(brute_force_xent(z32.astype(np.float64), y),
                                                                  rel=1e-5, abs=1e-6)


def test_softmax_cross_entropy_gradcheck_float64():
    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, (5, 4))
    y = np.array([0, 3, 1, 1, 2])
    d = np.empty_like(z)
    softmax_cross_entropy_backward(d, z, y)
    assert rel_error(d, numeric_grad(lambda: softmax_cross_entropy_forward(z, y), z)) < 1e-8


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    for dtype in (np.float32, np.float64):
        z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]], dtype)
        d = np.empty_like(z)
        loss = softmax_cross_entropy_forward(z, np.array([1, 1]))
        softmax_cross_entropy_backward(d, z, np.array([1, 1]))
        assert loss == pytest.approx(1e4, rel=1e-6)  # row 0 pays 2e4, row 1 nothing
        assert np.isfinite(d).all() and d[0, 1] == pytest.approx(-0.5) and d[0, 0] == pytest.approx(0.5)


def test_softmax_cross_entropy_rejects_bad_labels():
    z = np.zeros((2, 3))
    with pytest.raises(DataError, match=r"\[0, 3\)"):
        softmax_cross_entropy_forward(z, np.array([0, 3]))
    with pytest.raises(DataError, match="labels"):
        softmax_cross_entropy_forward(z, np.array([0, 1, 2]))


def random_classifier(seed, hidden=(5, 3), classes=4):
    """float64, nonzero biases: zero biases can put a ReLU exactly on its kink."""
    model = Classifier(7, hidden, classes, "float64", seed)
    rng = np.random.default_rng([seed, 1])
    for name, view in model.named_params.items():
        if name.endswith(".b"):
            view[...] = rng.normal(0, 0.5, view.shape)
    return model


@pytest.mark.parametrize("seed,hidden", [(0, (5, 3)), (1, (6,)), (2, (4, 4, 3))])
def test_classifier_gradcheck(seed, hidden):
    model = random_classifier(seed, hidden)
    rng = np.random.default_rng(seed)
    x = rng.random((6, 7))
    errors = check_model(model, x, rng.integers(0, 4, 6))
    assert set(errors) == {name for name, _ in model.layout}
    assert max(errors.values()) < 1e-6, errors


def test_classifier_structure():
    m = Classifier(784, (32, 16), 10, seed=4)
    assert repr(m) == "Classifier(784-32-16-10, relu, float32)"
    assert [n for n, _ in m.layout] == ["fc0.W", "fc0.b", "fc1.W", "fc1.b", "out.W", "out.b"]
    assert m.params.size == 784 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    m.named_params["out.b"][...] = 7  # the named views share the flat buffer
    assert (m.params[-10:] == 7).all()
    x = np.random.default_rng(0).random((5, 784)).astype(np.float32)
    assert m.features(x).shape == (5, 16) and m.features(x).dtype == np.float64
    assert (m.features(x) >= 0).all()  # relu features
    p = m.probs(x)
    assert p.shape == (5, 10) and np.allclose(p.sum(1), 1)
    # batching does not change the answer
    assert np.allclose(m.logits(x, batch_size=2), m.logits(x), rtol=1e-6)
    with pytest.raises(DataError, match=r"\(B, 784\)"):
        m.features(np.zeros((3, 10)))


def test_shift_images_moves_pixels_by_whole_offsets():
    x = np.zeros((40, 36), np.float32)
    x[:, 2 * 6 + 3] = 1  # one lit pixel at (2, 3) in 6 x 6 images
    y = shift_images(x, (6, 6), np.random.default_rng(0), max_shift=2).reshape(40, 6, 6)
    where = [np.argwhere(img) for img in y]
    assert all(len(w) == 1 for w in where)  # the pixel moved, nothing else appeared
    offsets = {tuple(w[0] - (2, 3)) for w in where}
    assert len(offsets) > 5 and all(max(map(abs, o)) <= 2 for o in offsets)


def test_train_on_glyphs_is_accurate_and_deterministic():
    data = glyphs(1500)
    a = train_classifier(data, hidden=(64,), epochs=6, seed=3)
    b = train_classifier(data, hidden=(64,), epochs=6, seed=3)
    c = train_classifier(data, hidden=(64,), epochs=6, seed=4)
    assert np.array_equal(a.params, b.params) and not np.array_equal(a.params, c.params)
    assert a.info["accuracy"] >= 0.9 and a.info["n_heldout"] == 150 and a.info["data"] == "glyphs"
    assert a.info["chance"] < 0.2 and len(a.info["history"]) == 6 and a.info["augment"]


def test_train_rejects_missing_or_wrong_labels():
    x = np.random.default_rng(0).random((20, 4)).astype(np.float32)
    with pytest.raises(DataError, match="no labels"):
        train_classifier(load_dataset("gmm:4", limit=20))
    with pytest.raises(DataError, match="19 labels for 20"):
        train_classifier(x, np.zeros(19, int))
    with pytest.raises(DataError, match="integers"):
        train_classifier(x, np.full(20, 0.5))


def test_train_mnist_8000_rows_reaches_95_percent(mnist_path):
    labels = mnist_path.parent / "t10k-labels-idx1-ubyte.gz"
    if not labels.exists():
        pytest.skip(f"MNIST labels not found at {labels}")
    d = load_dataset(mnist_path, labels=labels)
    order = np.random.default_rng(0).permutation(len(d))  # the file groups writers: shuffle
    model = train_classifier(d.subset(order[:8000]), epochs=10)
    assert model.info["accuracy"] >= 0.95, model.info
    assert model.accuracy(d.x[order[8000:]], d.labels[order[8000:]]) >= 0.95


# ----------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model():
    return train_classifier(glyphs(600), hidden=(32,), epochs=2, seed=1)


def test_save_load_roundtrip(tmp_path, small_model):
    path = tmp_path / "c.h5"
    save_classifier(path, small_model)
    back = load_classifier(path)
    assert np.array_equal(back.params, small_model.params) and back.config == small_model.config
    assert back.info == json.loads(json.dumps(small_model.info))
    x = glyphs(10, seed=9).x
    assert np.array_equal(back.features(x), small_model.features(x))
    assert not list(tmp_path.glob("*.tmp-*"))  # the atomic write left no temporary


def test_load_detects_damage(tmp_path, small_model):
    path = tmp_path / "c.h5"
    save_classifier(path, small_model)
    with h5py.File(path, "r+") as f:  # rewritten through HDF5: Fletcher-32 is recomputed, SHA-256 is not
        f["params"][3] += 1
    with pytest.raises(CheckpointError, match="checksum mismatch in /params"):
        load_classifier(path)
    save_classifier(path, small_model)
    with h5py.File(path, "r+") as f:
        f.attrs["info"] = json.dumps(dict(small_model.info, accuracy=0.999))
    with pytest.raises(CheckpointError, match="attributes of /"):
        load_classifier(path)


def test_load_refuses_other_files(tmp_path):
    with pytest.raises(CheckpointError, match="no such classifier"):
        load_classifier(tmp_path / "none.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(CheckpointError, match="cannot open"):
        load_classifier(tmp_path / "text.h5")
    with h5py.File(tmp_path / "dae.h5", "w") as f:
        f.attrs["format"] = "tinydae-checkpoint"
    with pytest.raises(CheckpointError, match="DAE checkpoint"):
        load_classifier(tmp_path / "dae.h5")


# ----------------------------------------------------------------------------------------
# Labels
# ----------------------------------------------------------------------------------------


def idx_labels(path, values):
    values = bytes(values)
    path.write_bytes(b"\x00\x00\x08\x01" + len(values).to_bytes(4, "big") + values)
    return path


def idx_images(path, n):
    path.write_bytes(b"\x00\x00\x08\x03" + b"".join(k.to_bytes(4, "big") for k in (n, 2, 2))
                     + bytes(range(1, 4 * n + 1)))
    return path


def test_load_labels_formats(tmp_path):
    assert load_labels(idx_labels(tmp_path / "l-idx1-ubyte", [3, 1, 4])).tolist() == [3, 1, 4]
    np.savez(tmp_path / "l.npz", y=np.array([[2.0], [0.0]]))  # whole floats in a column are fine
    assert load_labels(tmp_path / "l.npz").tolist() == [2, 0]
    with h5py.File(tmp_path / "l.h5", "w") as f:
        f["a/y"] = np.array([5, 6], np.int32)
        f["b"] = np.zeros(3)
    assert load_labels(tmp_path / "l.h5", key="a/y").dtype == np.int64


@pytest.mark.parametrize("array,message", [
    (np.array([0.5, 1.0]), "integers"),
    (np.array([1, -1]), ">= 0"),
    (np.ones((2, 3), np.uint8), "one integer per example"),
    (np.array(["a", "b"]), "integers"),
])
def test_load_labels_rejects_non_labels(tmp_path, array, message):
    np.savez(tmp_path / "bad.npz", y=array)
    with pytest.raises(DataError, match=message):
        load_labels(tmp_path / "bad.npz")


def test_load_dataset_attaches_labels(tmp_path):
    images = idx_images(tmp_path / "im-idx3-ubyte", 4)
    d = load_dataset(images, labels=idx_labels(tmp_path / "l-idx1-ubyte", [1, 2, 3, 0]), limit=3)
    assert d.labels.tolist() == [1, 2, 3] and d.x.shape == (3, 4)
    assert d.split(0.34)[1].labels is not None
    with pytest.raises(DataError, match="3 labels for the 4 examples"):
        load_dataset(images, labels=idx_labels(tmp_path / "short-idx1-ubyte", [1, 2, 3]))
    with pytest.raises(DataError, match="one integer per example"):
        load_dataset(images, labels=images)  # the images file given as labels
    with pytest.raises(DataError, match="bring their own labels"):
        load_dataset("glyphs", labels=images)
    with pytest.raises(DataError, match="no such file"):
        load_dataset(images, labels=tmp_path / "missing.gz")


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------

TINY = ["--limit", "600", "--hidden", "32,16", "--epochs", "2"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def error_line(r):
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained_cli(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls") / "c.h5"
    r = invoke("classifier", "train", *TINY, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout)


def test_cli_train_writes_a_classifier(trained_cli):
    out, summary = trained_cli
    assert summary["classifier"] == "Classifier(784-32-16-10, relu, float32)"
    assert summary["n_train"] == 540 and summary["n_heldout"] == 60 and 0 <= summary["accuracy"] <= 1
    model = load_classifier(out)
    assert model.info["source"]["data"] == "glyphs" and model.info["source"]["limit"] == 600


def test_cli_train_refuses_to_overwrite(trained_cli, tmp_path):
    out, _ = trained_cli
    before = out.read_bytes()
    assert "--overwrite" in error_line(invoke("classifier", "train", *TINY, "--out", out))
    assert out.read_bytes() == before
    r = invoke("classifier", "train", *TINY, "--epochs", "1", "--out", tmp_path / "c.h5", "--overwrite")
    assert r.exit_code == 0 and "held-out accuracy" in r.stdout and "epoch 1/1" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--out", "{tmp}"], "is a directory"),
    (["--data", "gmm:4"], "no labels"),
    (["--data", "{tmp}/missing.gz"], "no such file"),
    (["--hidden", "0"], "--hidden"),
    (["--epochs", "0"], "--epochs"),
    (["--labels", "{tmp}/l.gz"], "bring their own labels"),
])
def test_cli_train_user_mistakes(tmp_path, args, message):
    args = [a.format(tmp=tmp_path) for a in args]
    out = [] if "--out" in args else ["--out", tmp_path / "c.h5"]
    assert message in error_line(invoke("classifier", "train", *TINY, *out, *args))


def test_cli_evaluate_prints_figures_beside_floors(trained_cli, tmp_path):
    out, _ = trained_cli
    samples = tmp_path / "s.npz"
    np.savez(samples, x=glyphs(50, seed=5).x)
    r = invoke("classifier", "evaluate", out, samples, "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["n"] == 30  # half of the 60 held-out rows
    assert set(report["samples"]) == set(report["floor"]) and "fid" in report["samples"]
    assert "copy_fraction" in report["samples"] and "ok" in report["check"]
    r = invoke("classifier", "evaluate", out, samples)
    assert r.exit_code == 0 and "FID" in r.stdout and "floor" in r.stdout and "1-NN accuracy" in r.stdout
    # an .h5 from sample --h5 holds several datasets: 'samples' is found without --samples-key
    with h5py.File(tmp_path / "chain.h5", "w") as f:
        f["samples"] = glyphs(40, seed=6).x
        f["kept_steps"] = np.arange(3)
    assert invoke("classifier", "evaluate", out, tmp_path / "chain.h5", "--json").exit_code == 0
    # so does reproduce's .npz (uint8 samples beside seed, step, image_shape): the same figures as
    # the float rows it holds, which a wrong key (an error) or a wrong scale (other figures) would not give
    x = np.round(glyphs(40, seed=6).x * 255).astype(np.uint8)
    np.savez(tmp_path / "run.npz", samples=x, seed=np.zeros(40, np.int64), step=np.int64(3),
             image_shape=np.array([28, 28]))
    np.savez(tmp_path / "plain.npz", x=x.astype(np.float32) / 255)
    r, want = (invoke("classifier", "evaluate", out, tmp_path / name, "--json") for name in ("run.npz", "plain.npz"))
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["samples"]["fid"] == pytest.approx(json.loads(want.stdout)["samples"]["fid"], rel=1e-6)


def test_cli_evaluate_user_mistakes(trained_cli, tmp_path):
    out, _ = trained_cli
    np.savez(tmp_path / "small.npz", x=np.full((10, 16), 0.5, np.float32))
    assert "784" in error_line(invoke("classifier", "evaluate", out, tmp_path / "small.npz"))
    assert "no such file" in error_line(invoke("classifier", "evaluate", out, tmp_path / "none.npz"))
    np.savez(tmp_path / "s.npz", x=glyphs(20).x)
    assert "no such classifier" in error_line(invoke("classifier", "evaluate", tmp_path / "no.h5", tmp_path / "s.npz"))
    assert "--val-fraction" in error_line(invoke("classifier", "evaluate", out, tmp_path / "s.npz",
                                                 "--val-fraction", "0"))
    np.savez(tmp_path / "few.npz", x=glyphs(5).x)
    assert "at least 8 samples" in error_line(invoke("classifier", "evaluate", out, tmp_path / "few.npz"))


# ----------------------------------------------------------------------------------------
# Convolutional classifiers (issue 20): the same layers as the conv DAE
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,shape", [("conv:2,3", (7, 5, 1)), ("conv:2k3,3,fc4", (6, 6, 2))])
def test_conv_classifier_gradcheck_and_features(arch, shape):
    m = Classifier(int(np.prod(shape)), arch=arch, classes=3, dtype="float64", seed=2, input_shape=shape)
    rng = np.random.default_rng(3)
    for name, view in m.named_params.items():
        if name.endswith(".b"):
            view[...] = rng.normal(0, 0.5, view.shape)
    x, y = rng.random((4, m.input_dim)), np.array([0, 1, 2, 1])
    assert max(check_model(m, x, y).values()) < 1e-6
    assert m.features(x).shape == (4, m.feature_dim) == (4, 4 if "fc4" in arch else m.net.shapes[-2][0])
    assert repr(m) == f"Classifier({arch} on {'x'.join(map(str, shape))} -> 3, relu, float64)"


def test_conv_classifier_trains_from_the_cli_and_loads(tmp_path):
    r = CliRunner().invoke(cli, ["classifier", "train", "--arch", "conv:8,16,fc32", "--limit", "1000", "--epochs",
                                 "3", "--out", str(tmp_path / "c.h5"), "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["classifier"] == "Classifier(conv:8,16,fc32 on 28x28x1 -> 10, relu, float32)"
    assert summary["accuracy"] > 0.5 > summary["chance"]  # 100 held-out glyphs, chance ~0.1
    back = load_classifier(tmp_path / "c.h5")
    assert back.config["arch"] == "conv:8,16,fc32" and back.feature_dim == 32
    r = CliRunner().invoke(cli, ["classifier", "train", "--arch", "conv:8", "--hidden", "8", "--out",
                                 str(tmp_path / "d.h5")])
    assert r.exit_code == 2 and "give --arch or --hidden" in r.stderr


def test_version_1_classifier_files_still_load(tmp_path, small_model):
    """Version 1 stored hidden widths in its config; it loads as the same mlp, same layout."""
    from tinydae.checkpoint import _attrs_digest

    path = tmp_path / "v1.h5"
    save_classifier(path, small_model)
    with h5py.File(path, "r+") as f:
        c = small_model.config
        f.attrs["config"] = json.dumps(dict(input_dim=c["input_dim"], hidden=[32], classes=c["classes"],
                                            dtype=c["dtype"], seed=c["seed"]))
        f.attrs["format_version"] = 1
        f.attrs["attrs_sha256"] = _attrs_digest(f)
    back = load_classifier(path)
    assert back.config == dict(small_model.config, input_shape=[784])  # version 1 did not record the image shape
    assert back.layout == small_model.layout and np.array_equal(back.params, small_model.params)


def test_fit_trains_a_classifier_on_labels():
    """The classifier is trained by the DAE's loop (train.fit): labels as targets, its own
    validation figures, the learning-rate schedule and augmentation hooks."""
    from tinydae import fit
    from tinydae.errors import ConfigError

    data = glyphs(600, seed=2)
    train, val = data.split(0.2, seed=0)
    model = Classifier(784, arch="conv:8,fc16", classes=10, seed=0)
    seen = []

    def schedule(step, total):
        seen.append((step, total))
        return 2e-3

    augmented = []

    def augment(x, seed, step):
        augmented.append((seed, step, len(x)))
        return x

    state = fit(model, train, val, corruption="none", epochs=3, batch_size=32, seed=1, handle_sigint=False,
                lr_schedule=schedule, augment=augment)
    assert seen[0] == (0, 3 * 15) and seen[-1] == (44, 45)
    assert [a[1] for a in augmented] == list(range(45)) and {a[0] for a in augmented} == {1}
    assert [r["epoch"] for r in state.history] == [1, 2, 3] and state.history[-1]["val_accuracy"] > 0.3
    assert state.history[-1]["val_loss"] < state.history[0]["val_loss"]
    with pytest.raises(DataError, match="a classifier trains on labelled data"):
        fit(model, train.x, None, epochs=1, handle_sigint=False)
    with pytest.raises(ConfigError, match="save a classifier with tinydae.classifier.save_classifier"):
        fit(model, train, None, epochs=1, checkpoint_path="c.h5", handle_sigint=False)


def test_fit_hooks_and_labels_are_checked_before_they_do_harm():
    from tinydae import Adam, fit
    from tinydae.data import Dataset
    from tinydae.errors import ConfigError

    data = glyphs(200, seed=3)
    model = Classifier(784, hidden=(8,), classes=10, seed=0)
    opt = Adam(model, lr=1e-3)
    fit(model, data, None, optimizer=opt, epochs=1, batch_size=50, handle_sigint=False,
        lr_schedule=lambda step, total: 5e-4 * (1 - step / total))
    assert opt.hyper["lr"] == 1e-3  # the schedule's last value does not stay behind
    assert model.corruption == "none"  # a classifier's default: its inputs as they are
    for schedule, message in ((lambda s, t: -1e-3, "finite and > 0"), (lambda s, t: float("nan"), "finite and > 0"),
                              (lambda s, t: "fast", "must return a number")):
        with pytest.raises(ConfigError, match=message):
            fit(model, data, None, epochs=1, handle_sigint=False, lr_schedule=schedule)
    with pytest.raises(ConfigError, match="augment returned ndarray float32 \\(50, 783\\)"):
        fit(model, data, None, epochs=1, batch_size=50, handle_sigint=False, augment=lambda x, s, t: x[:, 1:])
    bad = Dataset(data.x[:20], data.image_shape, "bad", np.full(20, 12))
    with pytest.raises(DataError, match=r"the validation labels lie in \[12, 12\]; this classifier has 10 classes"):
        fit(model, data, bad, epochs=1, handle_sigint=False)


def test_fit_corrupts_a_classifiers_inputs_when_asked():
    """corruption= reaches a classifier's inputs (a regression: it once trained on clean rows)."""
    import tinydae as td
    from tinydae.classifier import Classifier

    data = td.glyphs(400, seed=0)
    runs = []
    for corruption in ("none", "masking:0.9"):
        model = Classifier(784, hidden=(32,), seed=0)
        state = td.fit(model, data, epochs=1, corruption=corruption, seed=0)
        runs.append((state.history[-1]["train_loss"], model.params.copy()))
    assert runs[0][0] != runs[1][0] and not np.array_equal(runs[0][1], runs[1][1])
