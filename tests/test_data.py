import gzip
import hashlib

import h5py
import numpy as np
import pytest

from tinydae import DataError, glyphs, load_dataset
from tinydae.data import read_idx


def test_glyphs_shape_range_and_determinism():
    a = glyphs(500, seed=1)
    assert a.x.shape == (500, 784) and a.x.dtype == np.float32 and a.image_shape == (28, 28)
    assert a.x.min() == 0 and a.x.max() == 1
    assert 0.05 < a.x.mean() < 0.25  # strokes on a dark background, like MNIST (0.13)
    np.testing.assert_array_equal(a.x, glyphs(500, seed=1).x)
    assert not np.array_equal(a.x, glyphs(500, seed=2).x)


def test_glyphs_has_ten_distinguishable_classes():
    train, test = glyphs(2000, seed=0), glyphs(1000, seed=1)
    means = np.stack([train.x[train.labels == k].mean(0) for k in range(10)])
    d = ((test.x[:, None, :] - means[None]) ** 2).sum(-1)
    accuracy = (d.argmin(1) == test.labels).mean()
    assert accuracy > 0.8, accuracy  # a nearest-class-mean classifier tells them apart


def test_mnist_idx_checksum_and_contents(mnist_path):
    assert hashlib.md5(mnist_path.read_bytes()).hexdigest() == "9fb629c4189551a2d022fa330f9573f3"
    d = load_dataset(mnist_path)
    assert d.x.shape == (10000, 784) and d.image_shape == (28, 28)
    assert d.x.min() == 0 and d.x.max() == 1
    assert abs(d.x.mean() - 0.1325) < 0.001  # the known MNIST mean intensity


def test_raw_idx_equals_gz_and_limit(mnist_path, tmp_path):
    raw = tmp_path / "images-idx3-ubyte"
    raw.write_bytes(gzip.decompress(mnist_path.read_bytes()))
    a, b = load_dataset(mnist_path, limit=50), load_dataset(raw, limit=50)
    assert a.x.shape == (50, 784)
    np.testing.assert_array_equal(a.x, b.x)


def test_bad_idx_files(tmp_path):
    bad = tmp_path / "bad-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 20)
    with pytest.raises(DataError, match="magic"):
        read_idx(bad)
    short = tmp_path / "short-idx3-ubyte"
    short.write_bytes(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x01" * 100)
    with pytest.raises(DataError, match="truncated"):
        read_idx(short)
    labels = tmp_path / "labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + bytes(range(5)))
    with pytest.raises(DataError, match="rows"):
        load_dataset(labels)


def test_npz_and_h5(tmp_path, rng):
    x = rng.random((20, 16)).astype(np.float32)
    np.savez(tmp_path / "one.npz", images=x)
    d = load_dataset(tmp_path / "one.npz")
    np.testing.assert_array_equal(d.x, x)
    assert d.image_shape == (4, 4)
    np.savez(tmp_path / "two.npz", a=x, b=x)
    with pytest.raises(DataError, match="--key"):
        load_dataset(tmp_path / "two.npz")
    assert load_dataset(tmp_path / "two.npz", key="b").x.shape == (20, 16)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("group/pixels", data=(x * 255).astype(np.uint8).reshape(20, 4, 4))
        f.create_dataset("labels", data=np.arange(20))
    with pytest.raises(DataError, match="group/pixels"):
        load_dataset(tmp_path / "d.h5")
    h = load_dataset(tmp_path / "d.h5", key="group/pixels", limit=7)
    assert h.x.shape == (7, 16) and h.x.max() <= 1


def test_out_of_range_floats_name_the_fix(tmp_path, rng):
    x = rng.normal(size=(10, 9))
    np.savez(tmp_path / "x.npz", x=x)
    with pytest.raises(DataError, match="--rescale"):
        load_dataset(tmp_path / "x.npz")
    r = load_dataset(tmp_path / "x.npz", rescale=True)
    assert r.x.min() == 0 and r.x.max() == 1
    np.testing.assert_allclose(r.x, (x - x.min()) / (x.max() - x.min()), rtol=1e-6)
    np.savez(tmp_path / "i.npz", x=np.arange(90, dtype=np.int16).reshape(10, 9))
    with pytest.raises(DataError, match="--rescale"):
        load_dataset(tmp_path / "i.npz")
    x[0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    with pytest.raises(DataError, match="NaN"):
        load_dataset(tmp_path / "nan.npz", rescale=True)


@pytest.mark.parametrize("name", ["missing.npz", "data.csv", "."])
def test_bad_sources(tmp_path, name):
    (tmp_path / "data.csv").write_text("1,2,3\n")
    with pytest.raises(DataError):
        load_dataset(tmp_path / name)
    with pytest.raises(DataError):
        load_dataset("glyphs", limit=0)


def test_split_is_seeded_disjoint_and_sized():
    d = glyphs(1000)
    tr, va = d.split(0.1, seed=4)
    assert len(tr) == 900 and len(va) == 100
    rows = {r.tobytes() for r in tr.x}
    assert not any(r.tobytes() in rows for r in va.x)
    np.testing.assert_array_equal(va.x, d.split(0.1, seed=4)[1].x)
    assert not np.array_equal(va.x, d.split(0.1, seed=5)[1].x)
    with pytest.raises(DataError):
        glyphs(1).split(0.5)
