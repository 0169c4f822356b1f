"""Datasets: rows of pixels in [0, 1], float32.

Legend: N examples, D pixels per example, H x W the image shape (for PNG grids).

Sources:
  "glyphs"           built-in, procedural: 28x28 digit-like strokes of ten classes with
                     seeded affine jitter and stroke width (synthetic, not MNIST)
  "gmm:D"            built-in, a Gaussian mixture in [0, 1]^D with a known density ("gmm"
                     alone: D = 2); Dataset.density gives its exact log p and score
An existing file always wins over a built-in name (a file gmm_samples.npz is a file).
  *.gz / *-ubyte / *.idx   MNIST-style IDX files (magic and dims checked)
  *.npy              one array
  *.npz              one array (or name it with key=)
  *.h5 / *.hdf5      one dataset (or give its path with key=)
uint8 is scaled by 1/255; float data must already lie in [0, 1] (or pass rescale=True).

load_dataset(..., lazy=True) leaves a .npy (memory-mapped) or HDF5 file on disk: Dataset.x is
then a Rows, which reads only the rows it is indexed with (a training batch, a rank's share of
it), so a data set larger than memory can be trained on.

Labels (for the feature-space classifier, tinydae/classifier.py): load_labels(path) reads one
integer class per example from the same formats (MNIST's *-labels-idx1-ubyte.gz, .npz, .h5);
load_dataset(..., labels=PATH) attaches them after checking that the counts match.
"""
import gzip
import math
import os
import re
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np

from tinydae.errors import DataError

GLYPH_SIZE = 28


@dataclass
class Dataset:
    x: np.ndarray                      # (N, D) float32 in [0, 1]
    image_shape: tuple | None          # (H, W) with H * W == D, (H, W, C) channels last, or None
    name: str
    labels: np.ndarray | None = None   # (N,) int, when the source has them
    density: object = None             # a metrics.GaussianMixture for the gmm data, else None

    def __len__(self):
        return self.x.shape[0]

    @property
    def dim(self):
        return self.x.shape[1]

    def subset(self, index, name=None):
        labels = None if self.labels is None else self.labels[index]
        x = self.x.take(index) if isinstance(self.x, Rows) else self.x[index]  # Rows: nothing read yet
        return Dataset(x, self.image_shape, name or self.name, labels, self.density)

    def split(self, val_fraction, seed=0):
        """Seeded shuffle, then (train, val) with round(N * val_fraction) validation rows."""
        if not 0 <= val_fraction < 1:
            raise DataError(f"validation fraction must be in [0, 1), got {val_fraction}")
        _check_seed(seed)
        n = len(self)
        n_val = int(round(n * val_fraction))
        if val_fraction > 0:
            n_val = max(n_val, 1)
        if n - n_val < 1:
            raise DataError(f"{n} examples leave none for training with validation fraction "
                            f"{val_fraction}; use more data or a smaller fraction")
        order = np.random.default_rng([seed, 0x5B117]).permutation(n)
        return (self.subset(order[n_val:], f"{self.name} (train)"),
                self.subset(order[:n_val], f"{self.name} (val)"))


# ----------------------------------------------------------------------------------------
# Built-in procedural glyphs
# ----------------------------------------------------------------------------------------


def _check_seed(seed):
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")


def _arc(cx, cy, rx, ry, deg0, deg1, n):
    a = np.radians(np.linspace(deg0, deg1, n))
    return list(zip(cx + rx * np.cos(a), cy + ry * np.sin(a)))  # y points down


# Each class: polylines in a unit box (x right, y down).
_GLYPH_STROKES = [
    [_arc(0.5, 0.5, 0.19, 0.29, 0, 360, 17)],
    [[(0.40, 0.30), (0.53, 0.20), (0.53, 0.80)]],
    [_arc(0.5, 0.36, 0.18, 0.16, 190, 390, 9) + [(0.30, 0.80), (0.72, 0.80)]],
    [_arc(0.5, 0.35, 0.17, 0.15, 200, 450, 9), _arc(0.5, 0.65, 0.19, 0.15, 270, 520, 9)],
    [[(0.60, 0.20), (0.28, 0.62), (0.74, 0.62)], [(0.61, 0.34), (0.61, 0.80)]],
    [[(0.68, 0.20), (0.37, 0.20), (0.34, 0.47)], _arc(0.5, 0.63, 0.18, 0.17, 220, 500, 11)],
    [[(0.64, 0.20), (0.45, 0.32), (0.34, 0.50), (0.32, 0.66)], _arc(0.5, 0.65, 0.18, 0.15, 0, 360, 13)],
    [[(0.30, 0.20), (0.70, 0.20), (0.42, 0.80)]],
    [_arc(0.5, 0.35, 0.15, 0.14, 0, 360, 13), _arc(0.5, 0.65, 0.18, 0.16, 0, 360, 13)],
    [_arc(0.5, 0.36, 0.17, 0.15, 0, 360, 13), [(0.67, 0.36), (0.62, 0.80)]],
]


def _segments(polylines):
    """-> (S, 2, 2): start and end point of every segment"""
    return np.array([(p, q) for line in polylines for p, q in zip(line[:-1], line[1:])], np.float32)


def _render(segs, width, size):
    """Anti-aliased strokes: intensity = clip(width/2 + 1/2 - distance, 0, 1).

    segs: (n, S, 2, 2) float32 in pixel coordinates; width: (n,) -> (n, size*size) float32
    """
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5)
    px, py = xs.ravel(), ys.ravel()                                 # (D,) pixel centres
    ax, ay = segs[:, :, 0, 0, None], segs[:, :, 0, 1, None]         # (n, S, 1)
    dx, dy = segs[:, :, 1, 0, None] - ax, segs[:, :, 1, 1, None] - ay
    rx, ry = px - ax, py - ay                                       # (n, S, D)
    # Position of the closest point along each segment, clipped to the segment.
    t = np.clip((rx * dx + ry * dy) / np.maximum(dx * dx + dy * dy, np.float32(1e-12)), 0, 1)
    rx -= t * dx
    ry -= t * dy
    d = np.sqrt((rx * rx + ry * ry).min(axis=1))                    # (n, D) distance to stroke
    return np.clip(width[:, None] / 2 + np.float32(0.5) - d, 0, 1)


def glyphs(n=10000, seed=0, size=GLYPH_SIZE):
    """The built-in synthetic dataset: n digit-like glyphs, classes 0-9 in turn.

    Each glyph gets a seeded random rotation (+-14 deg), scale (0.85-1.15), aspect,
    shear, shift (+-2 px) and stroke width (1.4-3.2 px).  -> Dataset (n, size*size)
    """
    if n < 1:
        raise DataError(f"glyphs needs n >= 1, got {n}")
    _check_seed(seed)
    rng = np.random.default_rng([seed, 0x61F])
    labels = np.arange(n) % 10
    rot = rng.uniform(-0.25, 0.25, n)
    scale = rng.uniform(0.85, 1.15, n)
    aspect = rng.uniform(0.85, 1.15, n)
    shear = rng.uniform(-0.25, 0.25, n)
    shift = rng.uniform(-2.0, 2.0, (n, 2))
    width = rng.uniform(1.4, 3.2, n).astype(np.float32)
    # Per-image affine map of the unit box into pixel coordinates, about the centre.
    c, s = np.cos(rot), np.sin(rot)
    M = np.empty((n, 2, 2))
    M[:, 0, 0] = scale * aspect * c
    M[:, 0, 1] = scale * (shear * c - s)
    M[:, 1, 0] = scale * aspect * s
    M[:, 1, 1] = scale * (shear * s + c)
    M *= size
    x = np.empty((n, size * size), np.float32)
    for k in range(10):
        base = _segments(_GLYPH_STROKES[k]) - 0.5                   # (S, 2, 2) about centre
        for chunk in np.array_split(np.flatnonzero(labels == k), max(1, (labels == k).sum() // 256)):
            if chunk.size == 0:
                continue
            pts = np.einsum("nij,sej->nsei", M[chunk], base) + size / 2 + shift[chunk, None, None, :]
            x[chunk] = _render(pts.astype(np.float32), width[chunk], size)
    return Dataset(x, (size, size), "glyphs", labels)


def gmm(n=10000, dim=2, seed=0):
    """Known-density data: n draws from the built-in Gaussian mixture in [0, 1]^dim
    (metrics.make_gmm: 4 components, std 0.05, means in [0.3, 0.7]^dim).  The few draws
    beyond the cube (over 6 std out) are clipped.  -> Dataset with .density set."""
    from tinydae.metrics import make_gmm

    if n < 1 or dim < 1:
        raise DataError(f"gmm needs n >= 1 and dim >= 1, got n={n}, dim={dim}")
    _check_seed(seed)
    from tinydae.safety import check_memory

    # float64 draws and the float32 rows they become (a D of 10^11 asked for 10^15 values)
    check_memory(n * dim * 12 + dim * 64, f"gmm:{dim} data ({n:,} rows of {dim:,} values)",
                 "use a smaller dimension D or fewer rows (--limit)")
    density = make_gmm(dim)
    x = np.clip(density.sample(n, seed), 0, 1).astype(np.float32)
    return Dataset(x, None, f"gmm:{dim}", None, density)


# ----------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """An MNIST-style IDX file (raw or .gz) -> ndarray of its dims.

    Layout: 2 zero bytes, a type byte, a dims byte, one big-endian int32 per dim, data.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise DataError(f"{path}: not an IDX file (bad magic {raw[:4].hex() or 'empty'}; "
                        "expected 0000 08 03 for MNIST images)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header truncated")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX dims {dims} need {expected} data bytes, file has "
                        f"{len(raw) - header} (truncated or corrupt)")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims)


class Rows:
    """(N, D) float32 rows of a file, read when indexed: a .npy memory map or an HDF5 dataset.

    rows[i] for an int array or a slice i -> (len(i), D) float32 (uint8 / 255, bool as 0/1, floats
    as stored: fit checks their range block by block); take(i) -> the Rows of those positions,
    reading nothing.  Only the rows asked for leave the disk (the page cache aside).
    """

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, array, source, index=None):
        self.array, self.source = array, source  # (N, ...) as stored; index: positions -> its rows
        self.index = None if index is None else np.asarray(index, np.int64)
        n = array.shape[0] if index is None else len(self.index)
        self.shape = (n, math.prod(array.shape[1:]))

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, item):
        if isinstance(item, slice):
            pos = np.arange(*item.indices(len(self)), dtype=np.int64)
        else:
            pos = np.asarray(item, np.int64)
            if pos.ndim != 1:
                raise TypeError("Rows are indexed by a slice or a 1-d array of row positions")
        rows = pos if self.index is None else self.index[pos]
        raw = self._read(rows).reshape(len(rows), -1)
        if raw.dtype == np.uint8:
            return raw.astype(np.float32) / np.float32(255)
        return raw.astype(np.float32)

    def _read(self, rows):
        if len(rows) == 0:
            return np.empty((0, *self.array.shape[1:]), self.array.dtype)
        if isinstance(self.array, np.ndarray):  # a memory map: reads these rows' pages only
            return np.asarray(self.array[rows])
        # h5py reads increasing, distinct indices: read those, then put them in the asked order
        unique, inverse = np.unique(rows, return_inverse=True)
        return self.array[unique][inverse]

    def take(self, index):
        index = np.asarray(index, np.int64)
        return Rows(self.array, self.source, index if self.index is None else self.index[index])

    def blocks(self, size=65536, part=(0, 1)):
        """(first position, float32 rows) of consecutive blocks; part=(k, K): blocks k, k + K, ..."""
        k, K = part
        for start in range(k * size, len(self), K * size):
            yield start, self[start:start + size]

    def __repr__(self):
        return f"Rows({self.source}, {self.shape[0]:,} x {self.shape[1]}, {self.array.dtype} on disk)"


def _open_lazy(path, key, option):
    """A .npy (memory-mapped) or HDF5 file's array, left on disk."""
    lower = path.lower()
    if lower.endswith(".npy"):
        return _read_npy(path, mmap=True)
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: cannot read HDF5 file ({e})") from None
    names = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return f[_pick(names, key, path, "dataset", option)]  # the file stays open while the dataset is used


def _read_npy(path, mmap=False):
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: cannot read .npy ({type(e).__name__}: {e}); save arrays with numpy.save") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: not a .npy array; save arrays with numpy.save")
    return arr


def _pick(names, key, path, what, option="--key"):
    if not names:
        raise DataError(f"{path}: holds no {what}s (empty)")
    if key is not None:
        if key not in names:
            raise DataError(f"{path}: no {what} {key!r}; it has: {', '.join(names) or 'none'}")
        return key
    if len(names) != 1:
        raise DataError(f"{path}: holds {len(names)} {what}s ({', '.join(names) or 'none'}); "
                        f"name one with {option}")
    return names[0]


def _read_npz(path, key, option="--key"):
    # np.load guesses the format from the first bytes and calls anything unknown "pickled data"
    # (or raises EOFError, which click turns into "Aborted!"), so check the zip container first.
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: empty file (0 bytes), not a .npz archive")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not a .npz file (no zip archive inside; save arrays with numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as z:
            name = _pick(list(z.files), key, path, "array", option)
            arr = z[name]
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{path}: cannot read .npz, damaged or not written by numpy.savez "
                        f"({type(e).__name__}: {e})") from None
    if not isinstance(arr, np.ndarray):  # np.load hands back a member that is not .npy as raw bytes
        raise DataError(f"{path}: member {name!r} is not a NumPy array; save arrays with numpy.savez")
    return arr


def _read_h5(path, key, option="--key"):
    import h5py

    try:
        with h5py.File(path, "r") as f:
            names = []
            f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            return np.asarray(f[_pick(names, key, path, "dataset", option)][()])
    except OSError as e:
        raise DataError(f"{path}: cannot read HDF5 file ({e})") from None


def to_rows(arr, source, rescale=False):
    """Any supported array -> ((N, D) float32 in [0, 1], image shape or None).
    (N, D) rows (a square D read as a square image), (N, H, W) images, (N, H, W, C) images
    channels last (shape (H, W, C); C = 1 gives (H, W)), and (N, 1, H, W)."""
    if arr.ndim == 4 and arr.shape[3] == 1:  # (N, H, W, 1): one channel
        arr = arr.reshape(arr.shape[:3])
    elif arr.ndim == 4 and arr.shape[1] == 1 and arr.shape[3] > 4:  # (N, 1, H, W): one channel, first
        arr = arr.reshape(arr.shape[0], *arr.shape[2:])
    elif arr.ndim == 4 and arr.shape[1] <= 4 < arr.shape[3]:  # (N, 3, 32, 32) would read as 3x32 images
        raise DataError(f"{source}: images of shape {arr.shape[1:]} look like channels first (N, C, H, W); "
                        f"tinydae reads them channels last, (N, H, W, C): store np.moveaxis(a, 1, -1)")
    if arr.ndim not in (2, 3, 4):
        raise DataError(f"{source}: expected examples as rows (N, D) or images (N, H, W) or (N, H, W, C), "
                        f"got shape {arr.shape}")
    if arr.shape[0] == 0 or math.prod(arr.shape[1:]) == 0:
        raise DataError(f"{source}: no data (shape {arr.shape})")
    if arr.ndim >= 3:
        shape = arr.shape[1:]
    else:
        side = math.isqrt(arr.shape[1])
        shape = (side, side) if side * side == arr.shape[1] else None
    arr = arr.reshape(arr.shape[0], -1)
    if arr.dtype == np.uint8 and not rescale:
        return (arr.astype(np.float32) / np.float32(255)), shape
    if arr.dtype == np.bool_:
        return arr.astype(np.float32), shape
    if arr.dtype.kind not in "uif":
        raise DataError(f"{source}: unsupported dtype {arr.dtype}; need uint8, bool or floats")
    x = arr.astype(np.float64)
    if not np.isfinite(x).all():
        raise DataError(f"{source}: data holds NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if rescale:
        if hi == lo:
            raise DataError(f"{source}: every value is {lo}; --rescale needs a range")
        x = (x - lo) / (hi - lo)
    elif arr.dtype.kind in "ui":
        raise DataError(f"{source}: integer data of dtype {arr.dtype} (values {lo:g}..{hi:g}); "
                        "pass --rescale to scale it linearly to [0, 1]")
    elif lo < 0 or hi > 1:
        raise DataError(f"{source}: values lie in [{lo:g}, {hi:g}], outside [0, 1]; pass --rescale "
                        "to scale them linearly to [0, 1]")
    return x.astype(np.float32), shape


BUILTINS = "built-in data: glyphs, gmm or gmm:D such as gmm:16"


def is_builtin(source):
    """True when `source` names built-in data: exactly 'glyphs', 'gmm' or 'gmm:D', and no file
    of that name exists (a file wins: "gmm_samples.npz" once silently meant gmm:2)."""
    source = os.fspath(source)
    return (source == "glyphs" or re.fullmatch(r"gmm(:\d+)?", source) is not None) \
        and not os.path.isfile(source)


def _read_array(path, key, option="--key"):
    """A data file (IDX, .npy, .npz or .h5) -> its array, as stored.  option: the CLI option that
    names an array in it (for the message when it holds several)."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file, and not a built-in data set ({BUILTINS})")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory; give a data file (IDX, .npy, .npz or .h5)")
    lower = path.lower()
    if lower.endswith(".npy"):
        return _read_npy(path)
    if lower.endswith(".npz"):
        return _read_npz(path, key, option)
    if lower.endswith((".h5", ".hdf5")):
        return _read_h5(path, key, option)
    if lower.endswith((".gz", ".idx")) or "ubyte" in lower or "idx" in os.path.basename(lower):
        return read_idx(path)
    raise DataError(f"{path}: unknown data format; use IDX (.gz or raw), .npy, .npz or .h5")


def load_labels(path, key=None):
    """A file of class labels (IDX such as MNIST's t10k-labels-idx1-ubyte.gz, .npz or .h5)
    -> (N,) int64, each >= 0.

    key: array name (.npz) or dataset path (.h5).  Accepts (N,) or (N, 1) integers; floats
    only when every value is a whole number (labels saved through a float array).
    """
    path = os.fspath(path)
    arr = np.asarray(_read_array(path, key, "--labels-key"))
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{path}: labels must be one integer per example, shape (N,), got shape {arr.shape} "
                        f"(is this an images file?)")
    if arr.size == 0:
        raise DataError(f"{path}: holds no labels (empty)")
    if arr.dtype.kind == "f" and np.isfinite(arr).all() and (arr == np.round(arr)).all():
        arr = arr.astype(np.int64)  # whole numbers saved as floats
    if arr.dtype.kind not in "ui":
        raise DataError(f"{path}: labels must be integers (class numbers 0, 1, ...), got dtype {arr.dtype}"
                        + (" with fractional or non-finite values" if arr.dtype.kind == "f" else ""))
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise DataError(f"{path}: labels must be >= 0, found {int(arr.min())}")
    return arr


def load_dataset(source="glyphs", *, limit=None, rescale=False, key=None, seed=0, labels=None, labels_key=None,
                 key_option="--key", lazy=False):
    """'glyphs', 'gmm:D' or a file path -> Dataset of float32 rows in [0, 1].

    limit: keep the first `limit` examples; key: array name (.npz) or dataset path (.h5)
    labels: a labels file (see load_labels; labels_key names its array) for a data file, one
    label per example; the built-in glyphs bring their own labels.
    lazy: leave a .npy or HDF5 file on disk (Dataset.x a Rows, read as batches need it; the
    values' range is checked by fit, block by block); other sources load as usual
    """
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be >= 1, got {limit}")
    if not isinstance(source, (str, os.PathLike)):
        raise DataError(f"load_dataset takes a built-in name or a file path, got {type(source).__name__} {source!r}")
    path = os.fspath(source)
    if not path:
        raise DataError(f"the data source is empty; give 'glyphs', 'gmm:D' or a file ({BUILTINS})")
    if labels is not None and is_builtin(path):
        raise DataError(f"{path} is built-in data: " + ("glyphs bring their own labels; drop --labels"
                        if path == "glyphs" else "it has no classes to label"))
    if is_builtin(path):
        if path == "glyphs":
            return glyphs(limit or 10000, seed=seed)
        return gmm(limit or 10000, int(path.partition(":")[2] or 2), seed=seed)
    if lazy and path.lower().endswith((".npy", ".h5", ".hdf5")) and os.path.isfile(path):
        return _lazy_dataset(path, key, key_option, limit, rescale, labels, labels_key)
    arr = _read_array(path, key, key_option)
    y = None
    if labels is not None:
        y = load_labels(labels, labels_key)
        if len(y) != len(arr):  # checked before --limit: a shorter labels file is the wrong one
            raise DataError(f"{os.fspath(labels)}: {len(y):,} labels for the {len(arr):,} examples of {path}; "
                            f"give the labels file that belongs to this data")
    if limit is not None:
        arr = arr[:limit]
        y = None if y is None else y[:limit]
    x, shape = to_rows(arr, path, rescale)
    return Dataset(np.ascontiguousarray(x), shape, os.path.basename(path), y)


def _lazy_dataset(path, key, key_option, limit, rescale, labels, labels_key):
    """load_dataset(lazy=True) of a .npy or HDF5 file: a Dataset whose x is a Rows."""
    if rescale:
        raise DataError(f"{path}: --rescale needs the whole file's range, which reading rows lazily does not "
                        f"have; store the data in [0, 1] (or as uint8), or load it whole (--no-lazy; lazy=False)")
    arr = _open_lazy(path, key, key_option)
    if arr.ndim not in (2, 3, 4) or arr.shape[0] == 0:
        raise DataError(f"{path}: expected examples as rows (N, D) or images (N, H, W) or (N, H, W, C), "
                        f"got shape {arr.shape}")
    if arr.dtype != np.uint8 and arr.dtype != np.bool_ and arr.dtype.kind != "f":
        raise DataError(f"{path}: rows read lazily must be uint8, bool or floats in [0, 1], got {arr.dtype}")
    _, shape = to_rows(np.asarray(arr[:1]), path)  # the image shape, the layout checks, the first row's values
    y = None
    if labels is not None:
        y = load_labels(labels, labels_key)
        if len(y) != arr.shape[0]:
            raise DataError(f"{os.fspath(labels)}: {len(y):,} labels for the {arr.shape[0]:,} examples of {path}; "
                            f"give the labels file that belongs to this data")
    rows = Rows(arr, path)
    if limit is not None and limit < len(rows):
        rows, y = rows.take(np.arange(limit)), None if y is None else y[:limit]
    return Dataset(rows, shape, os.path.basename(path), y)
