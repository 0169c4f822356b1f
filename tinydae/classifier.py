"""A small classifier whose penultimate layer is the feature space of tinydae/science/features.py.

Legend: B batch, D input width (pixels), H_k hidden widths, C classes.

    D -> H_1 -> ... -> H_k -> C      relu hidden layers, logits out (arch "mlp:H_1,...,H_k")
    or convolutions first            (arch "conv:32,64,fc128": Conv2d layers, flatten, dense)
    features(x) = the H_k activations (what FID, KID, precision/recall ... compare)
    probs(x)    = softmax(logits(x))  (what the inception score and class entropy use)

Built like the DAE (tinydae/model.py): tinydae's layers (tinydae/layers.py) over views into one flat
parameter buffer and one flat gradient buffer, so tinydae's Adam trains it unchanged and
tinydae.gradcheck.check_model checks its backward pass.  It runs on the host (the CPU
backend): it is trained once per data set, in seconds, and then only embeds samples.

Saved as HDF5 (format "tinydae-classifier", version 2; version 1 files, whose config names
hidden widths, still load) with checkpoint.py's integrity machinery:
atomic write, Fletcher-32 on /params, SHA-256 of /params and of the attributes:

    /          attrs: format, format_version, tinydae_version, created, config (JSON),
                      info (JSON: accuracy on the held-out split, data name, sizes, epochs,
                      seconds, per-epoch history), attrs_sha256
    /params    (P,) float32|float64; attrs: layout (JSON), sha256, attrs_sha256
"""
import json
import math
import os
import time

import numpy as np

from tinydae.backend import as_host_array, get_backend
from tinydae.errors import CheckpointError, ConfigError, DataError
from tinydae.layers import Sequential
from tinydae.safety import check_memory

FORMAT = "tinydae-classifier"
FORMAT_VERSION = 2  # 2: the config holds arch and input_shape (1: hidden; still read)
READABLE_VERSIONS = (1, 2)
DEFAULT_HIDDEN = (256, 128)
# Init draws use STREAM_INIT steps from here on, past any DAE layer index, so a classifier and
# a DAE trained with one seed do not start from the same weights.
INIT_STEP0 = 1 << 16


# ----------------------------------------------------------------------------------------
# Softmax cross-entropy: the NumPy reference (the classifier runs on the host only)
# ----------------------------------------------------------------------------------------


def _check_labels(logits, labels):
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise DataError(f"expected logits (B, C) and labels (B,), got {logits.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise DataError(f"labels must lie in [0, {logits.shape[1]}), got {labels.min()}..{labels.max()}")


def log_softmax(z):
    """z: (B, C) -> log softmax(z): (B, C), finite for any finite z."""
    z = z - z.max(axis=1, keepdims=True)  # shift by the row max: exp never overflows, result unchanged
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax_cross_entropy_forward(logits, labels):
    """Mean over the batch of -log softmax(z)[label].

    logits: (B, C), labels: (B,) int in [0, C) -> float (nats per example), summed in float64
    loss_i = logsumexp_c z_ic - z_i,label_i

    >>> round(softmax_cross_entropy_forward(np.zeros((2, 4)), np.array([0, 3])), 6)  # ln 4
    1.386294
    """
    _check_labels(logits, labels)
    picked = log_softmax(logits)[np.arange(len(labels)), labels]
    return float(-np.sum(picked, dtype=np.float64) / max(len(labels), 1))


def softmax_cross_entropy_backward(dlogits, logits, labels):
    """Gradient of softmax_cross_entropy_forward, written into dlogits.

    dlogits, logits: (B, C), labels: (B,)
    dlogits = (softmax(z) - onehot(labels)) / B     (the mean over the batch gives the 1/B)
    """
    _check_labels(logits, labels)
    B = len(labels)
    dlogits[...] = np.exp(log_softmax(logits))
    dlogits[np.arange(B), labels] -= 1
    dlogits /= max(B, 1)


# ----------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------


def check_classifier_config(input_dim, hidden=None, classes=10, dtype="float32", seed=0, arch=None, input_shape=None):
    """Validate a classifier configuration; returns it normalised as a dict (JSON-safe):
    input_dim, input_shape, arch (hidden=(256, 128) is shorthand for "mlp:256,128", and how
    version-1 files store it), classes, dtype, seed."""
    from tinydae import arch as arch_spec

    arch, input_shape = arch_spec.resolve(input_dim, hidden, arch, input_shape, DEFAULT_HIDDEN)
    if arch_spec.noise_conditional(arch):
        raise ConfigError(f"{arch}: 'sigma' (the noise level as an input) is for denoisers; a classifier reads "
                          f"images alone: drop ',sigma'")
    if not isinstance(classes, (int, np.integer)) or classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {classes!r}")
    if np.dtype(dtype).name not in ("float32", "float64"):
        raise ConfigError(f"dtype must be float32 or float64, got {dtype!r}")
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise ConfigError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    config = dict(input_dim=int(input_dim), input_shape=list(input_shape), arch=arch, classes=int(classes),
                  dtype=np.dtype(dtype).name, seed=int(seed))
    classifier_layers(config)  # a conv spec that does not fit the images is refused here
    return config


def classifier_layers(config):
    from tinydae import arch as arch_spec

    return arch_spec.classifier_layers(config["arch"], tuple(config["input_shape"]), config["classes"])


def describe(config):
    """"784-256-128-10" for a dense classifier, "conv:32,64,fc128 on 28x28x1 -> 10" otherwise."""
    from tinydae import arch as arch_spec

    h = arch_spec.mlp_widths(config["arch"])
    if h is not None:
        return "-".join(map(str, [config["input_dim"], *h, config["classes"]]))
    return f"{config['arch']} on {'x'.join(map(str, config['input_shape']))} -> {config['classes']}"


class Classifier:
    """MLP classifier D -> H_1 -> ... -> H_k -> C with relu; the feature map of features.py.

    >>> c = Classifier(784, hidden=(32,), classes=10, seed=1)
    >>> c
    Classifier(784-32-10, relu, float32)
    >>> c.features(np.full((3, 784), 0.5, np.float32)).shape, c.probs(np.zeros((3, 784))).shape
    ((3, 32), (3, 10))
    """

    def __init__(self, input_dim, hidden=None, classes=10, dtype="float32", seed=0, arch=None, input_shape=None):
        """hidden=(256, 128) (the default) is shorthand for arch="mlp:256,128"; arch="conv:32,64,fc128"
        builds a convolutional classifier of images input_shape (H, W[, C]) (square: guessed)."""
        self.config = check_classifier_config(input_dim, hidden, classes, dtype, seed, arch, input_shape)
        self.backend = get_backend("cpu")
        self.dtype = np.dtype(self.config["dtype"])
        self.net = Sequential(classifier_layers(self.config), (self.config["input_dim"],), self.backend, self.dtype)
        self.layers, self.layout = self.net.layers, self.net.layout
        self.params, self.grads = self.net.params, self.net.grads
        self.named_params, self.named_grads = self.net.named_params, self.net.named_grads
        self.info = {}  # filled by train_classifier: held-out accuracy, data name, ...
        self.init_params()

    def init_params(self):
        """He-normal weights for the relu layers, Glorot-normal for the logits layer, zero biases."""
        self.net.init_params(self.config["seed"], lambda w: w.astype(self.dtype), step0=INIT_STEP0)

    @property
    def input_dim(self):
        return self.config["input_dim"]

    @property
    def classes(self):
        return self.config["classes"]

    @property
    def feature_dim(self):
        """Width of the features: what the logits layer reads."""
        return math.prod(self.net.shapes[-2])

    def __repr__(self):
        return f"Classifier({describe(self.config)}, relu, {self.config['dtype']})"

    # -- forward -----------------------------------------------------------------------

    def as_input(self, x):
        """Check and convert a batch: (B, D) finite values in the model's dtype."""
        x = as_host_array(x)  # any array in host memory (see tinydae.backend), a view
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise DataError(f"expected a batch of shape (B, {self.input_dim}), got {x.shape}")
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if not np.isfinite(x).all():
            raise DataError("the batch holds NaN or infinite values")
        return x

    def _batched(self, x, layers, batch_size):
        """x through `layers`, batch_size rows at a time -> float64 (N, width)"""
        x = self.as_input(x)
        width = math.prod(self.net.shapes[len(layers)])
        out = np.empty((len(x), width), np.float64)
        for start in range(0, len(x), batch_size):
            h = x[start:start + batch_size]
            for layer in layers:
                h = layer.forward(h)[0]
            out[start:start + batch_size] = h
        return out

    def logits(self, x, batch_size=1024):
        """x: (N, D) -> logits: (N, C) float64"""
        return self._batched(x, self.layers, batch_size)

    def features(self, x, batch_size=1024):
        """x: (N, D) -> penultimate (last hidden) activations: (N, H_k) float64"""
        return self._batched(x, self.layers[:-1], batch_size)

    def probs(self, x, batch_size=1024):
        """x: (N, D) -> p(y | x) = softmax(logits): (N, C) float64, rows summing to 1"""
        return np.exp(log_softmax(self.logits(x, batch_size)))

    def predict(self, x):
        """x: (N, D) -> most likely class: (N,) int64"""
        return self.logits(x).argmax(1)

    def accuracy(self, x, labels):
        """Fraction of rows of x: (N, D) whose predicted class equals labels: (N,)."""
        x, labels = as_host_array(x), as_host_array(labels, "labels")
        if labels.shape != (len(x),):
            raise DataError(f"{len(labels)} labels for {len(x)} rows")
        return float((self.predict(x) == labels).mean())

    # -- backward ----------------------------------------------------------------------

    def zero_grad(self):
        self.grads[...] = 0

    targets = "labels"  # what fit() trains it to predict (a DAE: its own inputs)

    def check_image_shape(self, image_shape, what):
        """Refuse images of another shape with as many values (arch.check_image_shape)."""
        from tinydae import arch as arch_spec

        arch_spec.check_image_shape(self.config, image_shape, what)

    def loss_sum_and_grad(self, x, labels, total):
        """fit()'s step: total[0] = the batch's summed cross-entropy; grads = the gradient of its mean."""
        total[0] = self.loss_and_grad(x, labels) * len(labels)

    def validation_figures(self, x, labels):
        """fit()'s per-epoch validation: accuracy and mean cross-entropy of (N, D) rows."""
        logits = self.logits(x)
        return dict(val_loss=softmax_cross_entropy_forward(logits, labels),
                    val_accuracy=float((logits.argmax(1) == labels).mean()))

    def loss_and_grad(self, x, labels):
        """Mean softmax cross-entropy of the batch, and its gradient in ``self.grads``.

        x: (B, D), labels: (B,) int -> loss in nats per example
        (same signature as DAE.loss_and_grad, so tinydae.gradcheck.check_model applies)
        """
        x = self.as_input(x)
        labels = as_host_array(labels, "labels", np.int64)
        self.zero_grad()
        h, caches = self.net.forward(x)
        loss = softmax_cross_entropy_forward(h, labels)
        dy = np.empty_like(h)
        softmax_cross_entropy_backward(dy, h, labels)
        self.net.backward(dy, caches)
        return loss


# ----------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------


def _labelled(data, labels):
    """(Dataset or (N, D) array, labels or None) -> ((N, D) float32, (N,) int64, name, image_shape)"""
    x = getattr(data, "x", data)
    labels = getattr(data, "labels", None) if labels is None else labels
    if labels is None:
        raise DataError(f"{getattr(data, 'name', 'the data')} has no labels; a classifier needs one class "
                        f"per example (pass --labels with a labels file)")
    x, labels = as_host_array(x, "the data"), as_host_array(labels, "labels")  # see tinydae.backend
    if x.ndim != 2 or len(x) < 2:
        raise DataError(f"expected at least 2 examples as rows (N, D), got shape {x.shape}")
    if labels.shape != (len(x),):
        raise DataError(f"{labels.size:,} labels for {len(x):,} examples; give one label per example")
    if labels.dtype.kind not in "ui" or labels.min() < 0:
        raise DataError(f"labels must be non-negative integers, got dtype {labels.dtype}")
    return (np.ascontiguousarray(x, np.float32), labels.astype(np.int64),
            getattr(data, "name", "array"), getattr(data, "image_shape", None))


def shift_images(x, image_shape, rng, max_shift=2):
    """Each image moved by a random whole-pixel offset in [-max_shift, max_shift]^2, zeros shifted in.

    x: (N, H*W), image_shape: (H, W), rng: numpy Generator -> (N, H*W), a new array
    (the augmentation that takes an MLP on 7,000 MNIST digits from ~95% to ~97%)
    """
    H, W = image_shape
    m = max_shift
    padded = np.pad(x.reshape(-1, H, W), ((0, 0), (m, m), (m, m)))
    out = np.empty((len(x), H, W), x.dtype)
    dy, dx = rng.integers(-m, m + 1, (2, len(x)))
    for sy in range(-m, m + 1):
        for sx in range(-m, m + 1):
            rows = np.flatnonzero((dy == sy) & (dx == sx))
            out[rows] = padded[rows, m - sy:m - sy + H, m - sx:m - sx + W]
    return out.reshape(len(x), H * W)


def classifier_memory(config, n_rows, batch_size):
    """Bytes train_classifier needs, on the high side: parameters, gradients and Adam's moments,
    a batch's activations (layers' cost), the shifted copy of the rows, the class counts."""
    from tinydae.layers import plan, stack_cost

    itemsize = np.dtype(config["dtype"]).itemsize
    layers = classifier_layers(config)
    params = sum(math.prod(shape) for _, shape in plan(layers, (config["input_dim"],))[1])
    values = stack_cost(layers, (config["input_dim"],))[1]
    batch = min(batch_size, max(n_rows, 1))
    return ((4 * params + 2 * batch * values + n_rows * config["input_dim"]) * itemsize + 2 * 8 * params
            + 16 * config["classes"])


def train_classifier(data, labels=None, *, hidden=None, epochs=15, batch_size=128, lr=2e-3,
                     val_fraction=0.1, augment=True, seed=0, dtype="float32", progress=None, arch=None):
    """Train a Classifier with Adam on softmax cross-entropy; deterministic by seed.

    data: a Dataset with .labels (and .image_shape), or (N, D) rows in [0, 1] with labels: (N,) int
    hidden / arch: the network, as for Classifier (a conv arch needs the image shape: a Dataset's,
        or a square D)
    lr: the start of a cosine decay to 0 over all steps (no tuning of the epoch count needed)
    Trained by train.fit, the DAE's loop, with the classifier's labels as targets.
    val_fraction: held out (seeded split, as Dataset.split) to measure the accuracy saved with it
    augment: shift training images by up to 2 pixels each epoch (only when the image shape is known
        and has one channel)
    progress: callable(epoch, info dict) after each epoch
    -> Classifier, its .info = {accuracy, chance, data, n_train, n_heldout, epochs, batch_size, lr,
       val_fraction, augment, seconds, history: [{epoch, train_loss, accuracy}]}
    """
    from tinydae.data import Dataset
    from tinydae.optim import Adam
    from tinydae.train import fit, named_lr_schedule

    x, y, name, image_shape = _labelled(data, labels)
    if not isinstance(epochs, int) or epochs < 1 or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"epochs and batch size must be positive integers, got {epochs!r}, {batch_size!r}")
    if not 0 < val_fraction < 1:
        raise ConfigError(f"the held-out fraction must be in (0, 1): the accuracy saved with the "
                          f"classifier is measured there; got {val_fraction}")
    n_classes = max(int(y.max()) + 1, 2)
    config = check_classifier_config(x.shape[1], hidden, n_classes, dtype, seed, arch, image_shape)
    check_memory(classifier_memory(config, len(x), batch_size),
                 f"a classifier of {describe(config)} ({n_classes:,} classes: labels up to {n_classes - 1:,})",
                 "use a smaller --arch (--hidden), or labels numbered 0, 1, ... per class")
    train, held = Dataset(x, image_shape, name, y).split(val_fraction, seed)
    augment = bool(augment and image_shape and len(image_shape) == 2)  # shift_images: one channel
    model = Classifier(**config)
    t0 = time.perf_counter()

    def shifted(batch, seed_, step):  # shifts drawn from (seed, step) only: any batch order, any resume
        return shift_images(batch, image_shape, np.random.default_rng([seed_, step, 0xC1A55]))

    def epoch_done(event, info):
        if event == "epoch" and progress:
            progress(info["epoch"], dict(epoch=info["epoch"], train_loss=info["train_loss"],
                                         accuracy=info["val_accuracy"]))

    # tinydae's one training loop (train.fit), as the DAE's: its order, divergence guard, progress
    state = fit(model, train, held, optimizer=Adam(model, lr=lr), corruption="none", epochs=epochs,
                batch_size=batch_size, seed=seed, progress=epoch_done, handle_sigint=False,
                lr_schedule=named_lr_schedule("cosine", lr), augment=shifted if augment else None)
    history = [dict(epoch=r["epoch"], train_loss=r["train_loss"], accuracy=r["val_accuracy"]) for r in state.history]
    n = len(train)
    model.info = dict(accuracy=history[-1]["accuracy"], chance=float(np.bincount(held.labels).max() / len(held)),
                      data=name, n_train=n, n_heldout=len(held), epochs=epochs, batch_size=batch_size,
                      lr=lr, val_fraction=val_fraction, augment=augment, seed=model.config["seed"],
                      seconds=time.perf_counter() - t0, history=history)
    return model


# ----------------------------------------------------------------------------------------
# Save and load (checkpoint.py's atomic write and checksums)
# ----------------------------------------------------------------------------------------


def save_classifier(path, model):
    """Write a Classifier (config, parameters, info) to an HDF5 file, atomically."""
    import h5py

    from tinydae.checkpoint import _attrs_digest, _create_params, _nonfinite, _stamp, atomic_write, buffer_digest

    problem = _nonfinite("/params", model.params)
    if problem:
        raise CheckpointError(f"{path}: not saved, {problem}")

    def write(out):
        with h5py.File(out, "w") as f:
            _stamp(f, FORMAT, FORMAT_VERSION)
            f.attrs["config"] = json.dumps(model.config)
            f.attrs["info"] = json.dumps(model.info)
            d = _create_params(f, model.params, model.layout)
            d.attrs["sha256"] = buffer_digest(model.params)
            for obj in (f, d):
                obj.attrs["attrs_sha256"] = _attrs_digest(obj)

    atomic_write(path, write)


def load_classifier(path):
    """Read and verify a saved Classifier.  Raises CheckpointError naming the file and problem."""
    import h5py

    from tinydae.checkpoint import DAMAGED, _attrs_digest, _nonfinite, _read

    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such classifier file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CheckpointError(f"{path}: cannot open classifier (not an HDF5 file, or damaged: {e})") from None
    try:
        with f:
            if f.attrs.get("format") != FORMAT:
                hint = "; that is a DAE checkpoint" if f.attrs.get("format") == "tinydae-checkpoint" else ""
                raise CheckpointError(f"{path}: not a tinydae classifier (no '{FORMAT}' format tag){hint}")
            version = int(f.attrs.get("format_version", -1))
            if version not in READABLE_VERSIONS:
                raise CheckpointError(f"{path}: classifier format version {version}; this tinydae reads "
                                      f"versions {', '.join(map(str, READABLE_VERSIONS))}")
            for obj in (f, f["params"]):
                if _attrs_digest(obj) != obj.attrs.get("attrs_sha256"):
                    raise CheckpointError(f"{path}: checksum mismatch in the attributes of {obj.name}: {DAMAGED}")
            config = json.loads(f.attrs["config"])
            info = json.loads(f.attrs["info"])
            layout = [(n, tuple(s)) for n, s in json.loads(f["params"].attrs["layout"])]
            params = _read(path, f["params"])
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: damaged or incomplete classifier ({type(e).__name__}: {e})") from None
    try:
        model = Classifier(**config)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{path}: bad classifier config {config}: {e}") from None
    if layout != model.layout or params.shape != model.params.shape:
        raise CheckpointError(f"{path}: parameter layout does not match its config {config}")
    problem = _nonfinite("/params", params)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    model.params[...] = params
    model.info = info
    return model
