"""HDF5 checkpoints: everything needed to resume a run exactly.

Schema (format "tinydae-checkpoint", FORMAT_VERSION 1):

    /                 attrs: format, format_version, tinydae_version, created,
                             model_config (JSON), train_config (JSON)
    /params           (P,) float32|float64, the flat parameter buffer;
                      attrs: layout (JSON [[name, shape], ...] in buffer order)
    /optimizer        attrs: name, hyper (JSON), t;  datasets: its flat buffers (P,)
                      (m, v for adam/adamw; velocity for sgd)
    /state            attrs: step, epoch, epoch_loss_sum, epoch_examples, epoch_seconds,
                             wall_seconds, rng_seed, rng_train_corruption_counter
    /history          one 1-D dataset per column of the per-epoch history

Writes are atomic: the file is written under a temporary name in the same directory,
fsynced, then moved over the old one with os.replace, so a kill during a save leaves
the previous checkpoint intact.
"""
import datetime
import json
import os
from dataclasses import dataclass, field

import numpy as np

from tinydae.errors import CheckpointError

FORMAT = "tinydae-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    path: str
    model_config: dict
    params: np.ndarray
    layout: list
    train_config: dict = field(default_factory=dict)
    optimizer: dict | None = None
    state: dict = field(default_factory=dict)
    history: list = field(default_factory=list)


def _fsync_path(path, directory=False):
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write):
    """Call write(tmp_path), fsync it, then os.replace it onto path."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    try:
        _fsync_path(directory, directory=True)  # make the rename itself durable
    except OSError:
        pass  # some filesystems refuse to fsync a directory; the rename is still atomic


def save_checkpoint(path, model, optimizer=None, state=None, train_config=None, history=None):
    """Write model (and optimizer, training state, history) to an HDF5 file, atomically."""
    import h5py

    from tinydae import __version__

    params = model.backend.to_host(model.params)
    opt = optimizer.state_dict() if optimizer is not None else None
    state = dict(state or {})
    history = list(history if history is not None else state.pop("history", []))
    state.pop("history", None)

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["tinydae_version"] = __version__
            f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
            f.attrs["model_config"] = json.dumps(model.config)
            f.attrs["train_config"] = json.dumps(train_config or {})
            d = f.create_dataset("params", data=params)
            d.attrs["layout"] = json.dumps([[n, list(s)] for n, s in model.layout])
            if opt is not None:
                g = f.create_group("optimizer")
                g.attrs["name"] = opt["name"]
                g.attrs["hyper"] = json.dumps(opt["hyper"])
                g.attrs["t"] = opt["t"]
                for k, v in opt["buffers"].items():
                    g.create_dataset(k, data=v)
            s = f.create_group("state")
            for k, v in state.items():
                s.attrs[k] = v
            h = f.create_group("history")
            for col in (history[0].keys() if history else []):
                h.create_dataset(col, data=np.array([row[col] for row in history], np.float64))

    atomic_write(path, write)


def load_checkpoint(path):
    """Read and validate a checkpoint.  Raises CheckpointError naming the file and problem."""
    import h5py

    from tinydae.model import param_layout

    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        reason = "truncated" if "truncated" in str(e) else "not an HDF5 file, or damaged"
        raise CheckpointError(f"{path}: cannot open checkpoint ({reason}: {e})") from None
    try:
        with f:
            if f.attrs.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not a tinydae checkpoint (no '{FORMAT}' format tag)")
            version = int(f.attrs.get("format_version", -1))
            if version != FORMAT_VERSION:
                raise CheckpointError(f"{path}: checkpoint format version {version}; this tinydae "
                                      f"reads version {FORMAT_VERSION}")
            config = json.loads(f.attrs["model_config"])
            layout = [(n, tuple(s)) for n, s in json.loads(f["params"].attrs["layout"])]
            params = f["params"][()]
            optimizer = None
            if "optimizer" in f:
                g = f["optimizer"]
                optimizer = dict(name=str(g.attrs["name"]), hyper=json.loads(g.attrs["hyper"]),
                                 t=int(g.attrs["t"]), buffers={k: g[k][()] for k in g.keys()})
            state = {k: v.item() if hasattr(v, "item") else v for k, v in f["state"].attrs.items()}
            cols = {k: f["history"][k][()] for k in f["history"].keys()}
            history = [dict(zip(cols, (float(cols[c][i]) for c in cols)))
                       for i in range(len(next(iter(cols.values()))) if cols else 0)]
            train_config = json.loads(f.attrs.get("train_config", "{}"))
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: damaged or incomplete checkpoint ({type(e).__name__}: {e})") from None
    expected = param_layout(config)
    if layout != expected or params.shape != (sum(int(np.prod(s)) for _, s in expected),):
        raise CheckpointError(f"{path}: parameter layout does not match its model config {config}")
    if optimizer is not None and any(b.shape != params.shape for b in optimizer["buffers"].values()):
        raise CheckpointError(f"{path}: optimizer buffers do not match the parameter count")
    for row in history:
        for k in ("epoch", "step"):
            if k in row:
                row[k] = int(row[k])
    return Checkpoint(path, config, params, layout, train_config, optimizer, state, history)


def config_differences(saved, requested):
    """['hidden: checkpoint [1000] vs requested [500]', ...] for keys both dicts hold."""
    return [f"{k}: checkpoint {saved[k]!r} vs requested {requested[k]!r}"
            for k in requested if k in saved and saved[k] != requested[k]]


def restore_model(ckpt, backend="cpu"):
    """Checkpoint -> DAE with the saved parameters (on the given backend)."""
    from tinydae.model import DAE

    model = DAE(**ckpt.model_config, backend=backend)
    model.params[...] = model.backend.to_device(ckpt.params, dtype=model.dtype)
    model.corruption = ckpt.train_config.get("corruption")
    return model


def load_model(path, backend="cpu"):
    """Path -> DAE, the shortest way to use a trained model."""
    return restore_model(load_checkpoint(path), backend)
