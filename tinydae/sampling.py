"""Sampling chains: x_{t+1} = r(c(x_t)), the DAE applied again and again.

Legend: N chains, D pixels, T steps.

With Gaussian corruption of size sigma, r(x) - x ~ sigma^2 grad log p_sigma(x) (PAPER.md),
so each step climbs the data density: from noise a chain synthesises samples, from another
model's samples it improves them.  `corruption="none"` gives the deterministic x_{t+1} = r(x_t).

Chains run in batches; the corruption of chain i at step t draws Philox stream STREAM_CHAIN
at step t, elements i*D .. i*D+D-1, so the random draws do not depend on the batch size (the
results then differ only by BLAS rounding, which varies with matrix shape: measured 1.5e-7
after 30 steps), and a chain is bit-reproducible for a given seed and batch size.  The
trajectory is kept only every `keep_every` steps for the first `keep_chains` chains.
"""
import math
from dataclasses import dataclass, field

import numpy as np

from tinydae.kernels.reference import philox_normal, philox_uniform
from tinydae.corruption import Corruption
from tinydae.errors import ConfigError, DataError
from tinydae.rng import STREAM_CHAIN, STREAM_START

START_KINDS = ("noise", "bernoulli", "pca", "pixels")
CHANGE_ROWS = 256  # steps of per-chain changes held on the device before they are summed


@dataclass
class ChainResult:
    samples: np.ndarray          # (N, D) the final states
    trajectory: np.ndarray       # (min(N, keep_chains), len(kept_steps), D) kept states
    kept_steps: list             # steps held in trajectory; 0 is the start
    mean_abs_change: np.ndarray  # (T,) mean |x_t - x_{t-1}| over chains and pixels, t = 1..T
    quality: dict = field(default_factory=dict)  # {step: mean quality} at kept steps
    host_syncs: int = 0          # device -> host copies made inside the step loop

    def save_h5(self, path):
        """Write the chain to HDF5 (atomically): datasets samples, trajectory, kept_steps,
        mean_abs_change, and quality_steps / quality when a quality measure was given."""
        import h5py

        from tinydae.checkpoint import atomic_write

        def write(tmp):
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = "tinydae-chain"
                for name in ("samples", "trajectory", "kept_steps", "mean_abs_change"):
                    f.create_dataset(name, data=np.asarray(getattr(self, name)))
                if self.quality:
                    f.create_dataset("quality_steps", data=np.array(list(self.quality), np.int64))
                    f.create_dataset("quality", data=np.array(list(self.quality.values())))
        atomic_write(path, write)


def _check_states(x, dim, what):
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim or x.shape[0] == 0:
        raise DataError(f"{what} must have shape (N, {dim}), got {x.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"{what} hold NaN or infinite values")
    return x


def chain(model, x0, steps, corruption="model", keep_every=1, keep_chains=64, seed=0,
          batch_size=1024, quality=None):
    """Run N chains for `steps` steps from x0 (N, D).

    corruption: 'model' (the model's training corruption), a spec such as 'gaussian:0.3',
                or 'none' for x_{t+1} = r(x_t)
    quality:    optional callable (n, D) host array -> (n,) per-sample scores, averaged at the
                kept steps (e.g. exact log p on known-density data)
    -> ChainResult
    """
    x0 = _check_states(x0, model.input_dim, "chain starting points")
    if not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"steps must be an integer >= 0, got {steps!r}")
    if keep_every < 1 or keep_chains < 0 or batch_size < 1:
        raise ConfigError("keep_every and batch_size must be >= 1, keep_chains >= 0")
    if corruption == "model":
        if model.corruption is None:
            raise ConfigError("this model does not record its training corruption; pass corruption= "
                              "(e.g. 'gaussian:0.3', or 'none' for x_{t+1} = r(x_t))")
        corruption = model.corruption
    c = Corruption.parse(corruption)
    backend, D, N = model.backend, model.input_dim, len(x0)
    kept_steps = sorted(set(range(0, steps + 1, keep_every)) | {steps})
    n_traj = min(N, keep_chains)
    trajectory = np.empty((n_traj, len(kept_steps), D), np.float32)
    samples = np.empty((N, D), np.float32)
    change = np.zeros(steps)
    quality_sum = {t: 0.0 for t in kept_steps} if quality else {}
    syncs = 0

    def keep(x_dev, start, k, t):
        """Copy kept states to the host, only when there is something to keep."""
        if start >= n_traj and not quality:
            return 0
        x_host = backend.to_host(x_dev)
        stop = min(n_traj, start + len(x_host))  # the kept chains of this batch
        if start < stop:
            trajectory[start:stop, k] = x_host[:stop - start]
        if quality:
            quality_sum[t] += float(np.sum(quality(x_host)))
        return 1

    xp = backend.xp
    for start in range(0, N, batch_size):
        x = model.as_input(x0[start:start + batch_size])
        # Per-chain changes of up to CHANGE_ROWS steps stay on the device (no sync per step);
        # each full block is summed over chains into `changes`, still on the device.
        row_changes = xp.empty((min(steps, CHANGE_ROWS), len(x)), np.float64)
        changes = xp.zeros(steps, np.float64)
        k = 0
        keep(x, start, k, 0)
        for t in range(1, steps + 1):
            x_in = x if c.mode == "none" else c.apply(backend, x, seed, t, STREAM_CHAIN, offset=start * D)
            x = model.chain_step(x_in, x, row_changes[(t - 1) % CHANGE_ROWS])
            if t % CHANGE_ROWS == 0 or t == steps:
                first = (t - 1) // CHANGE_ROWS * CHANGE_ROWS
                changes[first:t] = row_changes[:t - first].sum(axis=1)
            if k + 1 < len(kept_steps) and t == kept_steps[k + 1]:
                k += 1
                syncs += keep(x, start, k, t)
        change += backend.to_host(changes)
        samples[start:start + batch_size] = backend.to_host(x)
    return ChainResult(samples, trajectory, kept_steps, change / (N * D),
                       {t: s / N for t, s in quality_sum.items()}, syncs)


# Peak bytes per value while (n, D) start points are drawn: Philox's uint64 counters and index
# arrays on top of the float32 result (tracemalloc: 46 for noise, bernoulli and pixels, 16 for pca).
START_BYTES_PER_VALUE = 48


def chain_memory(model, n, steps, keep_every=1, keep_chains=64, batch_size=1024, start=None):
    """Bytes of host memory that chain() on n chains needs at its peak, on the high side, so
    that a caller can refuse a run before it starts instead of failing with MemoryError.

    Counts the (n, D) starting points and final samples, the kept trajectory, one batch's
    activations and corruption draws, the per-step change sums, and, with start= one of
    START_KINDS, drawing the starting points (a peak of its own, before the chains run).
    The model's parameters are not counted.
    """
    D, B = model.input_dim, min(n, batch_size)
    kept = steps // keep_every + 2
    item = np.dtype(model.dtype).itemsize
    widths = 2 * sum(model.config["hidden"]) + D              # every layer's output, once
    nbytes = 2 * n * D * 4                                    # x0 and samples (float32)
    nbytes += min(n, keep_chains) * kept * D * 4              # trajectory
    nbytes += 2 * B * widths * item                           # a batch's layer inputs and outputs
    nbytes += B * D * START_BYTES_PER_VALUE                   # its corruption draws (NumPy Philox)
    nbytes += min(steps, CHANGE_ROWS) * B * 8 + 3 * steps * 8 + kept * 100  # changes, kept_steps
    if start in START_KINDS:  # drawn, and its temporaries freed, before the chains run
        nbytes = max(nbytes, n * D * START_BYTES_PER_VALUE)
    return nbytes


def kernel_launches_per_chain_step(model, corruption):
    """Fused-kernel launches in one chain step, as the code is written: the corruption (1, or
    none for 'none'), each layer's bias+activation but the last (1 each), and the last layer's
    bias+sigmoid+change (1).  The GEMMs are cuBLAS (or BLAS) calls on top of these; every
    CHANGE_ROWS steps one sum over the chains (an xp call) folds the changes."""
    return int(Corruption.parse(corruption).mode != "none") + len(model.layers)


def improve(model, samples, steps, **kwargs):
    """Run the chain from given samples (another model's output) to improve them."""
    return chain(model, samples, steps, **kwargs)


# ----------------------------------------------------------------------------------------
# Starting points and baseline generators
# ----------------------------------------------------------------------------------------


def noise_start(n, dim, seed=0):
    """Uniform noise in [0, 1): (n, dim) float32 from Philox stream STREAM_START, step 0."""
    return philox_uniform(n * dim, seed, 0, STREAM_START).reshape(n, dim)


def bernoulli_start(n, dim, seed=0):
    """Bernoulli(0.5) pixels: (n, dim) float32 of 0s and 1s (STREAM_START, step 1)."""
    return (philox_uniform(n * dim, seed, 1, STREAM_START) < 0.5).astype(np.float32).reshape(n, dim)


class PCABaseline:
    """A weak generative model: a Gaussian in the top-k principal components of the data,
    sampled and clipped to [0, 1]."""

    name = "pca"

    def __init__(self, components=20):
        if components < 1:
            raise ConfigError(f"PCA baseline needs components >= 1, got {components}")
        self.components = components

    def fit(self, data, max_rows=5000):
        x = np.asarray(data, np.float64)[:max_rows]
        self.mean = x.mean(0)
        _, s, vt = np.linalg.svd(x - self.mean, full_matrices=False)
        k = min(self.components, len(s))
        self.basis = vt[:k]                                   # (k, D)
        self.std = s[:k] / math.sqrt(max(len(x) - 1, 1))      # per-component standard deviation
        return self

    def sample(self, n, seed=0):
        """-> (n, D) float32 in [0, 1] (Philox normals, STREAM_START step 2)."""
        z = philox_normal(n * len(self.std), seed, 2, STREAM_START).reshape(n, -1).astype(np.float64)
        return np.clip(self.mean + (z * self.std) @ self.basis, 0, 1).astype(np.float32)


class PixelBernoulliBaseline:
    """A weak generative model: each pixel on with its mean intensity, independently."""

    name = "pixels"

    def fit(self, data):
        self.p = np.asarray(data, np.float64).mean(0)
        return self

    def sample(self, n, seed=0):
        u = philox_uniform(n * len(self.p), seed, 3, STREAM_START).reshape(n, -1)
        return (u < self.p).astype(np.float32)


def start_points(kind, n, dim, seed=0, data=None):
    """'noise' | 'bernoulli' | 'pca' | 'pixels' -> (n, dim) float32 starting points.
    The baselines ('pca', 'pixels') are fitted to `data` (N, dim)."""
    if kind not in START_KINDS:
        raise ConfigError(f"unknown start {kind!r}; choose one of {', '.join(START_KINDS)}")
    if n < 1:
        raise ConfigError(f"need at least one chain, got n={n}")
    if kind == "noise":
        return noise_start(n, dim, seed)
    if kind == "bernoulli":
        return bernoulli_start(n, dim, seed)
    if data is None:
        raise ConfigError(f"the {kind!r} baseline is fitted to training data; pass data=")
    data = _check_states(data, dim, "baseline training data")
    baseline = PCABaseline().fit(data) if kind == "pca" else PixelBernoulliBaseline().fit(data)
    return baseline.sample(n, seed)
