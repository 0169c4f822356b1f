"""The click application behind ``python cli.py`` and the ``tinydae`` console script.

Thin: parse options, call the library, print.  A user mistake (any TinyDAEError) ends
with one line on stderr and exit code 2, never a traceback; SIGINT during training
saves a checkpoint and exits 130.
"""
import json
import os
import sys
import time

import click
from click.core import ParameterSource

import tinydae
from tinydae.errors import ConfigError, TinyDAEError

ARCH_OPTIONS = {"hidden": "hidden", "activation": "activation", "tied": "tied", "loss": "loss",
                "dtype": "dtype"}
TRAIN_OPTIONS = ("data", "key", "limit", "rescale", "val_fraction", "corruption", "optimizer",
                 "lr", "momentum", "weight_decay", "batch_size", "seed")


class Group(click.Group):
    """Turns tinydae's errors into one clear line and an exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TinyDAEError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(tinydae.__version__, prog_name="tinydae")
def cli():
    """tinydae: denoising autoencoders trained with binary cross-entropy."""


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


def _explicit(ctx, names):
    return {n for n in names if ctx.get_parameter_source(n) in
            (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}


@cli.command()
@click.option("--data", default="glyphs", show_default=True,
              help="'glyphs' (built-in, synthetic) or a file: IDX (.gz or raw), .npz, .h5")
@click.option("--key", default=None, help="Array name in a .npz, or dataset path in a .h5.")
@click.option("--limit", type=int, default=None, help="Use only the first N examples.")
@click.option("--rescale", is_flag=True, help="Scale data linearly to [0, 1] (min-max).")
@click.option("--val-fraction", type=float, default=0.1, show_default=True,
              help="Fraction held out for validation (seeded split).")
@click.option("--backend", type=click.Choice(["cpu", "cuda", "auto"]), default="auto", show_default=True)
@click.option("--kernels", "kernel_set", type=click.Choice(["fused", "reference"]), default="fused",
              show_default=True, help="Fused numba kernels, or the plain NumPy reference (CPU only).")
@click.option("--hidden", default="1000", show_default=True, help="Encoder widths, e.g. 1000,500.")
@click.option("--activation", type=click.Choice(list(tinydae.layers.HIDDEN_ACTIVATIONS)),
              default="relu", show_default=True)
@click.option("--tied/--untied", default=False, show_default=True, help="Decoder uses W^T of the encoder.")
@click.option("--loss", type=click.Choice(["bce", "mse"]), default="bce", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--corruption", default="gaussian:0.3", show_default=True,
              help="gaussian:SIGMA | masking:P | salt_pepper:P | none")
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "sgd"]), default="adam", show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--momentum", type=float, default=0.9, show_default=True, help="SGD only.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--epochs", type=int, default=10, show_default=True,
              help="Train until this many epochs are complete (with --resume: in total).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="runs/latest", show_default=True,
              help="Directory for checkpoint.h5, history.json and samples.png.")
@click.option("--checkpoint-every", type=int, default=500, show_default=True,
              help="Save a checkpoint every N steps (0: only at epoch ends).")
@click.option("--resume", type=click.Path(dir_okay=False), default=None,
              help="Continue the run saved in this checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout, no progress.")
@click.pass_context
def train(ctx, data, key, limit, rescale, val_fraction, backend, kernel_set, hidden, activation, tied, loss,
          dtype, corruption, optimizer, lr, momentum, weight_decay, batch_size, epochs, seed, out,
          checkpoint_every, resume, as_json):
    """Train a DAE; writes OUT/checkpoint.h5, OUT/history.json and OUT/samples.png."""
    opts = dict(data=data, key=key, limit=limit, rescale=rescale, val_fraction=val_fraction,
                corruption=str(tinydae.Corruption.parse(corruption)), optimizer=optimizer, lr=lr,
                momentum=momentum, weight_decay=weight_decay, batch_size=batch_size, seed=seed)
    arch = dict(hidden=list(parse_hidden(hidden)), activation=activation, tied=tied, loss=loss, dtype=dtype)
    state, ckpt = None, None
    if resume:
        ckpt = tinydae.load_checkpoint(resume)
        diffs = tinydae.checkpoint.config_differences(
            ckpt.model_config, {k: arch[k] for k in _explicit(ctx, ARCH_OPTIONS)})
        diffs += tinydae.checkpoint.config_differences(
            ckpt.train_config, {k: opts[k] for k in _explicit(ctx, TRAIN_OPTIONS)})
        if diffs:
            raise ConfigError(f"cannot resume {resume}: it differs from the options given: "
                              + "; ".join(diffs))
        opts.update({k: ckpt.train_config[k] for k in TRAIN_OPTIONS if k in ckpt.train_config})
        state = tinydae.TrainState.from_checkpoint(ckpt)
    if epochs < 1 or opts["batch_size"] < 1:
        raise ConfigError("--epochs and --batch-size must be >= 1")
    backend = tinydae.get_backend(backend, kernels=kernel_set)
    dataset = tinydae.load_dataset(opts["data"], limit=opts["limit"], rescale=opts["rescale"],
                                   key=opts["key"], seed=opts["seed"])
    train_set, val_set = dataset.split(opts["val_fraction"], seed=opts["seed"])
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
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output directory {out}: {e.strerror}") from None
    ckpt_path = os.path.join(out, "checkpoint.h5")
    steps_per_epoch = -(-len(train_set) // opts["batch_size"])
    if not as_json:
        click.echo(f"{model} on {dataset.name}: {len(train_set)} train / {len(val_set)} val, "
                   f"{opts['corruption']}, {opt}, {backend.kernel_set} kernels on {backend.device}",
                   err=True)
    progress = Progress(steps_per_epoch, epochs, enabled=not as_json)
    t0 = time.perf_counter()
    try:
        state = tinydae.fit(model, train_set, val_set if len(val_set) else None, optimizer=opt,
                            corruption=opts["corruption"], epochs=epochs,
                            batch_size=opts["batch_size"], seed=opts["seed"], state=state,
                            checkpoint_path=ckpt_path, checkpoint_every=checkpoint_every,
                            train_config=dict(opts, epochs=epochs), progress=progress)
    finally:
        progress.close()
    history_path = os.path.join(out, "history.json")
    tinydae.checkpoint.atomic_write(history_path, lambda tmp: _write_json(tmp, state.history))
    png = None
    if dataset.image_shape is not None:
        png = os.path.join(out, "samples.png")
        shown = (val_set if len(val_set) else train_set).x[:10]
        x = model.as_input(shown)
        noisy = tinydae.Corruption.parse(opts["corruption"]).apply(model.backend, x, opts["seed"], 0, 1)
        rows = [shown, model.backend.to_host(noisy), model.backend.to_host(model.reconstruct(noisy))]
        tinydae.images.save_grid(png, rows, dataset.image_shape)
    last = state.history[-1] if state.history else {}
    per_pixel = {k + "_per_pixel": v / dataset.dim for k, v in last.items() if k.startswith("val_bce")}
    summary = dict(checkpoint=ckpt_path, history=history_path, samples=png, step=state.step,
                   epochs=state.epoch, seconds=time.perf_counter() - t0, final=dict(last, **per_pixel))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        if "val_bce_denoise" in last:
            d = dataset.dim
            click.echo(f"final validation BCE: denoising {last['val_bce_denoise']:.3f} nats/example "
                       f"({last['val_bce_denoise'] / d:.5f} nats/pixel), clean reconstruction "
                       f"{last['val_bce_clean']:.3f} nats/example ({last['val_bce_clean'] / d:.5f} nats/pixel)")
        click.echo(f"checkpoint: {ckpt_path}")
        if png:
            click.echo(f"samples (rows: clean / corrupted / reconstructed): {png}")


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def info(as_json):
    """Versions, backends and devices found."""
    import importlib.metadata as md
    import platform

    versions = {"python": platform.python_version(), "tinydae": tinydae.__version__}
    for pkg in ("numpy", "numba", "h5py", "click", "pillow", "cupy-cuda12x", "cupy-cuda13x", "numba-cuda"):
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
    import kernels.cpu

    cache = kernels.cpu.cache_status()
    warm = sum(1 for v in cache.values() if v)
    report = dict(versions=versions, backends=backends,
                  cpu_kernel_cache=dict(warm=warm == len(cache), compiled=warm, kernels=len(cache),
                                        signatures=cache))
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


@cli.command()
@click.option("--input-dim", type=int, default=7, show_default=True)
@click.option("--hidden", default="5,3", show_default=True)
@click.option("--activation", default="all", show_default=True, help="One activation or 'all'.")
@click.option("--loss", default="all", show_default=True, help="bce, mse or 'all'.")
@click.option("--tied", type=click.Choice(["both", "yes", "no"]), default="both", show_default=True)
@click.option("--batch", type=int, default=4, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tol", type=float, default=1e-6, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def gradcheck(input_dim, hidden, activation, loss, tied, batch, seed, tol, as_json):
    """Finite-difference check (float64) of a small random model: max relative error per parameter."""
    import numpy as np

    from tinydae.gradcheck import check_model, random_model
    from tinydae.layers import HIDDEN_ACTIVATIONS

    acts = HIDDEN_ACTIVATIONS if activation == "all" else (activation,)
    losses = ("bce", "mse") if loss == "all" else (loss,)
    ties = {"both": (False, True), "yes": (True,), "no": (False,)}[tied]
    if batch < 1:
        raise ConfigError("--batch must be >= 1")
    rng = np.random.default_rng(seed)
    x, t = rng.random((batch, max(input_dim, 1))), rng.random((batch, max(input_dim, 1)))
    results, worst = [], 0.0
    for act in acts:
        for ls in losses:
            for ti in ties:
                model = random_model(input_dim, parse_hidden(hidden), act, ti, ls, seed)
                errors = check_model(model, x, t)
                worst = max(worst, max(errors.values()))
                results.append(dict(model=repr(model), errors=errors))
    if as_json:
        click.echo(json.dumps(dict(results=results, worst=worst, tol=tol), indent=2))
    else:
        for r in results:
            click.echo(r["model"])
            for name, err in r["errors"].items():
                click.echo(f"  {name:8s} {err:.2e}  {'ok' if err < tol else 'FAIL'}")
        click.echo(f"worst relative error {worst:.2e} (tolerance {tol:g}): {'PASS' if worst < tol else 'FAIL'}")
    if worst >= tol:
        sys.exit(1)


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
    """Benchmarks; results go to bench/results/<device>.json."""


@bench.command("kernels")
@click.option("--backend", type=click.Choice(["cpu", "cuda", "auto"]), default="auto", show_default=True)
@click.option("--sizes", default="1M,16M", show_default=True, help="Element counts, e.g. 1M,16M.")
@click.option("--repeats", type=int, default=20, show_default=True)
@click.option("--save/--no-save", default=True, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench_kernels(backend, sizes, repeats, save, as_json):
    """Each fused kernel: time, GB/s, fraction of copy bandwidth, x NumPy reference, x PyTorch."""
    mod = _load_bench("bench_kernels")
    try:
        size_list = [mod.parse_size(s) for s in sizes.split(",")]
    except ValueError:
        raise ConfigError(f"--sizes takes counts like 1M,16M, got {sizes!r}") from None
    if repeats < 1 or min(size_list) < 1:
        raise ConfigError("--repeats and --sizes must be positive")
    if not as_json:
        click.echo(mod.HEADER)
    result = mod.run(backend, size_list, repeats, log=(lambda line: None) if as_json else click.echo)
    path = mod.save_section(tinydae.get_backend(backend), "kernels", result) if save else None
    if as_json:
        click.echo(json.dumps(dict(result, saved=path), indent=2, default=str))
    else:
        for line in mod.format_table(result).splitlines():
            if line.startswith(("kernels on", "copy", "launch")):
                click.echo(line)
        if path:
            click.echo(f"saved {path}")


def main():
    cli(prog_name="tinydae")
