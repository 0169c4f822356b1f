"""fit(): the training loop.

One step: take a batch (seeded shuffle per epoch), corrupt it (Philox counter = step),
loss_and_grad on (corrupted -> clean), one optimizer update.  Every random choice is a
function of (seed, epoch, step), so a run resumed from a checkpoint continues exactly as
if it had never stopped (bit-identical parameters on the CPU).

Safety: the data are checked first (finite, within [0, 1]); a non-finite loss stops training
before the bad update, keeping the last good checkpoint; SIGINT or SIGTERM finishes the
current step, saves a checkpoint and raises TrainingInterrupted (the CLI exits 130 or 143).

Host reads: a step reads one number back, its loss sum, after the optimizer update is queued
(on a GPU the only wait for the device per step).  The NaN guard runs on the device: the
update kernel is handed the loss sum and changes nothing when it is not finite, and the host,
reading that same sum, then raises TrainingDiverged.  Validation and checkpoints at epoch ends
and every checkpoint_every steps read more (counted by tinydae.backend.HOST_READS).
"""
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from tinydae.backend import as_host_array
from tinydae.checkpoint import save_checkpoint
from tinydae.corruption import Corruption
from tinydae.data import Dataset, Rows
from tinydae.errors import CheckpointError, ConfigError, DataError, TrainingDiverged, TrainingInterrupted
from tinydae.losses import bce
from tinydae.optim import Adam
from tinydae.rng import STREAM_VALID_CORRUPTION


def kernel_launches_per_step(model):
    """Fused-kernel launches in one training step, as the code is written: corrupt (1), each
    layer's bias+activation forward (1) and backward (1), the fused loss (1, its workspace
    reused: no memset), the optimizer update over the flat buffers (1).  GEMMs (on CuPy the
    dW GEMMs accumulate into the gradient buffer themselves), the batch gather and zeroing the
    gradient buffer are CuPy/cuBLAS (or NumPy/BLAS) calls on top of these.  Each layer's own
    count is layers.launches(layer) (a convolution adds im2col and col2im, SiLU a launch)."""
    from tinydae.layers import launches

    net = model.net
    backward = sum(launches(layer)[1 if i > net.first_trained else 2]
                   for i, layer in enumerate(net.layers) if i >= net.first_trained)
    return sum(launches(layer)[0] for layer in net.layers) + backward + 3


@dataclass
class TrainState:
    step: int = 0                # completed updates = the next corruption counter
    epoch: int = 0               # completed epochs
    epoch_loss_sum: float = 0.0  # running sums over the epoch in progress
    epoch_examples: int = 0
    epoch_seconds: float = 0.0
    wall_seconds: float = 0.0    # training + validation time over all sessions of the run
    history: list = field(default_factory=list)

    @classmethod
    def from_checkpoint(cls, ckpt):
        keys = ("step", "epoch", "epoch_loss_sum", "epoch_examples", "epoch_seconds", "wall_seconds")
        return cls(**{k: ckpt.state[k] for k in keys if k in ckpt.state}, history=list(ckpt.history))


def _rows(data, name, backend=None):
    x = data.x if isinstance(data, Dataset) else data
    if isinstance(x, Rows):  # rows left on disk: read by the batch
        return x
    # any array (Backend.as_array): a GPU array stays on the GPU (cuda backend), the rest on the host
    x = backend.as_array(x, f"{name} data", keep_host=True) if backend else as_host_array(x, f"{name} data")
    if x.ndim != 2 or x.shape[0] == 0:
        raise DataError(f"{name} data must be a non-empty (N, D) array or Dataset, got "
                        f"{getattr(x, 'shape', type(x).__name__)}")
    return x


def _labels(data, name, n, classes):
    """The labels of a Dataset (a classifier's targets): (n,) int64 host array in [0, classes)."""
    labels = getattr(data, "labels", None)
    if labels is None:
        raise DataError(f"a classifier trains on labelled data: the {name} data must be a Dataset with labels")
    labels = as_host_array(labels, f"{name} labels")
    if labels.shape != (n,) or labels.dtype.kind not in "ui":
        raise DataError(f"the {name} data needs one integer label per row, got {labels.dtype} of shape {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"the {name} labels lie in [{labels.min()}, {labels.max()}]; this classifier has {classes} "
                        f"classes (0 to {classes - 1})")
    return labels.astype(np.int64)


LR_SCHEDULES = ("constant", "cosine")


def named_lr_schedule(name, lr):
    """A learning-rate schedule by name, for fit's lr_schedule (and train --lr-schedule).

    'constant' -> None: the optimizer's own lr at every step.
    'cosine' -> lr * (1 + cos(pi * step / total_steps)) / 2: large steps early, small ones to
        settle at the end (the noise of the last steps averages out; bench/NOTES.md attempts
        27-28, one seed, 20 epochs: the U-Net's ddim FID from noise 82.0 at a constant rate, 23.8
        with the decay).  step < total_steps, so it stays > 0.
    """
    if name == "constant":
        return None
    if name != "cosine":
        raise ConfigError(f"unknown learning-rate schedule {name!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"a cosine schedule needs a finite lr > 0, got {lr!r}")

    def cosine(step, total_steps):
        return 0.5 * lr * (1 + math.cos(math.pi * step / total_steps))

    return cosine


def _scheduled_lr(schedule, step, total_steps):
    """lr_schedule(step, total_steps), checked: a finite float > 0 (the optimizers' own rule)."""
    lr = schedule(step, total_steps)
    try:
        lr = float(lr)
    except (TypeError, ValueError):
        raise ConfigError(f"lr_schedule returned {lr!r} at step {step}; it must return a number") from None
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr_schedule returned {lr} at step {step}; a learning rate must be finite and > 0")
    return lr


def _augmented(augment, x, seed, step):
    """augment(x, seed, step), checked: the same shape and dtype as x (on the same device).  Its
    values are the step's inputs (and a DAE's targets): keep them in [0, 1]."""
    out = augment(x, seed, step)
    if getattr(out, "shape", None) != x.shape or getattr(out, "dtype", None) != x.dtype or type(out) is not type(x):
        raise ConfigError(f"augment returned {type(out).__name__} {getattr(out, 'dtype', '')} "
                          f"{getattr(out, 'shape', '')} for a {type(x).__name__} {x.dtype} batch of shape {x.shape}; "
                          f"it must return the batch's shape, dtype and array type")
    return out


class _restored:
    """Context: puts d[key] back to value on exit (when active)."""

    def __init__(self, d, key, value, active):
        self.d, self.key, self.value, self.active = d, key, value, active

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.active:
            self.d[self.key] = self.value


def _check_values(x, name, part=(0, 1)):
    """Refuse data outside [0, 1] or not finite: BCE on raw 0..255 pixels trains without a
    warning to a meaningless negative loss (-160,453 nats per example on MNIST).  Rows on disk
    are read block by block (part=(k, K): blocks k, k + K, ..., a rank's share of the check)."""
    if isinstance(x, Rows):
        for first, block in x.blocks(part=part):
            _check_block(block, name, first=first)
        return
    _check_block(x, name)


def _check_block(x, name, first=0):
    if not np.isfinite(x).all():
        row = first + int(np.flatnonzero(~np.isfinite(x).all(axis=1))[0])
        raise DataError(f"{name} data holds NaN or infinite values (first in row {row}); "
                        "remove or replace them")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise DataError(f"{name} data lies in [{lo:g}, {hi:g}]; fit() needs values in [0, 1]: "
                        "rescale it (x / 255 for 8-bit pixels, or load_dataset(..., rescale=True))")


def training_memory(model_config, n_rows, batch_size, optimizer="adam", val_batch=1000, rows_on_device=True):
    """An estimate, in bytes, of the arrays a training run allocates: parameters, gradients
    and optimizer moments, the training rows on the device, and activations for the larger of a
    training batch and a validation batch (val_batch rows; 0 for a run without validation), with
    the host's float64 draw of the largest weight matrix at initialisation.  rows_on_device=False:
    the rows stay on disk (data.Rows), only batches are read."""
    from tinydae.model import model_cost, normalised, param_layout

    model_config = normalised(model_config)  # a partial one (input_dim, hidden, dtype, ...) too
    itemsize = np.dtype(model_config["dtype"]).itemsize
    layout = param_layout(model_config)
    n_params = sum(math.prod(shape) for _, shape in layout)
    buffers = {"adam": 4, "adamw": 4, "sgd": 3}.get(optimizer, 4)  # params, grads, moments
    # What each layer holds in a step (its cache and backward's temporaries, layers.*.cost),
    # twice over for the input, corrupted input and target rows and allocator slack.  No batch is
    # larger than the rows there are: a batch size of 10^9 on 270 rows trains on batches of 270.
    batch = min(batch_size, max(n_rows, 1))
    activations = max(batch, val_batch) * 2 * model_cost(model_config)[1]
    largest = max(math.prod(shape) for _, shape in layout)
    data = n_rows * model_config["input_dim"] if rows_on_device else 0
    return (buffers * n_params + activations + data) * itemsize + 2 * 8 * largest


def evaluate_reconstruction(model, data, corruption, seed, batch_size=1000, comm=None):
    """Validation BCE in nats per example: denoising (corrupted -> clean) and clean.

    The validation corruption uses stream STREAM_VALID_CORRUPTION at step 0 with the
    element offset of each batch, so it is the same every epoch and for any batch size.
    comm: a data-parallel run's communicator: rank r evaluates batches r, r + R, ... and the
    sums are reduced (every rank gets the figures)
    data: (N, D) -> {'val_bce_denoise': float, 'val_bce_clean': float}
    """
    x_all = _rows(data, "validation", model.backend)
    backend, D = model.backend, x_all.shape[1]
    nc = getattr(model, "noise_conditional", False)
    total_denoise = total_clean = 0.0
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    for start in range(rank * batch_size, len(x_all), size * batch_size):
        x = model.as_input(x_all[start:start + batch_size])
        x_in = corruption.apply(backend, x, seed, 0, STREAM_VALID_CORRUPTION, offset=start * D)
        # a noise-conditional model is told each row's level, and reads clean rows at the lowest
        sigma = corruption.row_sigmas(backend, len(x), seed, 0, STREAM_VALID_CORRUPTION, start) if nc else None
        total_denoise += bce(backend, model.logits(x_in, check=False, sigma=sigma), x) * len(x)
        total_clean += bce(backend, model.logits(x, check=False, sigma=corruption.level if nc else None), x) * len(x)
    if comm is not None and comm.collective:
        total_denoise, total_clean = comm.allreduce_host([total_denoise, total_clean])
    return dict(val_bce_denoise=total_denoise / len(x_all), val_bce_clean=total_clean / len(x_all))


DETERMINISTIC_ROWS = 64  # fit(deterministic=True): the rows of one partial gradient


def _chunk_shard(n, comm):
    """This rank's rows [lo, hi) of an n-row batch in whole DETERMINISTIC_ROWS chunks."""
    from tinydae.distributed import shard

    c_lo, c_hi = shard(-(-n // DETERMINISTIC_ROWS), comm)
    return min(n, c_lo * DETERMINISTIC_ROWS), min(n, c_hi * DETERMINISTIC_ROWS)


def _fixed_point_step(model, x_in, x, sigma, first, batch, loss_sum, comm):
    """The deterministic gradient of a batch, the same bits for any number of ranks.

    Each DETERMINISTIC_ROWS-row chunk's gradient (of the global mean) is computed alone, so it is
    the same whichever rank computes it; the chunks are then summed exactly: as integers, after
    scaling every value by one power of two chosen from the largest value of any chunk (one max
    reduction), and integer sums do not depend on their order (one int64 all-reduce).  A value
    keeps 61 - log2(chunks) bits below the largest: finer than float32 for everything within
    ~1e-11 of it.  The loss: each chunk's sum, reduced (one rank wrote each), added in chunk order.
    x_in, x: (n, D) this rank's rows of the batch, from row `first` (a multiple of the chunk);
    sigma: None, a level, or (n,) levels; loss_sum: (1,) receives the batch's loss sum.
    """
    xp, C = model.backend.xp, DETERMINISTIC_ROWS
    starts = range(0, x.shape[0], C)
    parts = xp.empty((len(starts), model.grads.size), model.grads.dtype)
    # each chunk's loss sum and the largest |value| of each chunk stay on the device until one
    # read after the last chunk (a step reads the host twice here, not once per chunk)
    sums = xp.zeros(-(-batch // C) + 1, np.float64)  # the chunks' loss sums, then the largest value
    for k, a in enumerate(starts):
        level = sigma if sigma is None or np.ndim(sigma) == 0 else sigma[a:a + C]
        c = (first + a) // C
        model.loss_sum_and_grad(x_in[a:a + C], x[a:a + C], sums[c:c + 1], mean_over=batch,
                                **({} if sigma is None else {"sigma": level}))
        parts[k] = model.grads
    if len(starts):
        sums[-1] = xp.abs(parts).max()
    sums = model.backend.to_host(sums)
    biggest = comm.allreduce_host([sums[-1]], "max")[0]
    losses = comm.allreduce_host(sums[:-1])
    if not math.isfinite(biggest):  # the loss guard below reports it, as for any step
        model.grads[...] = np.nan
        loss_sum[...] = np.nan
        return
    shift = 61 - math.ceil(math.log2(len(losses))) - math.frexp(biggest)[1] if biggest > 0 else 0
    acc, scaled = xp.zeros(model.grads.size, np.int64), xp.empty(model.grads.size, np.float64)
    for part in parts:  # |acc| < 2**61: every sum exact
        xp.multiply(part, 2.0 ** shift, out=scaled)  # exact: a power of two, in float64
        xp.rint(scaled, out=scaled)
        acc += scaled.astype(np.int64)
    comm.allreduce_sum(acc)
    model.grads[...] = (acc * 2.0 ** -shift).astype(model.grads.dtype)
    loss_sum[...] = losses.sum()


class _SignalFlag:
    """Turns SIGINT and SIGTERM into a flag checked between steps (main thread only).

    SIGTERM is what `kill`, systemd, Slurm and docker stop send: it must save like Ctrl-C.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, enabled):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signum = None  # the first signal that arrived

    @property
    def raised(self):
        return self.signum is not None

    def __enter__(self):
        if self.enabled:
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum

    def __exit__(self, *exc):
        if self.enabled:
            for s, handler in self.previous.items():
                signal.signal(s, handler)


def fit(model, train, val=None, *, optimizer=None, corruption=None, epochs=1,
        batch_size=64, seed=0, state=None, checkpoint_path=None, checkpoint_every=0,
        train_config=None, progress=None, handle_sigint=True, lr_schedule=None, augment=None, comm=None,
        deterministic=False, bucket_mb=None):
    """Train `model` to reconstruct clean rows of `train` from corrupted ones; or, for a model
    whose targets are "labels" (a Classifier), to predict the labels of `train` (a Dataset with
    labels) from its rows, corrupted if `corruption` says so.

    train, val: Dataset or (N, D) float arrays in [0, 1] (a classifier: Datasets with labels)
    optimizer: an Optimizer bound to `model` (default Adam(lr=1e-3))
    corruption: Corruption or spec string ('gaussian:0.3', 'masking:0.25', ...); default
        'gaussian:0.3' for a DAE, 'none' for a classifier
    epochs: train until this many epochs are complete (counting resumed ones)
    state: TrainState to resume from (with model and optimizer restored by the caller)
    checkpoint_path / checkpoint_every: save every N steps, at each epoch end and at the end
    progress: callable(event, info) with event 'step' or 'epoch'
    handle_sigint: turn SIGINT and SIGTERM into a checkpoint and TrainingInterrupted
    lr_schedule: callable(step, total_steps) -> the learning rate of that step (e.g. a cosine
        decay; finite, > 0), or None for the optimizer's own; the optimizer's lr is put back
        when fit returns
    augment: callable(x_batch, seed, step) -> the batch the step trains on (e.g. shifted images;
        drawn from (seed, step) only, so resume stays exact): the same shape, dtype and array
        type (device), values in [0, 1] (a DAE reconstructs them); or None
    comm: a tinydae.distributed communicator for a data-parallel run (every rank calls fit with
        the same arguments; batch_size is the global batch, split by rows; rank 0 alone writes
        the checkpoint; see tinydae/distributed.py), or None for one process
    deterministic: each 64-row chunk's gradient alone, the chunks summed exactly (_fixed_point_step):
        the same bits for any number of ranks (at the same threads per process), at a cost
    bucket_mb: with comm, reduce the gradient in buckets of at least this many MiB, each started
        during backward as soon as its layers are done (distributed.GradientBuckets), instead of
        one all-reduce of the whole buffer after backward (None); 0: a bucket per final run of
        layers.  The same sums (bit-identical for 2 ranks); whether it is faster is measured by
        `bench scale`.  A DAE only; nothing to do for one process
    -> TrainState, whose .history holds one dict per epoch:
       epoch, step, train_loss, val_bce_denoise, val_bce_clean (nats per example; a classifier:
       val_loss, val_accuracy), examples_per_s, wall_s
    """
    from tinydae.distributed import GradientBuckets, SingleProcess, digest, shard

    comm = (comm if comm is not None else SingleProcess()).bind(model.backend)
    labelled = getattr(model, "targets", "inputs") == "labels"
    x_train = _rows(train, "training", model.backend)
    x_val = _rows(val, "validation", model.backend) if val is not None else None
    lazy = isinstance(x_train, Rows)  # rows on disk: each step reads its (rank's) rows
    for name, data, x in (("training", train, x_train), ("validation", val, x_val)):
        if x is not None and x.shape[1] != model.input_dim:
            raise DataError(f"{name} rows have {x.shape[1]} values; the model expects {model.input_dim}")
        if isinstance(data, Dataset):
            model.check_image_shape(data.image_shape, f"the {name} data")
        if isinstance(x, Rows):  # each rank checks a share of the blocks; a bad one stops every rank
            comm.agree(lambda x=x, name=name: _check_values(x, name, part=(comm.rank, comm.size)))
        elif x is not None:
            _check_values(x, name)
    y_train = _labels(train, "training", len(x_train), model.classes) if labelled else None
    y_val = _labels(val, "validation", len(x_val), model.classes) if labelled and x_val is not None else None
    if labelled and checkpoint_path is not None:
        raise ConfigError("fit writes DAE checkpoints; save a classifier with tinydae.classifier.save_classifier "
                          "after fit (checkpoint_path=None)")
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
    if checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise ConfigError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    corruption = Corruption.parse(corruption if corruption is not None else "none" if labelled else "gaussian:0.3")
    nc = getattr(model, "noise_conditional", False)  # the model is told each row's noise level
    if nc:
        corruption.row_sigmas(model.backend, 0, seed, 0)  # a ConfigError unless the corruption is Gaussian
    state = state if state is not None else TrainState()
    n = len(x_train)
    if deterministic and labelled:
        raise ConfigError("deterministic training is written for DAEs, not classifiers")
    if bucket_mb is not None:
        if deterministic or labelled:
            raise ConfigError("bucket_mb overlaps a DAE's gradient all-reduce with backward; deterministic training "
                              "and classifiers reduce otherwise: leave it out")
        if isinstance(bucket_mb, bool) or not isinstance(bucket_mb, (int, float)) or not 0 <= bucket_mb < math.inf:
            raise ConfigError(f"bucket_mb must be a number of MiB >= 0, got {bucket_mb!r}")
    if comm.collective:
        if augment is not None and comm.size > 1:  # it is handed a rank's rows: its draws would depend on R
            raise ConfigError("augment is not supported with more than one process: its draws would depend "
                              "on how the batch is split")
        options = dict(model.config, corruption=str(corruption), epochs=epochs, batch_size=batch_size,
                       seed=int(seed), step=state.step, optimizer=repr(optimizer), bucket_mb=bucket_mb)
        comm.check_same("the training options", options, "; start every rank with the same command")
        # the data: its shape and up to 4096 rows spread over it (a different file shows there)
        sample = x_train[np.linspace(0, n - 1, min(n, 4096)).astype(np.int64)]
        host = (lambda a: a) if isinstance(sample, np.ndarray) else model.backend.to_host  # a device copy: a read
        comm.check_same("the training data", (x_train.shape, digest(sample, to_host=host)),
                        "; every rank must read the same rows")
        comm.check_same("the initial parameters", digest(model.params, to_host=model.backend.to_host),
                        "; give every rank the same seed or checkpoint")
    from tinydae.safety import check_memory  # the API checks what the CLI checks, before any step

    if labelled:
        from tinydae.classifier import classifier_memory

        nbytes = classifier_memory(model.config, n, batch_size)
    else:
        nbytes = training_memory(model.config, n, batch_size, getattr(optimizer, "name", "adam"),
                                 rows_on_device=not lazy)
    # ranks on one node see different free memory: a refusal on any of them stops them all
    comm.agree(lambda: check_memory(nbytes, f"training on {n:,} rows (batch {batch_size})",
                                    "use a smaller batch_size or fewer rows"))
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    if state.step >= total_steps:  # resuming a finished run would silently do nothing
        raise ConfigError(f"the run already has {state.epoch} completed epoch(s) (step {state.step}); "
                          f"epochs={epochs} asks for no more: ask for more epochs (they count the total)")
    optimizer = optimizer if optimizer is not None else Adam(model)
    if getattr(optimizer, "model", model) is not model:  # it would update the other model's buffers
        raise ConfigError(f"the optimizer was made for another model object ({optimizer.model!r}), not the one "
                          f"being trained: make it with this one, e.g. tinydae.Adam(model)")
    if checkpoint_path is not None:  # a folder or an unwritable place fails now, not after training
        from tinydae.checkpoint import TRAIN_CONFIG_FIELDS, _check_fields
        from tinydae.safety import check_output_file

        def check_checkpoint():  # rank 0 alone writes it
            check_output_file(checkpoint_path, "checkpoint_path", overwrite=True)
            try:  # a train_config its checkpoint could not record fails now too
                _check_fields(checkpoint_path, "train_config", train_config or {}, TRAIN_CONFIG_FIELDS, saving=True)
            except CheckpointError as e:
                raise ConfigError(str(e)) from None

        comm.root_call(check_checkpoint)
    model.corruption = str(corruption)  # chains default to the corruption the model learned
    backend = model.backend
    # the whole set lives on the device, unless it stays on disk (Rows: a batch is read per step)
    X = x_train if lazy else backend.to_device(x_train, dtype=model.dtype)
    saved_step = None  # the step of this call's last checkpoint, for honest error messages

    def kept():
        if saved_step is not None:
            return f"the last good checkpoint is {checkpoint_path} (step {saved_step})"
        if os.path.exists(checkpoint_path):  # e.g. the checkpoint this run resumed from
            return f"no checkpoint was written in this session; {checkpoint_path} is as it was"
        return "no checkpoint was written"

    def save():
        nonlocal saved_step
        if checkpoint_path is None:
            return
        if comm.collective:  # the replicas must not have drifted apart (they take identical steps)
            comm.check_same(f"the parameters and optimizer state at step {state.step}",
                            digest(model.params, *optimizer.buffers.values(), to_host=backend.to_host),
                            ": the replicas drifted apart (a bug: please report it)")
        # One read for the parameters and the optimizer's moments together: a save of either
        # non-finite would be refused by save_checkpoint anyway, but as divergence (exit 3).
        xp = backend.xp
        finite = xp.stack([xp.isfinite(b).all() for b in (model.params, *optimizer.buffers.values())]).all()
        if not bool(backend.to_host(finite)):
            raise TrainingDiverged(f"parameters or optimizer state became non-finite by step {state.step}; "
                                   f"{kept()}", state.step)
        saved = dict(asdict(state), rng_seed=seed, rng_train_corruption_counter=state.step)
        comm.root_call(lambda: save_checkpoint(checkpoint_path, model, optimizer, saved, train_config))
        saved_step = state.step

    # the overlapped all-reduce: a plan of buckets fixed by the network, the same on every rank
    buckets = GradientBuckets(comm, model.net, bucket_mb) if comm.collective and bucket_mb is not None else None
    order, order_epoch = None, -1
    loss_sum = backend.xp.zeros(1, np.float64)  # each step's loss sum, written on the device
    # Overflow on the way to a NaN is reported by the guard below, not by NumPy warnings.
    base_lr = optimizer.hyper.get("lr")  # a schedule sets it per step; put back at the end
    with _SignalFlag(handle_sigint) as signals, np.errstate(over="ignore", invalid="ignore"), \
            _restored(optimizer.hyper, "lr", base_lr, lr_schedule is not None):
        while state.step < total_steps:
            epoch, i = divmod(state.step, steps_per_epoch)
            if order_epoch != epoch:  # the epoch's permutation depends on (seed, epoch) only
                order = np.random.default_rng([seed, epoch, 0xBA7C4]).permutation(n)
                order = order if lazy else backend.to_device(order)
                order_epoch = epoch
            t0 = time.perf_counter()
            index = order[i * batch_size:(i + 1) * batch_size]
            # this rank's rows of the global batch (whole chunks for a deterministic step)
            lo, hi = _chunk_shard(len(index), comm) if deterministic else shard(len(index), comm)
            x = backend.to_device(X[index[lo:hi]], dtype=model.dtype) if lazy else X[index[lo:hi]]
            if augment is not None:
                x = _augmented(augment, x, seed, state.step)
            if lr_schedule is not None:
                optimizer.hyper["lr"] = _scheduled_lr(lr_schedule, state.step, total_steps)
            if hi == lo:  # more ranks than rows in this (last) batch: nothing to add
                model.zero_grad()
                loss_sum[...] = 0
            elif labelled:  # its inputs corrupted as a DAE's are (corruption 'none' by default)
                x_in = corruption.apply(backend, x, seed, state.step, offset=lo * x.shape[1])
                model.loss_sum_and_grad(x_in, y_train[backend.to_host(index[lo:hi])], loss_sum)
                if comm.size > 1:  # the classifier's gradient is its rows' mean: make it a part of the batch's
                    model.grads *= (hi - lo) / len(index)
            else:
                # each row's noise is drawn at its global position in the batch (element offset lo * D)
                x_in = corruption.apply(backend, x, seed, state.step, offset=lo * x.shape[1])
                sigma = {"sigma": corruption.row_sigmas(backend, hi - lo, seed, state.step, first_row=lo)} if nc else {}
                if deterministic:  # reduces over the ranks itself
                    _fixed_point_step(model, x_in, x, sigma.get("sigma"), lo, len(index), loss_sum, comm)
                else:
                    model.loss_sum_and_grad(x_in, x, loss_sum, mean_over=len(index),
                                            done=buckets and buckets.layer_done, **sigma)
            if hi == lo and deterministic:  # a rank without a chunk still joins the chunks' reductions
                _fixed_point_step(model, x, x, None, lo, len(index), loss_sum, comm)
            if comm.collective and not deterministic:  # the data-parallel step: sums over the ranks
                if buckets is None:
                    comm.allreduce_sum(model.grads)
                elif hi == lo:  # no backward ran here: the others' buckets, in their order
                    buckets.all_at_once()
                else:
                    buckets.finish()
                comm.allreduce_sum(loss_sum)
            # A signal on any rank stops every rank after this step: the decision is taken on the
            # reduced flag (a host collective, no device wait), never on a rank's own, which may
            # change between the reduction and the check (a signal arriving then counts next step).
            stop = signals.signum or 0
            if comm.collective:
                stop = int(comm.allreduce_host([stop], "max")[0])
            optimizer.step(guard=loss_sum)  # skipped on the device if the loss is not finite
            loss = float(backend.to_host(loss_sum)[0]) / len(index)  # the step's one host read
            if not math.isfinite(loss):
                optimizer.step_skipped()  # parameters and moments are as they were
                where = f"; {kept()}" if checkpoint_path else ""
                raise TrainingDiverged(
                    f"training diverged: step {state.step + 1} (epoch {epoch + 1}) gave a non-finite "
                    f"loss ({loss}); lower the learning rate{where}", state.step + 1)
            state.step += 1
            state.epoch_loss_sum += loss * len(index)
            state.epoch_examples += len(index)
            dt = time.perf_counter() - t0
            state.epoch_seconds += dt
            state.wall_seconds += dt
            if progress:
                progress("step", dict(step=state.step, total_steps=total_steps, epoch=epoch + 1,
                                      loss=loss, examples_per_s=state.epoch_examples / state.epoch_seconds))
            if i == steps_per_epoch - 1:
                t1 = time.perf_counter()
                row = dict(epoch=epoch + 1, step=state.step,
                           train_loss=state.epoch_loss_sum / state.epoch_examples)
                if x_val is not None and labelled:
                    row.update(model.validation_figures(x_val, y_val))
                elif x_val is not None:
                    row.update(evaluate_reconstruction(model, x_val, corruption, seed, comm=comm))
                state.wall_seconds += time.perf_counter() - t1
                row.update(examples_per_s=state.epoch_examples / state.epoch_seconds,
                           wall_s=state.wall_seconds)
                state.history.append(row)
                state.epoch += 1
                state.epoch_loss_sum, state.epoch_examples, state.epoch_seconds = 0.0, 0, 0.0
                if progress:
                    progress("epoch", row)
                save()
            elif checkpoint_every and state.step % checkpoint_every == 0:
                save()
            if not comm.collective:  # one process decides on its own flag, at the step's very end
                stop = signals.signum or 0
            if stop:
                save()
                name = signal.Signals(stop).name
                where = f"; checkpoint saved to {checkpoint_path}" if checkpoint_path else ""
                raise TrainingInterrupted(f"interrupted at step {state.step} by {name}{where}", state.step,
                                          checkpoint_path, stop)
    return state
