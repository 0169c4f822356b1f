"""The click application behind ``python cli.py`` and the ``tinydae`` console script.

Thin: parse options, call the library, print.  A user mistake (any TinyDAEError) ends
with one line on stderr and exit code 2, never a traceback; SIGINT during training
saves a checkpoint and exits 130.
"""
import contextlib
import json
import math
import os
import sys
import time

import click
from click.core import ParameterSource

import tinydae
import tinydae.distributed
from tinydae import runs
from tinydae.errors import ConfigError, TinyDAEError
from tinydae.rng import STREAM_VALID_CORRUPTION
from tinydae.workflows import KEEP_CHAINS
from tinydae.workflows import training_data as _training_data

SEED = click.IntRange(0, 2**64 - 1)  # Philox keys are 64-bit

ARCH_OPTIONS = {"arch": "arch_spec", "activation": "activation", "tied": "tied", "loss": "loss", "dtype": "dtype"}
TRAIN_OPTIONS = ("data", "key", "limit", "rescale", "val_fraction", "corruption", "optimizer",
                 "lr", "lr_schedule", "momentum", "weight_decay", "batch_size", "seed")


# The commands that run on several processes (mpiexec -n R python cli.py COMMAND ...)
DISTRIBUTED_COMMANDS = ("train", "sample", "improve")
# How long a rank whose error the others may not share waits for them to end before it ends
# the job with MPI_Abort (a rank the others wait for in a collective would hang them forever)
ABORT_AFTER_S = 10.0


def _silence():
    """A rank other than 0 prints nothing (its crash report still goes to the real stderr)."""
    sys.stdout = sys.stderr = open(os.devnull, "w")


class Group(click.Group):
    """Turns tinydae's errors into one clear line and an exit code.

    In a run of several processes only rank 0 prints; every rank ends with the same exit code,
    and a rank that fails alone ends the job (distributed.finish)."""

    def invoke(self, ctx):
        try:
            value = self._invoke(ctx)
        except SystemExit as e:
            self._finish(ctx, e.code)
            raise
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort) as e:
            # click's own (a usage error, --help of a command): click prints it, on rank 0 only
            self._finish(ctx, getattr(e, "exit_code", 1))
            raise
        except BaseException:  # a bug, or an error not turned into a line: the rank's traceback
            comm = ctx.meta.get("tinydae.comm")
            if comm is None or comm.size == 1:
                raise
            import traceback

            sys.__stderr__.write(f"rank {comm.rank}: " + traceback.format_exc())
            sys.__stderr__.flush()
            comm.abort(1)
            raise
        self._finish(ctx, 0)
        return value

    @staticmethod
    def _finish(ctx, code):
        comm = ctx.meta.get("tinydae.comm")
        if comm is not None and comm.size > 1:
            tinydae.distributed.finish(comm, code or 0, ABORT_AFTER_S, ctx.meta.get("tinydae.error"))

    def _invoke(self, ctx):
        import warnings

        from tinydae.backend import BackendWarning

        def show(message, category, *args, **kwargs):
            if issubclass(category, BackendWarning):  # a fallback the user should know of: one line
                click.echo(f"warning: {message}", err=True)
            else:
                default_show(message, category, *args, **kwargs)

        default_show = warnings.showwarning
        try:
            with warnings.catch_warnings():
                warnings.showwarning = show
                return super().invoke(ctx)
        except TinyDAEError as e:
            ctx.meta["tinydae.error"] = str(e)
            comm = ctx.meta.get("tinydae.comm")
            if comm is not None or tinydae.distributed.launcher_rank() == 0 or ctx.meta.get("tinydae.mode") == "off":
                click.echo(f"error: {e}", err=True)  # (non-zero ranks print into devnull)
            sys.exit(e.exit_code)
        except RuntimeError as e:  # a CUDA kernel the self-check could not foresee failing to load
            if type(e).__name__ != "LaunchError":
                raise
            click.echo(f"error: --backend cuda: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(tinydae.__version__, prog_name="tinydae")
@click.option("--distributed", type=click.Choice(tinydae.distributed.MODES), envvar="TINYDAE_DISTRIBUTED",
              default="auto", show_default=True,
              help="Several processes over MPI: 'auto' when started by mpiexec or srun with more than one, 'mpi' "
                   "always (one process too), 'off' never [env TINYDAE_DISTRIBUTED]. Runs train, sample, improve.")
@click.option("--threads", envvar="TINYDAE_THREADS", default=None, metavar="N|auto|all",
              help="CPU threads for kernels and GEMMs [env TINYDAE_THREADS; default: all "
                   "cores]. 'auto' leaves to other processes the cores the load average says "
                   "they use (see README, CPU threading).")
@click.pass_context
def cli(ctx, threads, distributed):
    """tinydae: denoising autoencoders trained with binary cross-entropy."""
    from tinydae.threads import cores, set_threads

    ctx.meta["tinydae.mode"] = distributed
    comm = tinydae.distributed.connect(distributed)
    ctx.meta["tinydae.comm"] = comm
    if comm.size > 1 and not comm.root:
        _silence()
    if comm.size > 1:  # ranks running different commands (an MPMD launch) would wait on each other
        comm.check_same("the command", ctx.invoked_subcommand, "; start every rank with the same command")
    if comm.size > 1 and ctx.invoked_subcommand not in DISTRIBUTED_COMMANDS:
        raise ConfigError(f"'{ctx.invoked_subcommand}' runs on one process: start it without mpiexec or srun "
                          f"(these run on several: {', '.join(DISTRIBUTED_COMMANDS)})")
    if threads is not None:
        set_threads(threads)
    elif comm.local_size > 1:  # the ranks on a node share its cores instead of each taking all
        set_threads(max(1, cores() // comm.local_size))


def parse_hidden(text):
    try:
        hidden = tuple(int(h) for h in str(text).split(","))
    except ValueError:
        raise ConfigError(f"--hidden takes comma-separated widths like 1000,500, got {text!r}") from None
    if not hidden or min(hidden) < 1:
        raise ConfigError(f"--hidden widths must be positive, got {text!r}")
    return hidden


class Progress:
    """One click progress bar per epoch on stderr, then a summary line per epoch."""

    def __init__(self, steps_per_epoch, epochs, enabled=True):
        self.steps_per_epoch, self.epochs, self.enabled = steps_per_epoch, epochs, enabled
        self.bar = None

    def __call__(self, event, info):
        if not self.enabled:
            return
        if event == "step":
            if self.bar is None:
                done = (info["step"] - 1) % self.steps_per_epoch
                self.bar = click.progressbar(length=self.steps_per_epoch, file=sys.stderr,
                                             label=f"epoch {info['epoch']}/{self.epochs}",
                                             item_show_func=self._show, show_eta=True)
                self.bar.__enter__()
                if done:
                    self.bar.update(done)
            self.bar.update(1, current_item=info)
        elif event == "epoch":
            self.close()
            line = (f"epoch {info['epoch']}/{self.epochs}  train {info['train_loss']:.2f}")
            if "val_bce_denoise" in info:
                line += (f"  val BCE denoise {info['val_bce_denoise']:.2f}"
                         f"  clean {info['val_bce_clean']:.2f}")
            line += f" nats/example  {info['examples_per_s']:,.0f} ex/s  {info['wall_s']:.1f} s"
            click.echo(line, err=True)

    @staticmethod
    def _show(info):
        return None if info is None else f"loss {info['loss']:.2f}  {info['examples_per_s']:,.0f} ex/s"

    def close(self):
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _load_checkpoint(path, optimizer=True):
    """tinydae.load_checkpoint, plus one `note:` line on stderr when the user should know
    something about the file (a format-1 checkpoint carries no checksums).  optimizer=False
    for the commands that only run the model: the optimizer state stays unread."""
    ckpt = tinydae.load_checkpoint(path, optimizer=optimizer)
    if ckpt.note:
        click.echo(f"note: {ckpt.note}", err=True)
    return ckpt


def _explicit(ctx, names):
    return {n for n in names if ctx.get_parameter_source(n) in
            (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}


def _stderr(line):
    click.echo(line, err=True)


# The run-folder rules and data provenance live in the library (tinydae/runs.py), so that the
# API can do what `train` does; these names keep the CLI's code short.
TRAIN_FILES = runs.TRAIN_FILES
_data_source = runs.data_source
_move_run_aside, _drop_aside = runs.move_run_aside, runs.drop_aside


def _check_train_out(out, resume, overwrite):
    return runs.check_run_folder(out, resume, overwrite, log=_stderr)


def _restore_aside(out, aside):
    runs.restore_aside(out, aside, log=_stderr)


@cli.command()
@click.option("--data", default="glyphs", show_default=True,
              help="'glyphs' (built-in, synthetic) or a file: IDX (.gz or raw), .npy, .npz, .h5")
@click.option("--key", default=None, help="Array name in a .npz, or dataset path in a .h5.")
@click.option("--limit", type=int, default=None, help="Use only the first N examples.")
@click.option("--rescale", is_flag=True, help="Scale data linearly to [0, 1] (min-max).")
@click.option("--val-fraction", type=float, default=0.1, show_default=True,
              help="Fraction held out for validation (seeded split).")
@click.option("--backend", type=click.Choice(["cpu", "cuda", "auto"]), default="auto", show_default=True)
@click.option("--kernels", "kernel_set", type=click.Choice(["fused", "reference"]), default="fused",
              show_default=True, help="Fused numba kernels, or the plain NumPy reference (CPU only).")
@click.option("--arch", "arch_spec", default=None,
              help="Architecture: mlp:1000,500 | conv:32,64 | conv:16k3,32,64 | conv:32,64,fc128 | unet:16,32; "
                   "a trailing ,sigma (unet, mlp) tells the network the noise level (train it with "
                   "--corruption gaussian:LO..HI) (README: the architecture spec).  [default: mlp:1000]")
@click.option("--hidden", default=None, help="Shorthand for --arch mlp:WIDTHS, e.g. 1000,500.")
@click.option("--activation", type=click.Choice(list(tinydae.layers.HIDDEN_ACTIVATIONS)),
              default="relu", show_default=True)
@click.option("--tied/--untied", default=False, show_default=True,
              help="Each decoder layer uses its encoder layer's weight (W^T; a conv's as is).")
@click.option("--loss", type=click.Choice(["bce", "mse"]), default="bce", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--corruption", default="gaussian:0.3", show_default=True,
              help="gaussian:SIGMA | gaussian:LO..HI (a level per row, log-uniform: for "
                   "sample --sampler annealed) | masking:P | salt_pepper:P | none")
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "sgd"]), default="adam", show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--lr-schedule", type=click.Choice(["constant", "cosine"]), default="constant", show_default=True,
              help="cosine: --lr decayed to 0 over all --epochs, fixed when the run starts: its resume "
                   "continues to that total (and cannot extend it).")
@click.option("--momentum", type=float, default=0.9, show_default=True, help="SGD only.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--epochs", type=int, default=10, show_default=True,
              help="Train until this many epochs are complete (with --resume: in total).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", default="runs/latest", show_default=True,
              help="Directory for checkpoint.h5, history.json and samples.png.")
@click.option("--overwrite", is_flag=True, help="Replace the run already in --out.")
@click.option("--checkpoint-every", type=int, default=500, show_default=True,
              help="Save a checkpoint every N steps (0: only at epoch ends).")
@click.option("--resume", type=click.Path(dir_okay=False), default=None,
              help="Continue the run saved in this checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout, no progress.")
@click.option("--deterministic", is_flag=True,
              help="Gradients of 64-row chunks summed exactly (as integers): the same bits for any number of "
                   "processes (at the same threads per process), at a cost (README: More than one machine).")
@click.option("--bucket-mb", type=float, default=None,
              help="With several processes: reduce the gradient in buckets of at least this many MiB, each "
                   "started during backward as soon as its layers are done (0: a bucket per layer), instead of "
                   "one all-reduce after backward. The same sums; whether it is faster: bench scale "
                   "(README: More than one machine).")
@click.option("--lazy/--no-lazy", default=None,
              help="Leave a .npy or .h5 --data file on disk and read each batch's rows from it (a data set "
                   "larger than memory; each process reads only its rows). [default: on with several "
                   "processes, off for one]")
@click.pass_context
def train(ctx, data, key, limit, rescale, val_fraction, backend, kernel_set, arch_spec, hidden, activation, tied, loss,
          dtype, corruption, optimizer, lr, lr_schedule, momentum, weight_decay, batch_size, epochs, seed, out,
          overwrite, checkpoint_every, resume, as_json, lazy, deterministic, bucket_mb):
    """Train a DAE; writes OUT/checkpoint.h5, OUT/history.json and OUT/samples.png.

    Refuses an OUT that holds another run unless --overwrite (or --resume of its checkpoint).
    """
    from tinydae import safety

    comm = _comm(ctx)  # ranks started with different options: refused before anything else
    comm.check_same("the command's options", ctx.params, "; start every rank with the same command")
    opts = dict(data=_data_source(data), key=key, limit=limit, rescale=rescale, val_fraction=val_fraction,
                corruption=str(tinydae.Corruption.parse(corruption)), optimizer=optimizer, lr=lr,
                lr_schedule=lr_schedule, momentum=momentum, weight_decay=weight_decay, batch_size=batch_size, seed=seed)
    if arch_spec is not None and hidden is not None:
        raise ConfigError("give --arch or --hidden (shorthand for --arch mlp:WIDTHS), not both")
    spec = (tinydae.arch.canonical(arch_spec) if arch_spec is not None
            else tinydae.arch.mlp_spec(parse_hidden(hidden if hidden is not None else "1000")))
    arch = dict(arch=spec, activation=activation, tied=tied, loss=loss, dtype=dtype)
    state, ckpt = None, None
    if resume:
        ckpt = _load_checkpoint(resume)
        model_options = {k: arch[k] for k, param in ARCH_OPTIONS.items()
                         if _explicit(ctx, [param, "hidden"] if k == "arch" else [param])}
        epochs = runs.scheduled_epochs(ckpt, epochs if _explicit(ctx, ["epochs"]) else None, epochs)
        saved, state = runs.resume_settings(ckpt, model_options, {k: opts[k] for k in _explicit(ctx, TRAIN_OPTIONS)},
                                            epochs)
        opts.update({k: saved[k] for k in TRAIN_OPTIONS if k in saved})
    if epochs < 1 or opts["batch_size"] < 1:
        raise ConfigError("--epochs and --batch-size must be >= 1")
    if checkpoint_every < 0:
        raise ConfigError(f"--checkpoint-every must be >= 0, got {checkpoint_every}")
    if bucket_mb is not None and not 0 <= bucket_mb < math.inf:
        raise ConfigError(f"--bucket-mb must be a number of MiB >= 0, got {bucket_mb}")
    if bucket_mb is not None and deterministic:
        raise ConfigError("--bucket-mb and --deterministic do not go together: --deterministic reduces "
                          "64-row chunks exactly after backward")
    comm.check_same("the command's options", opts, "; start every rank with the same command")  # files resolved
    backend = _backend(comm, backend, kernel_set)
    with contextlib.ExitStack() as held:
        def claim_out():  # rank 0 alone checks, locks and clears the run folder
            safety.check_output_dir(out, "--out")
            held.enter_context(safety.exclusive_lock(out, "--out"))
            return _check_train_out(out, resume, overwrite)

        replace = comm.root_call(claim_out)
        lazy = comm.collective if lazy is None else lazy
        _train_locked(opts, arch, ckpt, state, backend, epochs, out, replace, checkpoint_every, as_json, comm, lazy,
                      deterministic, bucket_mb)


def _write_train_outputs(history_path, state, png, model, opts, dataset, val_set, train_set):
    """train's files after training: history.json, and samples.png for image data."""
    from tinydae import safety

    tinydae.checkpoint.atomic_write(history_path, lambda f: f.write(safety.dumps(state.history, indent=2).encode()))
    if png is None:
        return
    shown = (val_set if len(val_set) else train_set).x[:10]
    x = model.as_input(shown)
    c = tinydae.Corruption.parse(opts["corruption"])
    noisy = c.apply(model.backend, x, opts["seed"], 0, STREAM_VALID_CORRUPTION)
    sigma = c.row_sigmas(model.backend, len(x), opts["seed"], 0, STREAM_VALID_CORRUPTION) \
        if model.noise_conditional else None
    rows = [shown, model.backend.to_host(noisy),
            model.backend.to_host(model.reconstruct(noisy, check=False, sigma=sigma))]
    tinydae.images.save_grid(png, rows, dataset.image_shape)


def _comm(ctx):
    """The command's communicator (distributed.SingleProcess unless started by mpiexec or srun)."""
    return ctx.find_root().meta.get("tinydae.comm") or tinydae.distributed.SingleProcess()


def _gpu_or_cpu(comm, name):
    """Several processes: each takes a GPU of its own (distributed.select_gpu).  More processes
    on a node than GPUs: --backend cuda is refused, --backend auto runs on the CPU. -> the name"""
    if name not in ("cuda", "auto") or not comm.collective:
        return name
    try:
        comm.agree(lambda: tinydae.distributed.select_gpu(comm, required=True))
    except TinyDAEError:
        if name == "cuda":
            raise
        return "cpu"
    return name


def _backend(comm, name, kernel_set):
    """get_backend on every rank (one GPU per rank); an error on one rank stops them all."""
    name = _gpu_or_cpu(comm, name)
    return comm.agree(lambda: tinydae.get_backend(name, kernels=kernel_set))


def _train_locked(opts, arch, ckpt, state, backend, epochs, out, replace, checkpoint_every, as_json, comm, lazy=False,
                  deterministic=False, bucket_mb=None):
    """The rest of `train`, with `out` checked and locked (by rank 0 of a distributed run, which
    alone writes files; every rank trains)."""
    from tinydae import safety
    from tinydae.train import named_lr_schedule, training_memory

    dataset = comm.agree(lambda: tinydae.load_dataset(opts["data"], limit=opts["limit"], rescale=opts["rescale"],
                                                      key=opts["key"], seed=opts["seed"], lazy=lazy))
    train_set, val_set = dataset.split(opts["val_fraction"], seed=opts["seed"])
    arch = dict(arch, input_shape=dataset.image_shape)  # conv layers need it; an mlp records it
    config = ckpt.model_config if ckpt is not None else tinydae.model.check_config(
        dataset.dim, seed=opts["seed"], **arch)
    shape = tinydae.model.describe(config)
    fix = "use a smaller --arch (--hidden) or --batch-size, or fewer examples (--limit)"
    comm.agree(lambda: safety.check_memory(
        training_memory(config, len(train_set), opts["batch_size"], opts["optimizer"],
                        rows_on_device=not isinstance(dataset.x, tinydae.data.Rows)),
        f"training a {shape} DAE (batch {opts['batch_size']}, {len(train_set):,} examples)", fix))
    with safety.out_of_memory(f"building the {shape} DAE", fix):
        if ckpt is not None:
            model = tinydae.restore_model(ckpt, backend=backend)
        else:
            model = tinydae.DAE(dataset.dim, **arch, seed=opts["seed"], backend=backend)
        hyper = dict(lr=opts["lr"], weight_decay=opts["weight_decay"])
        if opts["optimizer"] == "sgd":
            hyper["momentum"] = opts["momentum"]
        opt = tinydae.make_optimizer(opts["optimizer"], model, **hyper)
    if ckpt is not None and ckpt.optimizer is not None:
        opt.load_state_dict(ckpt.optimizer)
    # The checkpoint (parameters and optimizer buffers) twice over: a save writes the new file
    # beside the old one before it replaces it.
    buffers = 1 + len(opt.buffers)
    comm.root_call(lambda: safety.check_free_space(out, 2 * buffers * model.params.nbytes + 2**20,
                                                   f"saving the checkpoints of a {shape} DAE ({opts['optimizer']})"))
    ckpt_path = os.path.join(out, "checkpoint.h5")
    # --overwrite: the old run's files move aside (no file of it may pass for one of this run) and
    # are deleted once this run has saved a regular checkpoint (an epoch's end or --checkpoint-every);
    # a run that fails or is interrupted before that puts them back (the interrupted run goes
    # aside instead), so that --overwrite never loses the old run to a mistake noticed at once.
    aside = None
    steps_per_epoch = -(-len(train_set) // opts["batch_size"])
    if not as_json:
        ranks = f", {comm.size} process{'es' * (comm.size > 1)} ({comm.name})" if comm.collective else ""
        click.echo(f"{model} on {dataset.name}: {len(train_set)} train / {len(val_set)} val, "
                   f"{opts['corruption']}, {opt}, {backend.kernel_set} kernels on {backend.device}{ranks}",
                   err=True)
    shown_progress = Progress(steps_per_epoch, epochs, enabled=not as_json)

    def progress(event, info):
        nonlocal aside
        if aside is not None and comm.root and os.path.exists(ckpt_path):  # this run's first checkpoint is saved
            _drop_aside(aside)
            aside = None
        shown_progress(event, info)

    t0 = time.perf_counter()
    finished = False
    try:
        if replace:
            aside = comm.root_call(lambda: _move_run_aside(out))
        with safety.out_of_memory("training", fix + f"; the last checkpoint, if any, is {ckpt_path}"):
            state = tinydae.fit(model, train_set, val_set if len(val_set) else None, optimizer=opt,
                                corruption=opts["corruption"], epochs=epochs,
                                batch_size=opts["batch_size"], seed=opts["seed"], state=state,
                                lr_schedule=named_lr_schedule(opts["lr_schedule"], opts["lr"]),
                                checkpoint_path=ckpt_path, checkpoint_every=checkpoint_every,
                                train_config=dict(opts, epochs=epochs), progress=progress, comm=comm,
                                deterministic=deterministic, bucket_mb=bucket_mb)
        finished = True
    finally:
        shown_progress.close()
        if aside is not None and comm.root:
            if finished:
                _drop_aside(aside)
            else:
                _restore_aside(out, aside)
    history_path = os.path.join(out, "history.json")
    png = os.path.join(out, "samples.png") if dataset.image_shape is not None else None
    comm.root_call(lambda: _write_train_outputs(history_path, state, png, model, opts, dataset, val_set, train_set))
    last = state.history[-1] if state.history else {}
    per_pixel = {k + "_per_pixel": v / dataset.dim for k, v in last.items() if k.startswith("val_bce")}
    summary = dict(checkpoint=ckpt_path, history=history_path, samples=png, step=state.step,
                   epochs=state.epoch, seconds=time.perf_counter() - t0, final=dict(last, **per_pixel))
    if as_json:
        click.echo(safety.dumps(summary, indent=2))
    else:
        if "val_bce_denoise" in last:
            d = dataset.dim
            click.echo(f"final validation BCE: denoising {last['val_bce_denoise']:.3f} nats/example "
                       f"({last['val_bce_denoise'] / d:.5f} nats/pixel), clean reconstruction "
                       f"{last['val_bce_clean']:.3f} nats/example ({last['val_bce_clean'] / d:.5f} nats/pixel)")
        click.echo(f"checkpoint: {ckpt_path}")
        if png:
            click.echo(f"samples (rows: clean / corrupted / reconstructed): {png}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def info(as_json):
    """Versions, backends and devices found."""
    import importlib.metadata as md
    import platform

    versions = {"python": platform.python_version(), "tinydae": tinydae.__version__}
    for pkg in ("numpy", "numba", "h5py", "click", "cupy-cuda12x", "cupy-cuda13x", "numba-cuda"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    backends = {}
    for name in ("cpu", "cuda"):
        try:
            b = tinydae.get_backend(name)
            backends[name] = dict(available=True, device=b.device)
        except TinyDAEError as e:
            backends[name] = dict(available=False, reason=str(e))
    backends["auto"] = dict(selects=tinydae.get_backend("auto").name)
    from tinydae.kernels import cpu as kernels_cpu

    cache = kernels_cpu.cache_status()
    warm = sum(1 for v in cache.values() if v)
    from tinydae.kernels import cuda_build

    report = dict(versions=versions, backends=backends,
                  cpu_kernel_cache=dict(warm=warm == len(cache), compiled=warm, kernels=len(cache),
                                        signatures=cache),
                  cuda_toolchain=cuda_build.toolchain_report())
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for k, v in versions.items():
        click.echo(f"{k:14s} {v or 'not installed'}")
    for name, b in backends.items():
        if "selects" in b:
            click.echo(f"backend auto   -> {b['selects']}")
        else:
            click.echo(f"backend {name:6s} " + (b["device"] if b["available"] else b["reason"]))
    c = report["cpu_kernel_cache"]
    state = "warm" if c["warm"] else ("cold: the first training step compiles them (a few seconds)"
                                      if c["compiled"] == 0 else "partly warm")
    click.echo(f"cpu kernels    {c['compiled']}/{c['kernels']} compiled in numba's cache ({state})")
    t = report["cuda_toolchain"]
    click.echo(f"cuda driver    {t['driver'] or 'none found'}"
               + (f" (JIT-compiles PTX ISA <= {t['driver_ptx_isa']})" if t["driver_ptx_isa"] else ""))
    if t.get("nvvm_release"):
        click.echo(f"cuda compiler  NVVM {t['nvvm_release']} -> PTX ISA {t['ptx_isa']}; cubins by "
                   f"{', '.join(t['assemblers']) or 'nothing (no nvJitLink or ptxas)'}")
    else:
        click.echo(f"cuda compiler  unusable: {t.get('compiler_error')}")
    click.echo(f"cuda launcher  {t['launcher']} (TINYDAE_CUDA_LAUNCHER: {' | '.join(t['launchers'])}); "
               f"{t['cached_cubins']} cubins cached in {t['cache_dir']}")
    if t.get("bundle"):
        click.echo(f"cuda bundle    {t['bundle']} (TINYDAE_CUDA_CUBINS): {t['bundle_cubins']} cubins")
    for w in t["warnings"]:
        click.echo(f"warning: {w}", err=True)


@cli.command("build-cuda")
@click.option("--arch", default="sm_90", show_default=True, help="GPU architecture, e.g. sm_90 (H100/H200).")
@click.option("--out", "out_dir", default=None,
              help="Directory for the .ptx, .cubin and .json of each kernel variant "
                   "[default: the launch cache, TINYDAE_CUDA_CACHE or ~/.cache/tinydae/cuda].")
@click.option("--assembler", type=click.Choice(["auto", "ptxas", "nvjitlink"]), default="auto", show_default=True,
              help="PTX -> cubin: ptxas (CUDA_HOME/bin or PATH; reports spills) or nvJitLink (pip wheel).")
@click.option("--overwrite", is_flag=True, help="Replace the build already in --out.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def build_cuda(arch, out_dir, assembler, overwrite, as_json):
    """Compile every CUDA kernel variant for a GPU architecture, without a GPU.

    numba-cuda compiles each kernel's declared signatures (float32 and float64) to PTX, the
    assembler to a cubin for ARCH; the report gives each variant's registers, spill bytes,
    local-memory bytes, shared-memory bytes and f64 instructions.  Exit 0 only when every
    variant compiles.  OUT is a self-contained bundle (cubins and a manifest.json with paths
    relative to it): TINYDAE_CUDA_CUBINS=OUT makes the GPU launcher load these cubins, on this
    machine or another one with the same sources and numba-cuda, without compiling there.
    """
    from tinydae.kernels import cuda_build

    try:
        cc = cuda_build.parse_arch(arch)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    from tinydae.safety import check_output_dir

    given = out_dir is not None  # the launch cache (the default) is tinydae's own to update
    out_dir = check_output_dir(cuda_build.cache_dir(out_dir), "--out")
    if given and os.path.exists(os.path.join(out_dir, "manifest.json")) and not overwrite:
        raise ConfigError(f"--out {out_dir} already holds a build (manifest.json); pass --overwrite to replace it, "
                          f"or choose another --out")
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        raise ConfigError("build-cuda compiles real GPU code; unset NUMBA_ENABLE_CUDASIM")
    try:
        results = cuda_build.build_all(cc, out_dir, assembler)
    except cuda_build.BuildError as e:
        raise ConfigError(f"build-cuda: {e}") from None
    except OSError as e:  # a full disk, a read-only folder: the cubins cannot be written
        raise ConfigError(f"build-cuda: cannot write {e.filename or out_dir}: {e.strerror or e}") from None
    except ImportError as e:
        raise ConfigError(f"build-cuda needs numba-cuda with NVVM ({e}): pip install -e \".[cuda13]\"") from None
    failed = [r for r in results if not r["ok"]]
    cuda_build.write_manifest(out_dir, cc, results)  # paths relative to out_dir: a movable bundle
    report = dict(arch=cuda_build.arch_name(cc), out=os.path.abspath(out_dir),
                  toolchain=cuda_build.toolchain(), kernels=results)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        first = next((r for r in results if r["ok"]), {})
        click.echo(f"{report['arch']}: PTX ISA {first.get('ptx_isa')} from NVVM {first.get('nvvm_release')}, "
                   f"cubins by {first.get('assembler')}, in {report['out']}")
        click.echo(f"{'kernel':22s} {'dtype':8s} {'regs':>5s} {'spills':>6s} {'local':>6s} {'shared':>7s} {'f64 ops':>8s}")
        for r in results:
            if not r["ok"]:
                click.echo(f"{r['name']:22s} {str(r['dtype']):8s} FAILED: {r['error']}")
                continue
            spills = "?" if r["spills"] is None else str(r["spills"])
            click.echo(f"{r['name']:22s} {str(r['dtype']):8s} {r['registers']:>5} {spills:>6s} "
                       f"{r['local_bytes']:>6} {r['shared_bytes']:>7} {r['f64_ops']:>8}")
        click.echo(f"{len(results) - len(failed)}/{len(results)} variants compiled")
    if failed:
        sys.exit(1)


@cli.command()
@click.option("--input-dim", type=int, default=7, show_default=True)
@click.option("--hidden", default=None, help="Shorthand for --arch mlp:WIDTHS.  [default: 5,3]")
@click.option("--arch", "arch_spec", default=None,
              help="Any architecture spec, e.g. conv:2,3 or unet:2,3 (with --input-dim a square: 49).")
@click.option("--activation", default="all", show_default=True, help="One activation or 'all'.")
@click.option("--loss", default="all", show_default=True, help="bce, mse or 'all'.")
@click.option("--tied", type=click.Choice(["both", "yes", "no"]), default="both", show_default=True)
@click.option("--batch", type=int, default=4, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--tol", type=float, default=1e-6, show_default=True)
@click.option("--max-seconds", type=float, default=120, show_default=True,
              help="Refuse a check estimated to take longer (every parameter is perturbed twice).")
@click.option("--json", "as_json", is_flag=True)
def gradcheck(input_dim, hidden, arch_spec, activation, loss, tied, batch, seed, tol, max_seconds, as_json):
    """Finite-difference check (float64) of a small random model: max relative error per parameter.

    Exits 0 when every error is below --tol, 1 when any is not (a NaN error fails too).
    """
    import math

    import numpy as np

    from tinydae import safety
    from tinydae.gradcheck import check_model, random_model
    from tinydae.layers import HIDDEN_ACTIVATIONS

    # A NaN tolerance made every comparison false: FAIL printed, exit 0.
    if not (math.isfinite(tol) and tol > 0):
        raise ConfigError(f"--tol must be a finite positive number (e.g. 1e-6), got {tol}")
    acts = HIDDEN_ACTIVATIONS if activation == "all" else (activation,)
    losses = ("bce", "mse") if loss == "all" else (loss,)
    ties = {"both": (False, True), "yes": (True,), "no": (False,)}[tied]
    if batch < 1:
        raise ConfigError("--batch must be >= 1")
    if arch_spec is not None and hidden is not None:
        raise ConfigError("give --arch or --hidden (shorthand for --arch mlp:WIDTHS), not both")
    if input_dim < 1:
        raise ConfigError(f"--input-dim must be >= 1, got {input_dim}")
    spec = (tinydae.arch.canonical(arch_spec) if arch_spec is not None
            else tinydae.arch.mlp_spec(parse_hidden(hidden if hidden is not None else "5,3")))
    config = tinydae.model.check_config(input_dim, arch=spec)  # untied: the most parameters
    if tinydae.arch.noise_conditional(spec):
        if tied == "yes":
            tinydae.model.check_config(input_dim, arch=spec, tied=True)  # its one error line says why not
        ties = (False,)  # a noise-conditional U-Net cannot be tied: --tied both checks it untied
    # Every parameter is checked by central differences: two passes each, per model.  Estimate
    # the time first (a 3000-1000 model would run for hours, silently).
    n_params = sum(math.prod(shape) for _, shape in tinydae.model.param_layout(config))
    flops, values = tinydae.model.model_cost(config)
    models = len(acts) * len(losses) * len(ties)
    # ~50 us of Python per loss evaluation plus its float64 GEMMs (forward and backward, ~3x the
    # forward's flops per row at ~5 GFLOP/s): measured 1.65 s for one 100-50 model (10,200
    # parameters), estimated 2.1 s.
    seconds = models * 2 * n_params * (5e-5 + 3 * batch * flops / 5e9)
    if seconds > max_seconds:
        raise ConfigError(f"gradcheck checks each of the {n_params:,} parameters of a "
                          f"{tinydae.model.describe(config)} model by finite differences (2 passes "
                          f"each, {models} models): about {seconds / 60:,.1f} minutes, over --max-seconds "
                          f"{max_seconds:g}; use a smaller --input-dim or --arch (--hidden), or raise --max-seconds")
    safety.check_memory(8 * (6 * n_params + 2 * batch * values), f"gradcheck of {n_params:,} parameters",
                        "use a smaller --input-dim or --arch (--hidden)")
    rng = np.random.default_rng(seed)
    x, t = rng.random((batch, max(input_dim, 1))), rng.random((batch, max(input_dim, 1)))

    def ok(err):
        return err < tol  # False for NaN: an error that is not a number is a failure

    results, passed, worst = [], True, 0.0
    for act in acts:
        for ls in losses:
            for ti in ties:
                model = random_model(input_dim, None, act, ti, ls, seed, arch=spec)
                errors = check_model(model, x, t)
                passed = passed and all(ok(e) for e in errors.values())
                worst = max([worst, *errors.values()], key=lambda e: math.inf if math.isnan(e) else e)
                results.append(dict(model=repr(model), errors=errors))
    if as_json:
        click.echo(safety.dumps(dict(results=results, worst=worst, tol=tol, passed=passed), indent=2))
    else:
        for r in results:
            click.echo(r["model"])
            for name, err in r["errors"].items():
                click.echo(f"  {name:8s} {err:.2e}  {'ok' if ok(err) else 'FAIL'}")
        click.echo(f"worst relative error {worst:.2e} (tolerance {tol:g}): {'PASS' if passed else 'FAIL'}")
    if not passed:
        sys.exit(1)


@cli.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", default="onnx", show_default=True, metavar="onnx|npz",
              help="onnx: a graph for ONNX Runtime and friends; npz: plain weight arrays and a JSON "
                   "description (examples/embed/dae.c runs it in a page of C).")
@click.option("--out", default=None, help="The file to write (required; missing folders are created).")
@click.option("--what", default=None, metavar="reconstruct|encode|logits",
              help="ONNX only: the graph's output, r(x), the code or the logits [default: reconstruct].")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def export_command(checkpoint, fmt, out, what, overwrite):
    """Export CHECKPOINT's DAE for use without tinydae: ONNX, or an npz of plain arrays.

    The formats are described in tinydae/export.py; the batch size of the ONNX graph is free.
    """
    from tinydae import export, safety

    what = export.check_options(fmt, what)  # every check before loading the checkpoint
    if out is None:
        raise ConfigError("export needs --out FILE, the file to write (e.g. --out runs/dae.onnx)")
    safety.check_output_file(out, "--out", overwrite, inputs=[("the checkpoint", checkpoint)])
    model = tinydae.restore_model(_load_checkpoint(checkpoint, optimizer=False), backend="cpu")
    export.export(model, out, fmt, what)
    shown = f"{what}(x) as ONNX" if fmt == "onnx" else "weights and description as npz"
    click.echo(f"exported {model!r} {shown}: {out} ({os.path.getsize(out):,} bytes)")


# ----------------------------------------------------------------------------------------
# The paper's science: sample, improve, evaluate, reproduce
# ----------------------------------------------------------------------------------------


def _echo_json(obj):
    """Print obj as strict JSON: NaN and infinities (a model whose outputs overflow gives them)
    become null, named under "non_finite" and in a warning on stderr."""
    from tinydae.safety import dumps, json_safe

    replaced = json_safe(obj)[1]
    if replaced:
        more = f" and {len(replaced) - 5} more" if len(replaced) > 5 else ""
        click.echo(f"warning: {len(replaced)} values are NaN or infinite and are written as null: "
                   f"{', '.join(replaced[:5])}{more}", err=True)
    click.echo(dumps(obj, indent=2))


def _run_chains(checkpoint, start, n, steps, chain_corruption, sampler, final, step_size, levels, keep_every,
                seed, batch_size, data, key, limit, rescale, out, h5, overwrite, backend, as_json, verb, option,
                score=None, score_data=None):
    """sample and improve: tinydae.workflows.run_chains, then its summary printed."""
    from tinydae.workflows import run_chains

    # The default outputs (runs/sample.png, runs/improve.png) are tinydae's scratch files: a later
    # run replaces them.  A file the user named is replaced only with --overwrite.
    ctx = click.get_current_context(silent=True)
    default_out = ctx is not None and ctx.get_parameter_source("out") == ParameterSource.DEFAULT
    comm = _comm(ctx) if ctx is not None else tinydae.distributed.SingleProcess()
    if comm.collective:
        comm.check_same("the command's options", ctx.params, "; start every rank with the same command")
        backend = _gpu_or_cpu(comm, backend)
    summary, result = run_chains(checkpoint, start, n, steps, chain_corruption, sampler, final, step_size, levels,
                                 keep_every, seed, batch_size, data, key, limit, rescale, out, h5, overwrite,
                                 default_out, backend, option, log=_stderr, comm=comm, score=score,
                                 score_data=score_data)
    if as_json:
        _echo_json(summary)
        return
    first = f"{result.mean_abs_change[0]:.4f}" if steps else "-"
    last = f"{result.mean_abs_change[-1]:.4f}" if steps else "-"
    how = f"corruption {summary['corruption']}"
    if summary["sigmas"]:  # langevin, annealed: the level(s) the score is read at
        sigmas = summary["sigmas"]
        ladder = f"{sigmas[0]:g}" + (f"..{sigmas[-1]:g}" if len(sigmas) > 1 else "")
        how = (f"sigma {ladder}, step size {summary['step_size']:g}" if summary["step_size"] is not None
               else f"sigma {ladder}, one level per step")
    ranks = f" on {comm.size} process{'es' * (comm.size > 1)}" if comm.collective else ""
    click.echo(f"{verb} {summary['chains']} chains x {steps} steps from {summary['start']} ({sampler} sampler, "
               f"{how}) in {summary['seconds']:.1f} s{ranks}; mean |x_t - x_(t-1)| per pixel: first step {first}, "
               f"last {last}")
    if summary["png"]:
        click.echo(f"strip of {len(result.trajectory)} chains at steps {result.kept_steps}: {summary['png']}")
    elif out:
        click.echo(f"no PNG: the model's {result.samples.shape[1]} values per sample are not an image (its "
                   f"input shape is not recorded and D is not a square)")
    if h5:
        click.echo(f"chain: {h5}")
    if "score" in summary:
        sc = summary["score"]
        click.echo(f"score in {score}'s features: FID {sc['fid']:.2f} against {sc['n_reference']:,} reference rows, "
                   f"inception score {sc['inception_score']:.2f}, class entropy {sc['class_entropy']:.3f} nats "
                   f"({sc['n_samples']:,} samples)")


def _chain_options(default_start, default_steps, start_help, default_out):
    def wrap(f):
        for opt in reversed([
            click.argument("checkpoint", type=click.Path(dir_okay=False)),
            click.option("--start" if default_start == "noise" else "--from", "start", default=default_start,
                         show_default=True, help=start_help),
            click.option("--n", "n", type=int, default=64, show_default=True, help="Number of chains."),
            click.option("--steps", type=int, default=default_steps, show_default=True),
            click.option("--chain-corruption", default="model", show_default=True,
                         help="model (the training corruption), gaussian:S, gaussian:LO..HI, masking:P, "
                              "salt_pepper:P or none; for langevin/annealed the level(s) of the score."),
            click.option("--sampler", default="mean", show_default=True,
                         help="mean: x <- r(c(x)), the paper's chain (mode-seeking); bernoulli: the GSN chain "
                              "x ~ Bernoulli(r(c(x))); langevin: Langevin dynamics on the score "
                              "(r(x) - x) / sigma^2; annealed: Langevin over a noise ladder (needs a model "
                              "trained with --corruption gaussian:LO..HI); ddim: deterministic denoising down "
                              "the same range, one level per step."),
            click.option("--final", default=None,
                         help="mean (default): show E[x | state] (r(c(x)) for bernoulli, the final denoising "
                              "r(x) for langevin/annealed/ddim); sample: show the chain's states themselves."),
            click.option("--step-size", type=float, default=None,
                         help="langevin/annealed: eta as a fraction of sigma^2, in (0, 1] [default: 0.5; 0.1 is more "
                              "accurate on long chains]."),
            click.option("--levels", type=int, default=None, help="annealed: noise levels in the ladder [default: 10]."),
            click.option("--keep-every", type=int, default=5, show_default=True,
                         help="Keep (and draw) every k-th state."),
            click.option("--seed", type=SEED, default=0, show_default=True),
            click.option("--batch-size", type=int, default=1024, show_default=True),
            click.option("--data", default=None, help="Data for the pca/pixels baselines (default: the "
                                                      "checkpoint's training data)."),
            click.option("--key", default=None, help="Array name / dataset path in a .npz or .h5 file."),
            click.option("--limit", type=int, default=None, help="Rows of --data to use."),
            click.option("--rescale", is_flag=True, help="Scale a FILE of samples linearly to [0, 1] (min-max)."),
            click.option("--out", default=f"runs/{default_out}.png", show_default=True,
                         help=f"PNG strip of {KEEP_CHAINS} chains at the kept steps."),
            click.option("--h5", default=None, help="Also write the chain to this HDF5 file."),
            click.option("--score", default=None, metavar="CLASSIFIER",
                         help="Score the final samples in this classifier's features (classifier train): FID "
                              "against --score-data, inception score, class entropy; with several processes each "
                              "scores its own chains and one reduction joins them."),
            click.option("--score-data", default=None,
                         help="Reference rows for --score's FID [default: the checkpoint's training data]."),
            click.option("--overwrite", is_flag=True, help="Replace existing --out and --h5 files."),
            click.option("--backend", type=click.Choice(["cpu", "cuda", "auto", "numpy"]), default="auto",
                         show_default=True, help="numpy: the NumPy reference kernels, no numba."),
            click.option("--json", "as_json", is_flag=True),
        ]):
            f = opt(f)
        return f
    return wrap


@cli.command()
@_chain_options("noise", 50, "noise | bernoulli | pca | pixels | FILE (.npy, .npz, .h5 or IDX samples).", "sample")
def sample(**kw):
    """Run sampling chains from CHECKPOINT's DAE: x_(t+1) = r(c(x_t)) (--sampler mean), or a sampler
    that really samples (bernoulli, langevin, annealed)."""
    _run_chains(**kw, verb="ran", option="--start")


@cli.command()
@_chain_options("pca", 10, "pca | pixels (built-in weak generators) | FILE of samples to improve.", "improve")
def improve(**kw):
    """Improve samples of another model by iterating CHECKPOINT's DAE on them."""
    _run_chains(**kw, verb="improved", option="--from")


@cli.command()
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False))
@click.option("--data", default=None, help="Held-out data (default: the checkpoint's validation split).")
@click.option("--key", default=None)
@click.option("--limit", type=int, default=None)
@click.option("--n-samples", type=int, default=500, show_default=True)
@click.option("--steps", type=int, default=20, show_default=True)
@click.option("--start", default="noise", show_default=True, help="Chain start: noise | bernoulli | pca | pixels.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--theorem", is_flag=True, help="Instead: train BCE and MSE DAEs on gmm data and compare "
                                              "(r(x) - x)/sigma^2 with the exact score.")
@click.option("--dims", default="2,16", show_default=True, help="gmm dimensions for --theorem.")
@click.option("--sigma", type=float, default=0.1, show_default=True, help="Corruption for --theorem.")
@click.option("--epochs", type=int, default=10, show_default=True, help="Training epochs for --theorem.")
@click.option("--backend", type=click.Choice(["cpu", "cuda", "auto", "numpy"]), default="auto", show_default=True,
              help="numpy: the NumPy reference kernels, no numba.")
@click.option("--json", "as_json", is_flag=True)
def evaluate(checkpoint, data, key, limit, n_samples, steps, start, seed, theorem, dims, sigma, epochs,
             backend, as_json):
    """Reconstruction BCE, Parzen log-likelihood and precision/recall of chain samples; or --theorem."""
    import numpy as np

    from tinydae import safety
    from tinydae.science import experiments
    from tinydae.sampling import START_KINDS

    if theorem:
        try:
            dim_list = [int(d) for d in dims.split(",")]
        except ValueError:
            raise ConfigError(f"--dims takes integers like 2,16, got {dims!r}") from None
        import math

        if not (math.isfinite(sigma) and sigma > 0):
            raise ConfigError(f"--sigma must be a finite number > 0 (the Gaussian corruption's level), got {sigma}")
        if epochs < 1 or min(dim_list) < 1:
            raise ConfigError("--epochs and --dims must be >= 1")
        from tinydae.science import densities

        cfg = densities.claim1_config("gmm", sigmas=(sigma,), dims=tuple(dim_list), epochs=epochs, seeds=(seed,))
        for d in dim_list:  # every dimension's size before the first one trains
            safety.check_memory(densities.claim1_memory(d, densities.claim1_hidden(cfg, d), cfg["n_train"],
                                                        cfg["n_eval"]),
                                f"the --theorem check on gmm:{d}", "use smaller --dims")
        out = densities.run_claim1("gmm", backend=backend, log=lambda m: click.echo(m, err=True), **{
            k: cfg[k] for k in ("sigmas", "dims", "epochs", "seeds")})
        if as_json:
            _echo_json(out)
            return
        click.echo(f"(r(x) - x)/sigma^2 vs grad log p_sigma(x), sigma = {sigma}, {cfg['n_eval']:,} held-out points "
                   f"(corrupted: x + sigma eps), seed {seed}")
        click.echo(f"{'data':8s} {'method':15s} {'cos mean':>9s} {'slope':>7s} {'rel err median':>15s}")
        for t in out:
            for method, r in t["results"]["corrupted"][f"{sigma:g}"].items():
                r = {k: v["mean"] for k, v in r["all"].items()}
                click.echo(f"gmm:{t['dim']:<4d} {method:15s} {r['cosine_mean']:>9.3f} {r['slope']:>7.3f} "
                           f"{r['rel_error_median']:>15.3f}")
        return
    if checkpoint is None:
        raise ConfigError("evaluate needs a CHECKPOINT (or --theorem)")
    if start not in START_KINDS:
        raise ConfigError(f"--start {start}: choose one of {', '.join(START_KINDS)}")
    if n_samples < 4 or steps < 0:  # k-NN precision/recall (k = 3) needs 4 samples
        raise ConfigError("--n-samples must be >= 4 and --steps >= 0")
    ckpt = _load_checkpoint(checkpoint, optimizer=False)
    model = tinydae.restore_model(ckpt, backend=backend)
    if data:
        held = tinydae.load_dataset(data, key=key, limit=limit)
    else:
        full = _training_data(ckpt, None, None, None)
        held = full.split(ckpt.train_config.get("val_fraction", 0.1), seed=ckpt.train_config.get("seed", 0))[1]
    if held.dim != model.input_dim:
        raise ConfigError(f"data rows have {held.dim} values, the model expects {model.input_dim}")
    if len(held) < 8:
        raise ConfigError(f"need at least 8 held-out rows, got {len(held)}")
    fix = "use a smaller --n-samples, fewer --steps or a smaller --limit"
    safety.check_memory(experiments.evaluate_memory(model, n_samples, steps, len(held), start),
                        f"evaluating {n_samples:,} chains of {steps:,} steps on {len(held):,} rows", fix)
    train = _training_data(ckpt, None, None, None).x if start in ("pca", "pixels") else None
    # NaN chains end in one error line from evaluate_checkpoint, not NumPy's RuntimeWarnings first
    with safety.out_of_memory("evaluating", fix), np.errstate(over="ignore", invalid="ignore"):
        r = experiments.evaluate_checkpoint(model, held, n_samples, steps, start, seed, train)
    if as_json:
        _echo_json(r)
        return
    rec = r["reconstruction"]
    click.echo(f"{len(held)} held-out rows; reconstruction BCE: denoising {rec['val_bce_denoise']:.2f}, "
               f"clean {rec['val_bce_clean']:.2f} nats/example")
    click.echo(f"{'samples':28s} {'Parzen LL':>10s} {'bandwidth':>10s} {'precision':>10s} {'recall':>7s}")
    for name, q in ((f"start ({r['start_kind']})", r["start"]), (f"after {steps} chain steps", r["chain"])):
        click.echo(f"{name:28s} {q['parzen_ll']:>10.1f} {q['bandwidth']:>10.3f} {q['precision']:>10.3f} "
                   f"{q['recall']:>7.3f}")


@cli.command()
@click.option("--quick", is_flag=True, help="Smaller everything (2 seeds, small DAEs, 800 samples, 50 steps; "
                                            "labelled QUICK in the report): about 1 min instead of about 60 min for the "
                                            "full MNIST run on 2 CPU cores (measured, 2026-12-03).")
@click.option("--data", default="glyphs", show_default=True,
              help="Image data: glyphs (built-in, labelled) or an image file (e.g. MNIST IDX) with --labels.")
@click.option("--labels", default=None, help="Labels file of --data, one class per row (e.g. t10k-labels-idx1-ubyte.gz); "
                                             "required for a file: sample quality is measured in the features of a "
                                             "classifier trained on them.")
@click.option("--out", default="runs/reproduce", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace the report already in --out.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="The data split and the classifier; seeds SEED, SEED+1, ... train the DAEs and run the chains.")
@click.option("--backend", type=click.Choice(["cpu", "cuda", "auto"]), default="auto", show_default=True)
def reproduce(quick, data, labels, out, seed, backend, overwrite):
    """Measure the paper's three claims (claim 1 on a known density; chains from noise and from PCA
    samples, four samplers, 3 seeds, feature-space figures beside their floor, headline steps chosen
    on validation rows) and write OUT/report.md, OUT/report.json, PNG strips, and each run's headline
    samples (.npz) with a grid of them."""
    from tinydae import safety
    from tinydae.science import experiments

    safety.check_output_dir(out, "--out")  # before claim 1: a bad --out would waste all of it
    found = [name for name in experiments.output_files() if os.path.lexists(os.path.join(out, name))]
    if found and not overwrite:  # the strips, samples and grids too: any of them would be replaced
        what = "a report" if {"report.md", "report.json"} & set(found) else "files reproduce writes"
        raise ConfigError(f"--out {out} already holds {what} ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}); "
                          f"pass --overwrite to replace them, or choose another --out")
    command = ("python cli.py reproduce" + (" --quick" if quick else "") + (f" --data {data}" if data != "glyphs" else "")
               + (f" --labels {labels}" if labels else "") + (f" --seed {seed}" if seed else ""))
    experiments.reproduce(out, quick=quick, data=data, labels=labels, backend=backend, seed=seed,
                          log=lambda m: click.echo(m, err=True), command=command)
    click.echo(f"report: {os.path.join(out, 'report.md')}")


def _load_bench(name):
    """bench/<name>.py from the source checkout (benchmarks are not installed)."""
    import importlib.util
    from pathlib import Path

    path = Path(tinydae.__file__).resolve().parents[1] / "bench" / f"{name}.py"
    if not path.exists():
        raise ConfigError(f"benchmarks live in the source checkout (bench/{name}.py), which this "
                          "installation does not have; run from a clone of tinydae")
    spec = importlib.util.spec_from_file_location(f"tinydae_bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cli.group()
def bench():
    """Benchmarks; tables on the terminal, results saved to bench/results/<device>.json only with
    --save (the committed figures stay as they are), or to a file of your own with --out."""


def _result_options(f):
    """--save (into bench/results/, which the README's tables come from), --out FILE, --json."""
    f = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(f)
    f = click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")(f)
    f = click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
                     help="Also write the result as JSON to this file.")(f)
    return click.option("--save/--no-save", default=False, show_default=True,
                        help="Write the result into bench/results/<device>.json (the README's source).")(f)


def _check_out(out_file, overwrite):
    if out_file is not None:
        from tinydae.safety import check_output_file

        check_output_file(out_file, "--out", overwrite)  # before minutes of timing, not after


def _emit(mod, backend, section, result, save, out_file, as_json):
    """Save where asked, then print: the JSON, or where it went."""
    from tinydae.safety import dumps

    path = mod.save_section(tinydae.get_backend(backend), section, result) if save else None
    text = dumps(dict(result, saved=path), indent=2, default=str)
    if out_file is not None:
        tinydae.checkpoint.atomic_write(out_file, lambda f: f.write(text.encode() + b"\n"))
    if as_json:
        click.echo(text)
        return
    for where in (path, out_file):
        if where:
            click.echo(f"saved {where}")


@bench.command("kernels")
@click.option("--backend", type=click.Choice(["cpu", "cuda", "auto"]), default="auto", show_default=True)
@click.option("--sizes", default="1M,16M", show_default=True, help="Element counts, e.g. 1M,16M.")
@click.option("--repeats", type=int, default=20, show_default=True)
@_result_options
def bench_kernels(backend, sizes, repeats, save, out_file, overwrite, as_json):
    """Each fused kernel: time, GB/s, fraction of copy bandwidth, x NumPy reference, x PyTorch."""
    mod = _load_bench("bench_kernels")
    try:
        size_list = [mod.parse_size(s) for s in sizes.split(",")]
    except ValueError:
        raise ConfigError(f"--sizes takes element counts from 1 to {mod.MAX_SIZE:,} like 4K,1M,16M, got "
                          f"{sizes!r}") from None
    if repeats < 1:
        raise ConfigError("--repeats must be positive")
    from tinydae import safety

    safety.check_memory(mod.memory(max(size_list)), f"bench kernels at {max(size_list):,} elements",
                        "use smaller --sizes")
    _check_out(out_file, overwrite)
    if not as_json:
        click.echo(mod.HEADER)
    result = mod.run(backend, size_list, repeats, log=(lambda line: None) if as_json else click.echo)
    if not as_json:
        for line in mod.format_table(result).splitlines():
            if line.startswith(("kernels on", "copy", "launch")):
                click.echo(line)
    _emit(mod, backend, "kernels", result, save, out_file, as_json)


def _bench_run(name, section, backend, as_json, save, out_file, overwrite, **kwargs):
    _check_out(out_file, overwrite)
    mod = _load_bench(name)
    if not as_json:
        click.echo(mod.HEADER)
    result = mod.run(backend, log=(lambda line: None) if as_json else click.echo, **kwargs)
    if not as_json:
        click.echo(f"{result['device']} ({result['backend']}), PyTorch {result['torch'] or 'not installed'}, "
                   f"JAX {result.get('jax') or 'not installed'}")
    _emit(mod, backend, section, result, save, out_file, as_json)


@bench.command("train")
@click.option("--backend", type=click.Choice(["cpu", "cuda", "auto"]), default="auto", show_default=True)
@click.option("--batches", default="64,256,1024", show_default=True)
@click.option("--repeats", type=int, default=20, show_default=True)
@click.option("--compile/--no-compile", "compile_peer", default=True, show_default=True,
              help="Also time torch.compile of the whole step (slow to compile on the CPU).")
@click.option("--arch", "arch_spec", default="mlp:1000,1000", show_default=True,
              help="The DAE's architecture on 28x28 images, e.g. conv:32,64 (JAX runs for mlp only).")
@_result_options
def bench_train(backend, batches, repeats, compile_peer, arch_spec, save, out_file, overwrite, as_json):
    """Time per training step vs PyTorch (eager Adam for-loop / foreach / fused, torch.compile of
    the whole step), JAX (jit of the whole step) and a lower bound (GEMM floor + Adam's bytes)."""
    arch_spec = tinydae.arch.canonical(arch_spec)
    tinydae.model.check_config(784, arch=arch_spec)  # a spec that does not fit 28x28 images: one error line
    if arch_spec.startswith("unet:"):
        raise ConfigError("bench train times stacks of layers (mlp:..., conv:...) against the same stack in "
                          "PyTorch; no PyTorch peer of the U-Net is written yet")
    try:
        sizes = [int(b) for b in batches.split(",")]
    except ValueError:
        raise ConfigError(f"--batches takes sizes like 64,256,1024, got {batches!r}") from None
    if repeats < 1 or min(sizes) < 1:
        raise ConfigError("--repeats and --batches must be positive")
    _bench_run("bench_train", _load_bench("bench_train").section(arch_spec), backend, as_json, save, out_file, overwrite, batches=sizes, repeats=repeats,
               compile_peer=compile_peer, arch=arch_spec)


@bench.command("chain")
@click.option("--backend", type=click.Choice(["cpu", "cuda", "auto"]), default="auto", show_default=True)
@click.option("--chains", default=None, help="chains:steps pairs, e.g. 64:100,1024:100,16384:10.")
@click.option("--repeats", type=int, default=5, show_default=True)
@click.option("--compile/--no-compile", "compile_peer", default=True, show_default=True,
              help="Also time torch.compile of the chain step (slow to compile on the CPU).")
@_result_options
def bench_chain(backend, chains, repeats, compile_peer, save, out_file, overwrite, as_json):
    """Sampling-chain throughput vs PyTorch (eager, torch.compile) and JAX (jit) chains and the GEMM-only floor."""
    if chains is not None:
        try:
            valid = all(int(a) > 0 and int(b) > 0 for a, b in (c.split(":") for c in chains.split(",")))
        except ValueError:  # not a number, or not one colon per pair
            valid = False
        if not valid:
            raise ConfigError(f"--chains takes chains:steps pairs like 64:100,1024:100, got {chains!r}")
    if repeats < 1:
        raise ConfigError("--repeats must be positive")
    _bench_run("bench_chain", "chain", backend, as_json, save, out_file, overwrite, sizes=chains, repeats=repeats,
               compile_peer=compile_peer)


@bench.command("scale")
@click.option("--ranks", default="1,2", show_default=True, help="Process counts to run under mpiexec, e.g. 1,2,4.")
@click.option("--batch", type=int, default=256, show_default=True,
              help="Rows per step: the global batch (strong scaling) and the rows per rank (weak).")
@click.option("--steps", type=int, default=20, show_default=True, help="Timed steps per case.")
@click.option("--repeats", type=int, default=20, show_default=True, help="Timed all-reduces per buffer size.")
@click.option("--arch", "archs", default="mlp:1000;conv:32,64", show_default=True,
              help="Architectures on 28x28 images, separated by ';'.")
@click.option("--buckets", default="0,1", show_default=True,
              help="Bucket sizes in MiB (train --bucket-mb) whose steps are compared with one all-reduce "
                   "after backward, on R > 1; '' for none.")
@_result_options
def bench_scale(ranks, batch, steps, repeats, archs, buckets, save, out_file, overwrite, as_json):
    """Data-parallel training on R processes (mpiexec -n R, needs the mpi extra): compute and
    all-reduce time per step, strong and weak scaling, the all-reduce fitted as alpha + beta *
    bytes, and a model of the all-reduce for N GPUs on NVLink and InfiniBand."""
    try:
        rank_list = [int(r) for r in ranks.split(",")]
    except ValueError:
        raise ConfigError(f"--ranks takes process counts like 1,2,4, got {ranks!r}") from None
    if min(rank_list) < 1 or batch < 1 or steps < 1 or repeats < 1:
        raise ConfigError("--ranks, --batch, --steps and --repeats must be positive")
    if batch < max(rank_list):
        raise ConfigError(f"--batch {batch} is smaller than {max(rank_list)} ranks: each needs a row")
    try:
        bucket_list = [float(b) for b in buckets.split(",")] if buckets.strip() else []
    except ValueError:
        raise ConfigError(f"--buckets takes sizes in MiB like 0,1,4, got {buckets!r}") from None
    if any(not 0 <= b < math.inf for b in bucket_list):
        raise ConfigError(f"--buckets must be sizes in MiB >= 0, got {buckets!r}")
    arch_list = [tinydae.arch.canonical(a) for a in archs.split(";")]
    for spec in arch_list:
        tinydae.model.check_config(784, arch=spec, input_shape=(28, 28, 1))
    import importlib.util

    if importlib.util.find_spec("mpi4py") is None:
        raise ConfigError("bench scale runs several processes with mpi4py, which is not installed: "
                          "pip install -e \".[mpi]\"")
    _check_out(out_file, overwrite)
    mod = _load_bench("bench_scale")
    if not as_json:
        click.echo(mod.HEADER)
    result = mod.run(rank_list, batch, steps, repeats, arch_list, log=(lambda line: None) if as_json else _stderr,
                     buckets=bucket_list)
    result.update(device=tinydae.backend.cpu_name(), backend="cpu")
    if not as_json:
        click.echo(mod.format_table(result))
    _emit(mod, "cpu", "scale", result, save, out_file, as_json)


@bench.command("launch")
@click.option("--backend", type=click.Choice(["cuda"]), default="cuda", show_default=True,
              help="Kernel launches are a GPU cost: cuda only.")
@click.option("--repeats", type=int, default=20, show_default=True, help="Timed blocks per contender.")
@click.option("--launches", type=int, default=200, show_default=True, help="Launches per timed block.")
@_result_options
def bench_launch(backend, repeats, launches, save, out_file, overwrite, as_json):
    """Host microseconds per CUDA kernel launch: tinydae's CuPy and numba launchers, a raw
    CuPy kernel and a CuPy ElementwiseKernel, on the same CuPy arrays (needs a GPU)."""
    if repeats < 1 or launches < 1:
        raise ConfigError("--repeats and --launches must be positive")
    be = tinydae.get_backend(backend)  # no GPU: one error line, exit 2, before any output
    _check_out(out_file, overwrite)
    mod = _load_bench("bench_launch")
    if not as_json:
        click.echo(mod.HEADER)
    result = mod.run(be, repeats=repeats, launches=launches, log=(lambda line: None) if as_json else click.echo)
    if not as_json:
        lines = mod.format_table(result).splitlines()
        click.echo("\n".join([lines[0]] + [line for line in lines if line.startswith("  ")]))
    _emit(mod, be, "launch", result, save, out_file, as_json)


@bench.command("all")
@click.option("--backend", type=click.Choice(["cpu", "cuda", "auto"]), default="auto", show_default=True)
@click.option("--save/--no-save", default=False, show_default=True,
              help="Write every section into bench/results/<device>.json.")
@click.pass_context
def bench_all(ctx, backend, save):
    """kernels, launch (on a GPU), train and chain with their defaults."""
    common = dict(save=save, out_file=None, overwrite=False, as_json=False)
    ctx.invoke(bench_kernels, backend=backend, sizes="1M,16M", repeats=20, **common)
    if tinydae.get_backend(backend).name == "cuda":
        ctx.invoke(bench_launch, backend="cuda", repeats=20, launches=200, **common)
    ctx.invoke(bench_train, backend=backend, batches="64,256,1024", repeats=20, compile_peer=True, **common)
    ctx.invoke(bench_chain, backend=backend, chains=None, repeats=3, **common)


# ----------------------------------------------------------------------------------------
# The feature-space classifier: trained once per data set, it judges samples in its features
# ----------------------------------------------------------------------------------------


@cli.group("classifier")
def classifier_group():
    """A small classifier (dense or convolutional) whose penultimate features judge samples: FID, KID, classifier IS,
    class entropy, precision/recall, density/coverage, 1-NN test and novelty, each beside its
    real-vs-real floor (pixel-space Parzen and k-NN figures fail simple sanity checks)."""


@classifier_group.command("train")
@click.option("--data", default="glyphs", show_default=True,
              help="'glyphs' (built-in, labelled) or an image file: IDX (.gz or raw), .npy, .npz, .h5")
@click.option("--labels", default=None, help="Labels of --data, one integer class per row: IDX (e.g. "
                                             "t10k-labels-idx1-ubyte.gz), .npz or .h5.")
@click.option("--key", default=None, help="Array name in a .npz, or dataset path in a .h5, of --data.")
@click.option("--labels-key", default=None, help="The same for --labels.")
@click.option("--limit", type=int, default=None, help="Use only the first N examples.")
@click.option("--rescale", is_flag=True, help="Scale data linearly to [0, 1] (min-max).")
@click.option("--arch", "arch_spec", default=None,
              help="mlp:256,128 | conv:32,64,fc128 (convolutions, then dense layers; the last layer before "
                   "the logits gives the features).  [default: mlp:256,128]")
@click.option("--hidden", default=None, help="Shorthand for --arch mlp:WIDTHS; the last is the feature width.")
@click.option("--epochs", type=int, default=15, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Adam, cosine-decayed to 0.")
@click.option("--val-fraction", type=float, default=0.1, show_default=True,
              help="Held out to measure the accuracy saved with the classifier.")
@click.option("--augment/--no-augment", default=True, show_default=True, help="Shift images by up to 2 pixels.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", default="runs/classifier.h5", show_default=True, help="The classifier file to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary, no progress.")
def classifier_train(data, labels, key, labels_key, limit, rescale, arch_spec, hidden, epochs, batch_size, lr,
                     val_fraction, augment, seed, out, overwrite, as_json):
    """Train the feature-space classifier on labelled data and save it to OUT."""
    from tinydae import safety
    from tinydae.classifier import save_classifier, train_classifier

    if arch_spec is not None and hidden is not None:
        raise ConfigError("give --arch or --hidden (shorthand for --arch mlp:WIDTHS), not both")
    spec = (tinydae.arch.canonical(arch_spec) if arch_spec is not None
            else tinydae.arch.mlp_spec(parse_hidden(hidden if hidden is not None else "256,128")))
    if epochs < 1 or batch_size < 1 or not lr > 0 or not 0 < val_fraction < 1:
        raise ConfigError("--epochs and --batch-size must be >= 1, --lr > 0 and --val-fraction in (0, 1)")
    safety.check_output_file(out, "--out", overwrite, inputs=[("--data", data), ("--labels", labels)])  # before work
    ds = tinydae.load_dataset(data, key=key, limit=limit, rescale=rescale, labels=labels, labels_key=labels_key,
                              seed=seed)  # seed: the glyphs that train --seed draws
    if ds.labels is None:
        raise ConfigError(f"--data {data} has no labels; pass --labels with its labels file "
                          f"(e.g. t10k-labels-idx1-ubyte.gz for MNIST's t10k-images-idx3-ubyte.gz)")

    def progress(epoch, row):
        if not as_json:
            click.echo(f"epoch {epoch}/{epochs}  train loss {row['train_loss']:.4f}  held-out accuracy "
                       f"{row['accuracy']:.4f}", err=True)

    model = train_classifier(ds, arch=spec, epochs=epochs, batch_size=batch_size, lr=lr,
                             val_fraction=val_fraction, augment=augment, seed=seed, progress=progress)
    model.info["source"] = dict(data=_data_source(data), labels=labels and os.path.abspath(labels), key=key,
                                labels_key=labels_key, limit=limit, rescale=rescale)
    save_classifier(out, model)
    summary = dict(out=out, classifier=repr(model), **{k: v for k, v in model.info.items() if k != "history"})
    if as_json:
        _echo_json(summary)
        return
    click.echo(f"{model!r}: held-out accuracy {model.info['accuracy']:.4f} on {model.info['n_heldout']:,} rows "
               f"(chance {model.info['chance']:.3f}), trained on {model.info['n_train']:,} rows of "
               f"{model.info['data']} in {model.info['seconds']:.1f} s; saved {out}")


def _samples_key(path, key):
    """--samples-key, or 'samples' for an HDF5 file that holds one (sample --h5 writes several
    datasets) or an .npz that holds one (reproduce's headline samples hold `seed` and `step` too)."""
    if key is None and str(path).lower().endswith(".npz") and os.path.isfile(path):
        import numpy as np

        try:
            with np.load(path) as f:
                return "samples" if "samples" in f.files else None
        except (OSError, ValueError):
            return None  # load_dataset says what is wrong with the file
    if key is None and str(path).lower().endswith((".h5", ".hdf5")) and os.path.isfile(path):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                return "samples" if isinstance(f.get("samples"), h5py.Dataset) else None
        except OSError:
            return None  # load_dataset says what is wrong with the file
    return key


@classifier_group.command("evaluate")
@click.argument("classifier_file", metavar="CLASSIFIER", type=click.Path(dir_okay=False))
@click.argument("samples", type=click.Path(dir_okay=False))
@click.option("--samples-key", default=None, help="Array name / dataset path of SAMPLES in a .npz or .h5 "
                                                  "(default: 'samples' where the file has one: sample --h5, "
                                                  "reproduce's .npz).")
@click.option("--data", default=None, help="Real data (default: the data the classifier was trained on).")
@click.option("--labels", default=None, help="Labels of --data, for the feature map's accuracy check.")
@click.option("--key", default=None)
@click.option("--labels-key", default=None)
@click.option("--limit", type=int, default=None)
@click.option("--val-fraction", type=float, default=0.1, show_default=True,
              help="Held-out fraction of --data: the DAE's train --val-fraction.")
@click.option("--split-seed", type=SEED, default=0, show_default=True,
              help="The DAE's train --seed: with --val-fraction it picks the rows the DAE never saw.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the subsets and KID.")
@click.option("--json", "as_json", is_flag=True)
def classifier_evaluate(classifier_file, samples, samples_key, data, labels, key, labels_key, limit, val_fraction,
                        split_seed, seed, as_json):
    """Judge SAMPLES in CLASSIFIER's feature space, every figure beside its real-vs-real floor.

    --data is split as train splits it (--val-fraction, --split-seed): its training part is what
    novelty compares with; its held-out part is cut in two halves, the real reference and the
    held-out reals that give the floor.  n = min(samples, half) rows of each are used.  With the
    defaults (and classifier train's defaults) the classifier held out the same rows, so neither it
    nor the DAE has seen the reals that the samples are compared with.
    """
    import numpy as np

    from tinydae.classifier import load_classifier
    from tinydae.science.features import FIGURES, feature_report

    if not 0 < val_fraction < 1:
        raise ConfigError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    model = load_classifier(classifier_file)
    rescale = False
    if data is None:
        source = model.info.get("source") or {}
        if source.get("data") is None:
            raise ConfigError(f"{classifier_file} does not record its data; pass --data")
        if not tinydae.data.is_builtin(source["data"]) and not os.path.exists(source["data"]):
            raise tinydae.DataError(f"{source['data']}: no such file; this is the data recorded in "
                                    f"{classifier_file}; pass --data to say where it is now")
        data, key, limit, rescale = source["data"], source.get("key"), source.get("limit"), source.get("rescale")
        labels, labels_key = (labels, labels_key) if labels else (source.get("labels"), source.get("labels_key"))
    full = tinydae.load_dataset(data, key=key, limit=limit, rescale=bool(rescale), labels=labels,
                                labels_key=labels_key, seed=split_seed)  # the glyphs of the DAE's train --seed
    fake = tinydae.load_dataset(samples, key=_samples_key(samples, samples_key), key_option="--samples-key")
    for name, d in (("--data", full), ("SAMPLES", fake)):
        if d.dim != model.input_dim:
            raise ConfigError(f"{name} rows have {d.dim} values, the classifier expects {model.input_dim}")
    train, held = full.split(val_fraction, seed=split_seed)
    half = len(held) // 2
    if min(half, len(fake)) < 8:
        raise ConfigError(f"need at least 8 samples and 16 held-out rows, got {len(fake)} and {len(held)}; "
                          f"use more data or a larger --val-fraction")
    order = np.random.default_rng([seed, 0x4EA1]).permutation(len(held))
    real, holdout = held.subset(order[:half]), held.subset(order[half:2 * half])
    with np.errstate(over="ignore", invalid="ignore"):
        r = feature_report(fake.x, real.x, holdout.x, model, train=train.x, seed=seed,
                           holdout_labels=holdout.labels, image_shape=full.image_shape)
    r.update(classifier=classifier_file, samples_file=samples, data=full.name, n_train=len(train),
             n_heldout=len(held))
    for problem in r["check"]["problems"]:
        click.echo(f"warning: the feature map may be useless: {problem}", err=True)
    if as_json:
        _echo_json(r)
        return
    accuracy = model.info.get("accuracy")
    click.echo(f"feature map: {classifier_file}, {model!r}"
               + (f", held-out accuracy {accuracy:.3f}" if accuracy is not None else "")
               + f"; check: {'ok' if r['check']['ok'] else 'FAILED'}")
    click.echo(f"n = {r['n']} rows each: samples ({len(fake):,} in {os.path.basename(samples)}) and, for the "
               f"floor, held-out reals, both against {r['n']} real rows of {full.name}; novelty against its "
               f"{len(train):,} training rows")
    click.echo(f"{'figure':28s} {'samples':>10s} {'floor':>10s}  ideal")
    for name, label, ideal in FIGURES:
        if name in r["samples"]:
            click.echo(f"{label:28s} {r['samples'][name]:>10.4g} {r['floor'][name]:>10.4g}  {ideal}")


def main():
    # Under a launcher, ranks other than 0 print nothing, click's own messages (--help, a usage
    # error) included; a rank's crash report still reaches the real stderr (Group.invoke).
    argv = " ".join(sys.argv[1:])
    off = "--distributed off" in argv or "--distributed=off" in argv or os.environ.get("TINYDAE_DISTRIBUTED") == "off"
    if tinydae.distributed.launcher_size() > 1 and tinydae.distributed.launcher_rank() != 0 and not off:
        _silence()
    try:
        cli(prog_name="tinydae")
    except KeyboardInterrupt:  # outside a command (click's parsing, the imports it triggers)
        click.echo("interrupted", err=True)
        sys.exit(130)
