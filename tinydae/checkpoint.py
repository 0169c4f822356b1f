"""HDF5 checkpoints: everything needed to resume a run exactly, and proof that it is intact.

Schema (format "tinydae-checkpoint", FORMAT_VERSION 4):

    /                 attrs: format, format_version, tinydae_version, created,
                             model_config (JSON: input_dim, input_shape, arch, activation, tied,
                             loss, dtype, seed), train_config (JSON), attrs_sha256
    /params           (P,) float32|float64, the flat parameter buffer;
                      attrs: layout (JSON [[name, shape], ...] in buffer order), sha256, attrs_sha256
    /optimizer        attrs: name, hyper (JSON), t, attrs_sha256;
                      datasets: its flat buffers (P,), each with attr sha256
                      (m, v for adam/adamw; velocity for sgd)
    /state            attrs: step, epoch, epoch_loss_sum, epoch_examples, epoch_seconds,
                             wall_seconds, rng_seed, rng_train_corruption_counter, attrs_sha256
    /history          attrs: columns (JSON list), attrs_sha256; one 1-D float64 dataset per
                      column of the per-epoch history, each with attr sha256 (version 3)

Integrity (new in version 2), checked by load_checkpoint:
  * every non-scalar, non-empty dataset is stored chunked with HDF5's Fletcher-32 filter, so
    HDF5 itself refuses to read a chunk whose bytes changed;
  * sha256 = SHA-256 of "<dtype.str> <shape>\\n" followed by the array's raw C-order bytes,
    for /params and each optimizer buffer (catches what Fletcher-32 misses, and data rewritten
    through HDF5);
  * attrs_sha256 = SHA-256 of that object's other attributes (see _attrs_digest), because
    HDF5 does not checksum attributes: a flipped byte in /state's step or the model config
    would otherwise load silently.
Version 3 (issue 19) extends the checksums to /history, so the whole file is covered, and
load_checkpoint checks every known field's type and range (train_config, /state, /optimizer,
/history, the dtype of /params): a value that passes the checksums because another program
re-stamped them is one CheckpointError naming the field.  Version-2 files load unchanged (their
/history carries no checksum).  Version 4 (issue 20) stores the architecture spec ("arch",
e.g. "conv:32,64") and the image shape in the model config, where versions 1-3 stored the hidden
widths of the one network there was (an MLP); those load as the spec "mlp:<widths>".
Parameters and optimizer buffers must be finite, on save and on load.  Version-1 files (no
checksums) still load; Checkpoint.note then says so, for the CLI to print.

Writes are atomic: the file is built in memory, written under a temporary name (PATH.tmp-PID,
PATH cut to fit the file system's name limit) in the same directory, fsynced, then moved over the
old one with os.replace, so a kill during a save leaves the previous checkpoint intact, and a
full disk is one WriteError that keeps it (see atomic_write).  The temporaries that kill -9 leaves behind are removed by the
next save into that directory (see remove_orphaned_temps).
"""
import datetime
import hashlib
import inspect
import json
import os
from dataclasses import dataclass, field

import numpy as np

from tinydae.errors import CheckpointError, ConfigError, WriteError
from tinydae.safety import name_max as _name_max

FORMAT = "tinydae-checkpoint"
FORMAT_VERSION = 4
# 1: no checksums (before issue 10); 2: /history not covered (before issue 19); 3: the model
# config names hidden widths (before issue 20: every model was an MLP)
READABLE_VERSIONS = (1, 2, 3, 4)
DAMAGED = "the file is damaged; use an earlier checkpoint"


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
    format_version: int = FORMAT_VERSION
    note: str = ""  # non-empty for a file whose integrity could not be checked (version 1)


def _fsync_path(path, directory=False):
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # it exists (another user's), or the number is no PID: leave the file alone
    return True


PID_DIGITS = 10  # the longest PID a temporary's name must leave room for


def _temp_prefix(path):
    """-> (directory, the temporaries' name prefix): BASE.tmp- where BASE is the file's name, cut
    (never lengthened) so that prefix + a PID fits the file system's name limit: a legal final
    name near 255 bytes must not fail at the end of the work for its temporary's sake."""
    directory, base = os.path.split(os.path.abspath(os.fspath(path)))
    raw = os.fsencode(base)
    room = _name_max(directory) - len(b".tmp-") - PID_DIGITS
    if len(raw) > room:  # cut bytes, not characters: surrogateescape keeps any bytes as they are
        base = os.fsdecode(raw[:max(room, 0)])
    return directory, base + ".tmp-"


def remove_orphaned_temps(path):
    """Delete the temporaries of PATH (PREFIX.tmp-PID) whose writing process no longer exists;
    returns their names.

    Such files are left by a save killed with SIGKILL (or a power cut).  A temporary whose
    process is alive belongs to a save in progress and is kept.  A PID reused by an unrelated
    process keeps its orphan until a later save: deleting too little is safe, too much is not.
    """
    directory, prefix = _temp_prefix(path)
    removed = []
    for name in os.listdir(directory):
        pid = name[len(prefix):]
        if not name.startswith(prefix) or not pid.isdigit() or int(pid) <= 0:
            continue
        if int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        try:
            os.remove(os.path.join(directory, name))
            removed.append(name)
        except OSError:
            pass  # removed by a concurrent save, or not a file: the save itself matters more
    return removed


def atomic_write(path, write):
    """write(f) fills a binary file object in memory; its bytes then go to a temporary in the
    target folder (a name that fits the file system), are fsynced, and os.replace moves them
    over `path`.  A kill leaves the previous file intact (and an orphan the next save removes).

    Building the bytes in memory first keeps libraries out of the disk's failures: HDF5 writing
    to a full disk printed pages of errors and then crashed the process (a segfault, an abort in
    free()); here every byte goes through one checked os.write.  Any OSError on the way (a full
    disk, a quota, a read-only file system, a file size limit) is a WriteError naming the path
    and the bytes needed; nothing is left behind and the previous file is kept."""
    import io

    path = os.fspath(path)
    buffer = io.BytesIO()
    write(buffer)
    data = buffer.getbuffer()
    directory, prefix = _temp_prefix(path)
    tmp = os.path.join(directory, f"{prefix}{os.getpid()}")
    try:
        os.makedirs(directory, exist_ok=True)
        remove_orphaned_temps(path)  # first, so their space is free for this save
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            done = 0
            while done < len(data):
                done += os.write(fd, data[done:])
        finally:
            os.close(fd)
        _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            kept = "the previous file is kept" if os.path.exists(path) else "nothing was written"
            raise WriteError(f"{path}: not written ({len(data):,} bytes needed): "
                             f"{e.strerror or type(e).__name__}; {kept}") from None
        raise
    finally:
        data.release()
    try:
        _fsync_path(directory, directory=True)  # make the rename itself durable
    except OSError:
        pass  # some filesystems refuse to fsync a directory; the rename is still atomic


def buffer_digest(a):
    """SHA-256 (hex) of an array's dtype, shape and raw C-order bytes."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str} {list(a.shape)}\n".encode())
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def _attrs_digest(obj):
    """SHA-256 of an HDF5 object's attributes (not the checksums), in a canonical text form.

    Computed from the values as h5py reads them back, on save and on load alike, so the
    two sides agree whatever types h5py chooses.
    """
    h = hashlib.sha256()
    for key in sorted(obj.attrs):
        if key not in ("sha256", "attrs_sha256"):
            value = np.asarray(obj.attrs[key])
            h.update(json.dumps([key, value.dtype.str, value.tolist()]).encode() + b"\n")
    return h.hexdigest()


def _create(group, name, data):
    """A dataset with a Fletcher-32 checksum; HDF5 cannot chunk (so not filter) scalars or empties."""
    data = np.asarray(data)
    checked = data.ndim > 0 and data.size > 0
    return group.create_dataset(name, data=data, fletcher32=checked)


def _stamp(f, fmt, version):
    """The attributes every tinydae HDF5 file starts with: format tag, version, who, when."""
    from tinydae import __version__

    f.attrs["format"] = fmt
    f.attrs["format_version"] = version
    f.attrs["tinydae_version"] = __version__
    f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat()


def _create_params(f, params, layout):
    """/params: the flat buffer, with its layout [[name, shape], ...] (buffer order) as JSON."""
    d = _create(f, "params", params)
    d.attrs["layout"] = json.dumps([[n, list(s)] for n, s in layout])
    return d


def _nonfinite(name, a):
    bad = int(a.size - np.count_nonzero(np.isfinite(a)))
    return f"{name} has {bad} of {a.size} values NaN or infinite" if bad else None


def save_checkpoint(path, model, optimizer=None, state=None, train_config=None, history=None):
    """Write model (and optimizer, training state, history) to an HDF5 file, atomically.

    Refuses (CheckpointError, old file kept) to write non-finite parameters or optimizer
    buffers: load_checkpoint would reject the file, so writing it would only destroy the
    previous, good checkpoint.
    """
    import h5py

    params = model.backend.to_host(model.params)
    opt = optimizer.state_dict() if optimizer is not None else None
    buffers = {"params": params}  # dataset name -> array, each given a sha256 attribute
    buffers.update({f"optimizer/{k}": v for k, v in (opt["buffers"] if opt else {}).items()})
    for name, a in buffers.items():
        problem = _nonfinite(f"/{name}", a)
        if problem:
            kept = "the previous checkpoint is kept" if os.path.exists(path) else "nothing was written"
            raise CheckpointError(f"{path}: not saved, {problem}; the model has diverged ({kept})")
    if train_config:  # what load_checkpoint would refuse must not be written (a run could not be loaded)
        _check_fields(path, "train_config", train_config, TRAIN_CONFIG_FIELDS, saving=True)
    state = dict(state or {})
    history = list(history if history is not None else state.pop("history", []))
    state.pop("history", None)

    def write(out):
        with h5py.File(out, "w") as f:
            _stamp(f, FORMAT, FORMAT_VERSION)
            f.attrs["model_config"] = json.dumps(model.config)
            f.attrs["train_config"] = json.dumps(train_config or {})
            _create_params(f, params, model.layout)
            if opt is not None:
                g = f.create_group("optimizer")
                g.attrs["name"] = opt["name"]
                g.attrs["hyper"] = json.dumps(opt["hyper"])
                g.attrs["t"] = opt["t"]
                for k, v in opt["buffers"].items():
                    _create(g, k, v)
            s = f.create_group("state")
            for k, v in state.items():
                s.attrs[k] = v
            h = f.create_group("history")
            columns = list(history[0].keys() if history else [])
            h.attrs["columns"] = json.dumps(columns)  # covered by its attrs_sha256: none can go missing
            for col in columns:
                buffers[f"history/{col}"] = np.array([row[col] for row in history], np.float64)
                _create(h, col, buffers[f"history/{col}"])
            for name, a in buffers.items():
                f[name].attrs["sha256"] = buffer_digest(a)
            for obj in (f, f["params"], f.get("optimizer"), f["state"], h):
                if obj is not None:
                    obj.attrs["attrs_sha256"] = _attrs_digest(obj)

    atomic_write(path, write)


def _read(path, dataset, sha256=True):
    """dataset's array; a Fletcher-32 or SHA-256 mismatch is one CheckpointError naming it."""
    try:
        a = dataset[()]
    except OSError as e:
        if "filter" not in str(e):  # HDF5: "filter returned failure during read"
            raise
        raise CheckpointError(f"{path}: checksum mismatch in {dataset.name}: {DAMAGED}") from None
    if sha256:
        expected = dataset.attrs.get("sha256")
        if expected is None:
            raise CheckpointError(f"{path}: {dataset.name} has no checksum, which this format requires: {DAMAGED}")
        if buffer_digest(a) != expected:
            raise CheckpointError(f"{path}: checksum mismatch in {dataset.name}: {DAMAGED}")
    return a


def _check_attrs(path, f, version):
    for obj in (f, f["params"], f.get("optimizer"), f["state"], f["history"] if version >= 3 else None):
        if obj is not None and _attrs_digest(obj) != obj.attrs.get("attrs_sha256"):
            raise CheckpointError(f"{path}: checksum mismatch in the attributes of {obj.name}: {DAMAGED}")


def _check_model_config(path, config):
    """The saved model config, validated; an unknown or missing key is a CheckpointError."""
    from tinydae.model import check_config

    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: the model config is not a JSON object: {config!r}")
    known = list(inspect.signature(check_config).parameters)
    unknown = sorted(set(config) - set(known))
    # "hidden" (versions 1-3) or "arch" (version 4) names the network; input_shape is new in 4
    missing = [k for k in known if k not in config and k not in ("hidden", "arch", "input_shape")]
    missing += [] if "hidden" in config or "arch" in config else ["arch"]
    problems = ([f"has unknown key(s) {', '.join(map(repr, unknown))}"] if unknown else []) + \
               ([f"lacks key(s) {', '.join(map(repr, missing))}"] if missing else [])
    if problems:
        raise CheckpointError(f"{path}: the model config {' and '.join(problems)} (this tinydae "
                              f"reads {', '.join(known)}); the file was edited or written by another "
                              f"tinydae version: load it with that version")
    try:
        return check_config(**config)
    except ConfigError as e:
        raise CheckpointError(f"{path}: bad model config in the checkpoint: {e}") from None


def load_checkpoint(path, optimizer=True):
    """Read and verify a checkpoint.  Raises CheckpointError naming the file and problem.
    optimizer=False leaves the optimizer's buffers (Adam's m and v: twice the parameters) unread
    and unverified, for inference (load_model); the returned optimizer is then None."""
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
            if version not in READABLE_VERSIONS:
                newer = "; upgrade tinydae to read it" if version > FORMAT_VERSION else ""
                raise CheckpointError(f"{path}: checkpoint format version {version}; this tinydae "
                                      f"reads versions {', '.join(map(str, READABLE_VERSIONS))}{newer}")
            checked = version >= 2
            if checked:
                _check_attrs(path, f, version)
            config = json.loads(f.attrs["model_config"])
            layout = [(n, tuple(s)) for n, s in json.loads(f["params"].attrs["layout"])]
            params = _read(path, f["params"], checked)
            want_optimizer, optimizer = optimizer, None
            if want_optimizer and "optimizer" in f:
                g = f["optimizer"]
                optimizer = dict(name=str(g.attrs["name"]), hyper=json.loads(g.attrs["hyper"]),
                                 t=int(g.attrs["t"]), buffers={k: _read(path, g[k], checked) for k in g.keys()})
            state = {k: v.item() if hasattr(v, "item") else v for k, v in f["state"].attrs.items()
                     if k != "attrs_sha256"}
            cols = {k: _read(path, f["history"][k], sha256=version >= 3) for k in f["history"].keys()}
            if version >= 3 and sorted(cols) != sorted(json.loads(f["history"].attrs["columns"])):
                raise CheckpointError(f"{path}: /history holds columns {sorted(cols)}, its record says "
                                      f"{sorted(json.loads(f['history'].attrs['columns']))}: {DAMAGED}")
            history = _history_rows(path, cols)
            train_config = json.loads(f.attrs.get("train_config", "{}"))
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: damaged or incomplete checkpoint ({type(e).__name__}: {e})") from None
    config = _check_model_config(path, config)
    if not isinstance(train_config, dict):
        raise CheckpointError(f"{path}: the train config is not a JSON object: {train_config!r}")
    _check_fields(path, "train_config", train_config, TRAIN_CONFIG_FIELDS)
    _check_fields(path, "/state", state, STATE_FIELDS)
    if optimizer is not None:
        _check_optimizer(path, optimizer)
    if params.dtype != np.dtype(config["dtype"]):
        raise CheckpointError(f"{path}: /params holds {params.dtype} values, its model config says {config['dtype']}")
    expected = param_layout(config)
    if layout != expected or params.shape != (sum(int(np.prod(s)) for _, s in expected),):
        raise CheckpointError(f"{path}: parameter layout does not match its model config {config}")
    if optimizer is not None and any(b.shape != params.shape for b in optimizer["buffers"].values()):
        raise CheckpointError(f"{path}: optimizer buffers do not match the parameter count")
    # Checked after the checksums: a run can save NaNs faithfully (a version-1 file, or another
    # writer); a diverged model must not be sampled from or resumed.
    buffers = {"/params": params}
    buffers.update({f"/optimizer/{k}": b for k, b in (optimizer["buffers"] if optimizer else {}).items()})
    for name, a in buffers.items():
        problem = _nonfinite(name, a)
        if problem:
            raise CheckpointError(f"{path}: {problem}; the run that wrote it had diverged: "
                                  f"use an earlier checkpoint")
    for row in history:
        for k in ("epoch", "step"):
            if k in row:
                row[k] = int(row[k])
    note = "" if checked else (f"{path} is a format-1 checkpoint and carries no checksums, so damage to "
                               f"it cannot be detected; checkpoints saved from it (e.g. by train --resume) have them")
    return Checkpoint(path, config, params, layout, train_config, optimizer, state, history, version, note)


def _history_rows(path, cols):
    """History columns (1-D float arrays of one length) -> one dict per epoch."""
    lengths = {k: a.shape for k, a in cols.items()}
    for k, a in cols.items():
        if a.ndim != 1 or a.dtype.kind != "f":
            raise CheckpointError(f"{path}: /history/{k} must be a 1-D float array, got {a.dtype} of shape {a.shape}")
    if len(set(lengths.values())) > 1:
        raise CheckpointError(f"{path}: the /history columns differ in length ({', '.join(f'{k}: {s[0]}' for k, s in lengths.items())})")
    n = len(next(iter(cols.values()))) if cols else 0
    return [{c: float(cols[c][i]) for c in cols} for i in range(n)]


# What load_checkpoint accepts for each known field (unknown fields pass: another version may add
# some).  Values that pass the checksums can still be wrong when another tool re-stamped them;
# each is checked here, and an error names the field.
def _integer(lo=None, hi=None):
    def check(v):
        ok = isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
        return ok and (lo is None or v >= lo) and (hi is None or v <= hi)
    return check


def _number(lo=None, positive=False):
    def check(v):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            return False
        v = float(v)
        return np.isfinite(v) and (lo is None or v >= lo) and (not positive or v > 0)
    return check


def _text(v):
    return isinstance(v, str)


def _optional(check):
    return lambda v: v is None or check(v)


TRAIN_CONFIG_FIELDS = {
    "data": (_text, "a string (a built-in name or a path)"),
    "key": (_optional(_text), "a string or null"),
    "limit": (_optional(_integer(1)), "an integer >= 1 or null"),
    "rescale": (lambda v: isinstance(v, bool), "true or false"),
    "val_fraction": (_number(0), "a number in [0, 1)"),
    "corruption": (_text, "a corruption spec such as 'gaussian:0.3'"),
    "optimizer": (lambda v: v in ("adam", "adamw", "sgd"), "adam, adamw or sgd"),
    "lr": (_number(positive=True), "a finite number > 0"),
    "lr_schedule": (lambda v: v in ("constant", "cosine"), "constant or cosine"),
    "momentum": (_number(0), "a finite number >= 0"),
    "weight_decay": (_number(0), "a finite number >= 0"),
    "batch_size": (_integer(1), "an integer >= 1"),
    "seed": (_integer(0, 2**64 - 1), "an integer in [0, 2^64)"),
    "epochs": (_integer(1), "an integer >= 1"),
}
STATE_FIELDS = {
    "step": (_integer(0), "an integer >= 0"),
    "epoch": (_integer(0), "an integer >= 0"),
    "epoch_loss_sum": (_number(), "a finite number"),
    "epoch_examples": (_integer(0), "an integer >= 0"),
    "epoch_seconds": (_number(0), "a finite number >= 0"),
    "wall_seconds": (_number(0), "a finite number >= 0"),
    "rng_seed": (_integer(0, 2**64 - 1), "an integer in [0, 2^64)"),
    "rng_train_corruption_counter": (_integer(0), "an integer >= 0"),
}
OPTIMIZER_BUFFERS = {"adam": {"m", "v"}, "adamw": {"m", "v"}, "sgd": {"velocity"}}


def _check_fields(path, where, values, fields, saving=False):
    why = "not saved" if saving else "the file was edited or written by another program"
    for name, (check, wanted) in fields.items():
        if name in values and not check(values[name]):
            raise CheckpointError(f"{path}: {where}.{name} is {values[name]!r}; it must be {wanted} ({why})")
    if where == "train_config" and "val_fraction" in values and not values["val_fraction"] < 1:
        raise CheckpointError(f"{path}: train_config.val_fraction is {values['val_fraction']!r}; it must be in [0, 1)")


def _check_optimizer(path, opt):
    if opt["name"] not in OPTIMIZER_BUFFERS:
        raise CheckpointError(f"{path}: /optimizer.name is {opt['name']!r}; it must be adam, adamw or sgd")
    if not _integer(0)(opt["t"]):
        raise CheckpointError(f"{path}: /optimizer.t is {opt['t']!r}; it must be an integer >= 0 (the updates done)")
    if not isinstance(opt["hyper"], dict) or not all(_number()(v) or isinstance(v, bool) for v in opt["hyper"].values()):
        raise CheckpointError(f"{path}: /optimizer.hyper is {opt['hyper']!r}; it must map names to finite numbers")
    if set(opt["buffers"]) != OPTIMIZER_BUFFERS[opt["name"]]:
        raise CheckpointError(f"{path}: /optimizer holds {sorted(opt['buffers'])}; {opt['name']} keeps "
                              f"{sorted(OPTIMIZER_BUFFERS[opt['name']])}")


def config_differences(saved, requested):
    """['hidden: checkpoint [1000] vs requested [500]', ...] for keys both dicts hold."""
    return [f"{k}: checkpoint {saved[k]!r} vs requested {requested[k]!r}"
            for k in requested if k in saved and saved[k] != requested[k]]


def restore_model(ckpt, backend="cpu"):
    """Checkpoint -> DAE with the saved parameters (on the given backend)."""
    from tinydae.model import DAE

    model = DAE(**ckpt.model_config, backend=backend, params=ckpt.params)
    model.corruption = ckpt.train_config.get("corruption")
    return model


def load_model(path, backend="cpu"):
    """Path -> DAE, the shortest way to use a trained model.  backend="numpy" runs it on
    numpy and h5py alone: nothing on that path imports numba, llvmlite, click or CuPy.  The
    optimizer state is not read (nor verified): a model loaded here is for inference or a fresh
    optimizer; resume training from load_checkpoint."""
    return restore_model(load_checkpoint(path, optimizer=False), backend)
