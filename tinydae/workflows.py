"""What `sample` and `improve` do, as library calls: the CLI parses options, calls run_chains and
prints its summary; Python code gets the same checks (outputs, memory, data provenance) and the
same files.

log: a callable taking one line (the CLI passes click's stderr echo); None says nothing.
"""
import math
import os
import time

import numpy as np

from tinydae import images, safety
from tinydae.checkpoint import load_checkpoint, restore_model
from tinydae.data import load_dataset
from tinydae.errors import ConfigError
from tinydae.runs import moved_data_error, recorded_data

KEEP_CHAINS = 10  # chains kept whole (every keep_every step): the PNG strip and the HDF5 trajectory
START_CHOICES = "noise, bernoulli, pca, pixels or a file of samples (.npz, .h5 or IDX)"


def training_data(ckpt, data=None, key=None, limit=None):
    """`data` if given, else the data the checkpoint was trained on (its recorded source, key,
    limit, rescale and seed); limit caps the recorded limit.  -> Dataset"""
    if data is not None:
        return load_dataset(data, key=key, limit=limit)
    cfg = ckpt.train_config
    if cfg.get("data") is None:
        raise ConfigError(f"{ckpt.path} does not record its training data; pass --data")
    source, gone = recorded_data(ckpt)
    if gone:  # say where the path came from: the user never typed it in this command
        raise moved_data_error(ckpt, source)
    if limit is not None:  # --limit applies to the recorded data as well (it used to be ignored)
        recorded = cfg.get("limit")
        limit = limit if recorded is None else min(limit, recorded)
    else:
        limit = cfg.get("limit")
    return load_dataset(source, key=cfg.get("key"), limit=limit, rescale=cfg.get("rescale", False),
                        seed=cfg.get("seed", 0))


def image_shape(model):
    """(H, W) or (H, W, C) of an image model (its recorded shape, or a square D), else None: what
    a PNG grid can show (images.grid draws several channels as their mean)."""
    shape = tuple(model.config["input_shape"])
    if len(shape) == 3:
        return shape[:2] if shape[2] == 1 else shape
    side = math.isqrt(model.input_dim)
    return (side, side) if side * side == model.input_dim else None


def strip_memory(rows, columns, shape):
    """Bytes save_grid needs for a PNG of rows x columns images of H x W pixels: the padded
    grid, scaled 2x, its filtered copy and the compressed bytes (tracemalloc: 17-20x the
    unscaled grid)."""
    H, W = shape[:2]
    return 24 * (rows * (H + 2) + 2) * (columns * (W + 2) + 2)


def check_chain_memory(model, n, steps, keep_every, batch_size, start, png_shape, sampler="mean"):
    """Refuse chains whose arrays (and PNG strip) would not fit, before drawing or running them."""
    from tinydae.sampling import chain_memory

    nbytes = chain_memory(model, n, steps, keep_every, KEEP_CHAINS, batch_size, start, sampler)
    if png_shape:
        nbytes += strip_memory(min(n, KEEP_CHAINS), steps // keep_every + 2, png_shape)
    safety.check_memory(nbytes, f"{n:,} chains of {model.input_dim} values x {steps:,} steps",
                        "use a smaller --n, fewer --steps or a larger --keep-every")


def starting_points(kind, n, model, ckpt, data=None, key=None, limit=None, seed=0, option="--start",
                    rescale=False, log=None, first=0):
    """-> (x0: (n, D), its name): drawn (noise, bernoulli, pca, pixels: START_KINDS) or read
    from a file of samples; chains first..first+n-1 of them (a rank's share)."""
    from tinydae.sampling import START_KINDS, start_points

    log = log or (lambda line: None)
    if kind in START_KINDS:
        train = None
        if kind in ("pca", "pixels"):  # reading the data and fitting the baseline take seconds: say so
            log(f"loading the data for the {kind} starting points ...")
            train = training_data(ckpt, data, key, limit).x
            log(f"fitting the {kind} baseline to {len(train):,} rows and drawing {n:,} starting points ...")
        return start_points(kind, n, model.input_dim, seed, train, first), kind
    if not os.path.exists(kind):  # most often a typo of a start kind: name them all
        raise ConfigError(f"{option} {kind}: no such file; give {START_CHOICES}")
    start = load_dataset(kind, key=key, rescale=rescale)  # a file of samples
    if start.dim != model.input_dim:
        raise ConfigError(f"{kind}: samples have {start.dim} values, the model expects {model.input_dim}")
    model.check_image_shape(start.image_shape, kind)
    return start.x[first:first + n], os.path.basename(kind)


def run_chains(checkpoint, start="noise", n=64, steps=50, chain_corruption="model", sampler="mean", final=None,
               step_size=None, levels=None, keep_every=5, seed=0, batch_size=1024, data=None, key=None, limit=None,
               rescale=False, out=None, h5=None, overwrite=False, replace_out=False, backend="cpu",
               option="--start", log=None, comm=None, score=None, score_data=None):
    """Chains from a checkpoint, as `python cli.py sample` (start="noise", ...) and `improve`
    (start= a file of samples) run them: every check before any work (outputs, memory, then the
    maybe slow starting points), the chains, a PNG strip of KEEP_CHAINS chains at `out` (for
    image models: several channels drawn as their mean) and the chain in HDF5 at `h5`.

    replace_out: `out` is a scratch file a later run may replace (the CLI's defaults); any other
    existing output needs overwrite=True.
    score: a classifier file (tinydae.classifier): the final samples' FID against the reference
    rows (score_data, default the checkpoint's training data), inception score and class entropy
    in its features, each rank scoring its own chains and reference rows, one reduction
    (features.sharded_figures), in the summary under 'score'
    comm: a tinydae.distributed communicator: every rank calls run_chains alike; rank r runs
    chains shard(n) (chain i's draws depend on i only: the samples are one process's at the same
    batch size per rank) and rank 0 gathers them and writes the files (one PNG, one HDF5 file)
    -> (summary dict: the CLI's JSON, ChainResult: all chains on rank 0, a rank's own elsewhere)
    """
    from tinydae.distributed import SingleProcess, shard
    from tinydae.sampling import START_KINDS, ChainResult, chain, check_sampler_for, make_sampler

    comm = comm if comm is not None else SingleProcess()
    log = log if comm.root else None
    if n < 1 or steps < 0 or keep_every < 1 or batch_size < 1:
        raise ConfigError("--n, --keep-every and --batch-size must be >= 1, --steps >= 0")
    if n < comm.size:
        raise ConfigError(f"--n {n} gives fewer chains than the {comm.size} processes: ask for at least {comm.size}")
    ckpt = comm.agree(lambda: load_checkpoint(checkpoint, optimizer=False))
    if ckpt.note and log:
        log(f"note: {ckpt.note}")
    model = comm.agree(lambda: restore_model(ckpt, backend=backend))
    comm.bind(model.backend)
    corruption = model.corruption if chain_corruption == "model" else chain_corruption
    if corruption is None:
        raise ConfigError(f"{checkpoint} does not record its training corruption; pass --chain-corruption")
    # A typo in the corruption or sampler options fails now, not after the start points are drawn.
    sampler_opts = dict(sampler=sampler, final=final, step_size=step_size, levels=levels)
    chosen = make_sampler(corruption=corruption, **sampler_opts)
    check_sampler_for(model, chosen)
    shape = image_shape(model)
    png = out if out and shape else None
    inputs = [("the checkpoint", checkpoint), ("--data", data), (option, start)]
    if isinstance(ckpt.train_config.get("data"), str):  # the training data it records is an input too
        inputs.append(("the training data recorded in the checkpoint", recorded_data(ckpt)[0]))
    def check_outputs():  # rank 0 alone writes them
        if png:
            safety.check_output_file(png, "--out", overwrite or replace_out, inputs)
        if h5:
            safety.check_output_file(h5, "--h5", overwrite, inputs, outputs=[("--out", png)])

    comm.root_call(check_outputs)
    judge = reference = None
    if score is not None:  # the classifier and the reference rows before any chain runs
        from tinydae.classifier import load_classifier

        judge = comm.agree(lambda: load_classifier(score))
        if judge.input_dim != model.input_dim:
            raise ConfigError(f"--score {score}: the classifier reads {judge.input_dim} values, the model writes "
                              f"{model.input_dim}")
        reference = comm.agree(lambda: training_data(ckpt, score_data, key).x)
        lo_ref, hi_ref = shard(len(reference), comm)
        reference = reference[lo_ref:hi_ref]
    if start not in START_KINDS:  # a file of samples: n is at most its rows
        rows = comm.agree(lambda: starting_points(start, n, model, ckpt, data, key, limit, seed, option, rescale))
        n = len(rows[0])
        if n < comm.size:
            raise ConfigError(f"{start} holds {n} samples, fewer than the {comm.size} processes")
    lo, hi = shard(n, comm)  # this rank's chains
    if comm.collective:  # rank 0 gathers every chain's final state (and the kept chains' states)
        comm.root_call(lambda: safety.check_memory(
            n * model.input_dim * 4 * 2, f"gathering {n:,} samples of {model.input_dim} values on rank 0",
            "use a smaller --n (or several runs with other --seed)"))
    if start in START_KINDS:
        comm.agree(lambda: check_chain_memory(model, hi - lo, steps, keep_every, batch_size, start,
                                              png and shape, sampler))
        x0, start_name = comm.agree(lambda: starting_points(start, hi - lo, model, ckpt, data, key, limit, seed,
                                                            option, rescale, log, first=lo))
    else:
        x0, start_name = rows[0][lo:hi], rows[1]
        comm.agree(lambda: check_chain_memory(model, len(x0), steps, keep_every, batch_size, None,
                                              png and shape, sampler))
    t0 = time.perf_counter()
    # An overflow inside the network is reported once, below, not as NumPy's RuntimeWarnings.
    with safety.out_of_memory(f"running {len(x0):,} chains", "use a smaller --n, fewer --steps or a "
                                                              "larger --keep-every"), \
            np.errstate(over="ignore", invalid="ignore"):
        result = chain(model, x0, steps, corruption=corruption, keep_every=keep_every,
                       keep_chains=max(0, min(hi, KEEP_CHAINS) - lo), seed=seed, batch_size=batch_size,
                       first_chain=lo, **sampler_opts)
        figures = None
        if judge is not None:  # each rank scores its own chains: one reduction, no gather needed
            from tinydae.science.features import sharded_figures

            figures = sharded_figures(judge, result.samples, reference, comm)
        if comm.collective:  # the ranks' chains joined on rank 0, in chain order
            change = comm.allreduce_host(result.mean_abs_change * (hi - lo)) / n
            samples, trajectory = comm.gather_rows(result.samples), comm.gather_rows(result.trajectory)
            if comm.root:
                result = ChainResult(samples, trajectory, result.kept_steps, change)
        seconds = time.perf_counter() - t0

        def write():
            if png:
                # NaN states (see the warning below) drawn black, not cast to uint8 with a warning
                images.save_grid(png, list(np.nan_to_num(result.trajectory)), shape)
            if h5:
                result.save_h5(h5)

        comm.root_call(write)
    broken = int((~np.isfinite(result.samples)).any(axis=1).sum())
    if broken and log:  # r(x) is a sigmoid: only an overflow inside the network gives NaN
        log(f"warning: {broken} of {n} chains ended in NaN or infinite values: the model's "
            f"outputs overflow (its parameters are corrupt or far too large)")
    summary = dict(chains=n, steps=steps, start=start_name, corruption=str(corruption),
                   sampler=sampler, final=chosen.final, step_size=chosen.step_size,
                   sigmas=list(chosen.sigmas),
                   kept_steps=result.kept_steps, mean_abs_change=result.mean_abs_change.tolist(),
                   seconds=seconds, png=png, h5=h5)
    if figures is not None:
        summary["score"] = dict(figures, classifier=score)
    return summary, result
