"""Run folders and data provenance: the rules `train` follows, usable from Python too.

A run folder holds TRAIN_FILES.  check_run_folder refuses to replace another run without
overwrite, move_run_aside / restore_aside / drop_aside replace one without ever losing it to a
failure or an interrupt before the new run's first regular checkpoint, and recover_asides puts
back a run that a process killed with -9 left aside.  recorded_data says where a checkpoint's
training data is (and whether it is gone).

log: a callable taking one line (the CLI passes click's stderr echo); None says nothing.
"""
import os
import shutil

from tinydae.data import is_builtin
from tinydae.errors import ConfigError, DataError

TRAIN_FILES = ("checkpoint.h5", "history.json", "samples.png")
MODEL_OPTIONS = ("arch", "hidden", "activation", "tied", "loss", "dtype")  # what resume_settings compares


def data_source(source):
    """What a checkpoint records as its data: files as absolute paths, so that evaluate and
    improve find them from any folder; built-in names (and paths that do not exist, for the
    error message) as given."""
    return os.path.abspath(source) if os.path.exists(source) and not is_builtin(source) else source


def recorded_data(ckpt):
    """-> (the checkpoint's data source, whether that file is gone).  Older checkpoints
    recorded paths relative to the folder train ran in; they are read relative to this one."""
    source = ckpt.train_config["data"]
    if is_builtin(source):
        return source, False
    return os.path.abspath(source), not os.path.exists(source)


def moved_data_error(ckpt, path):
    return DataError(f"{path}: no such file; this path is the training data recorded in {ckpt.path}; pass "
                     f"--data to say where that data is now")


def scheduled_epochs(ckpt, requested, default):
    """The --epochs a resume of `ckpt` trains to.  A run whose learning rate follows a schedule
    over its total (cosine) keeps that total: a new one would jump the rate mid-run.
    requested: the total asked for explicitly, or None (then: the recorded total of a scheduled
    run, else `default`).  Raises ConfigError for a scheduled run asked for another total."""
    schedule = ckpt.train_config.get("lr_schedule", "constant")  # checkpoints before the option: constant
    total = ckpt.train_config.get("epochs")
    if schedule == "constant" or total is None:
        return default if requested is None else requested
    if requested is not None and requested != total:
        done = ckpt.state.get("epoch", 0)
        hint = (f"resume it with --epochs {total} (or leave --epochs out)" if done < total else
                "it is complete; start a new run (e.g. train with more --epochs from scratch) to train longer")
        raise ConfigError(f"{ckpt.path} decays its learning rate ({schedule}) over the {total} epochs it was started "
                          f"with, and cannot train to {requested}: {hint}")
    return total


def resume_settings(ckpt, model_options=None, train_options=None, epochs=None):
    """What resuming `ckpt` trains with, by train --resume's rules: the checkpoint's own settings,
    checked against the ones the caller gave explicitly.

    model_options: {model config key: value} given (arch or hidden, activation, tied, loss, dtype)
    train_options: {train config key: value} given (data: where the recorded data is now, when
                   it moved; the rest must equal the recorded values)
    epochs: the total to reach (must exceed the epochs done)
    -> (the recorded train config, its data resolved to a path that exists; TrainState)
    Raises ConfigError naming every difference, DataError when the recorded data is gone and
    train_options gives no data.
    """
    from tinydae import arch
    from tinydae.checkpoint import TRAIN_CONFIG_FIELDS, config_differences
    from tinydae.train import TrainState

    model_options, train_options = dict(model_options or {}), dict(train_options or {})
    unknown = sorted(set(model_options) - set(MODEL_OPTIONS)) + sorted(set(train_options) - set(TRAIN_CONFIG_FIELDS))
    if unknown:
        raise ConfigError(f"resume_settings: unknown option(s) {', '.join(map(repr, unknown))}; model options are "
                          f"{', '.join(MODEL_OPTIONS)}, training options {', '.join(TRAIN_CONFIG_FIELDS)}")
    if "hidden" in model_options:  # shorthand, as --hidden is
        if "arch" in model_options:
            raise ConfigError("give arch or hidden (shorthand for arch='mlp:...'), not both")
        model_options["arch"] = arch.mlp_spec(model_options.pop("hidden"))
    if "arch" in model_options:
        model_options["arch"] = arch.canonical(model_options["arch"])
    saved = dict(ckpt.train_config)
    saved.setdefault("lr_schedule", "constant")  # checkpoints written before the option trained at a constant rate
    if "data" in saved:
        saved["data"], gone = recorded_data(ckpt)
        if gone and "data" not in train_options:
            raise moved_data_error(ckpt, saved["data"])
        if gone:  # the same data moved: train_options["data"] says where it is now
            saved["data"] = train_options.pop("data")
    diffs = config_differences(ckpt.model_config, model_options)
    diffs += config_differences(saved, train_options)
    if diffs:
        raise ConfigError(f"cannot resume {ckpt.path}: it differs from the options given: " + "; ".join(diffs))
    state = TrainState.from_checkpoint(ckpt)
    if epochs is not None and state.epoch >= epochs:  # fit() would do nothing; say so instead of exiting 0
        if saved["lr_schedule"] != "constant":
            raise ConfigError(f"{ckpt.path} already has its {state.epoch} completed epoch(s) (step {state.step}), the "
                              f"total its {saved['lr_schedule']} learning rate decays over: it cannot be extended; "
                              f"start a new run with more --epochs to train longer")
        raise ConfigError(f"{ckpt.path} already has {state.epoch} completed epoch(s) (step {state.step}); "
                          f"--epochs counts the total: pass --epochs {state.epoch + 1} or more to train further")
    return saved, state


def check_run_folder(out, resume=None, overwrite=False, log=None):
    """Refuse to replace another run, or to find a directory where a file must go, before any
    work.  -> True when the files of the run in `out` are to be replaced (overwrite)."""
    recover_asides(out, log)
    for name in TRAIN_FILES:
        if os.path.isdir(os.path.join(out, name)):
            raise ConfigError(f"--out {out}: {os.path.join(out, name)} is a directory, where train writes "
                              f"its {name}; remove it or choose another --out")
    found = [name for name in TRAIN_FILES if os.path.exists(os.path.join(out, name))]
    if not found:
        return False
    ckpt = os.path.join(out, "checkpoint.h5")
    if resume and os.path.exists(ckpt) and os.path.samefile(resume, ckpt):
        return False  # continuing the run that is there
    if overwrite:
        return True
    other = f"; --resume {resume} continues a different run" if resume else ""
    raise ConfigError(f"--out {out} already holds a run ({', '.join(found)}){other}; pass --overwrite to "
                      f"replace it, --resume {ckpt} to continue it, or choose another --out")


def move_run_aside(out):
    """Move the run in `out` (TRAIN_FILES) into out/.replaced-PID/ (a rename: same file system)."""
    aside = os.path.join(out, f".replaced-{os.getpid()}")
    os.makedirs(aside, exist_ok=True)
    for name in TRAIN_FILES:
        if os.path.exists(os.path.join(out, name)):
            os.replace(os.path.join(out, name), os.path.join(aside, name))
    return aside


def drop_aside(aside):
    shutil.rmtree(aside, ignore_errors=True)


def restore_aside(out, aside, log=None):
    """Put the old run back; the new run's files, if it saved any (an interrupt's checkpoint),
    go to out/.interrupted-PID/, from where it can be resumed."""
    new = [name for name in TRAIN_FILES if os.path.exists(os.path.join(out, name))]
    kept = ""
    if new:
        moved = os.path.join(out, f".interrupted-{os.getpid()}")
        os.makedirs(moved, exist_ok=True)
        for name in new:
            os.replace(os.path.join(out, name), os.path.join(moved, name))
        kept = f"; the new run's files are in {moved} (train --resume {os.path.join(moved, 'checkpoint.h5')} continues it)"
    for name in os.listdir(aside):
        os.replace(os.path.join(aside, name), os.path.join(out, name))
    os.rmdir(aside)
    if log:
        log(f"the new run stopped before its first regular checkpoint; the run that was in {out} is back in "
            f"place{kept}")


def recover_asides(out, log=None):
    """An earlier replacement killed with -9 left the replaced run in out/.replaced-PID/: put it
    back if the folder holds no run now, else say where it is (never delete it unasked)."""
    from tinydae.checkpoint import _pid_alive

    for name in sorted(os.listdir(out)):
        pid = name[len(".replaced-"):]
        if not name.startswith(".replaced-") or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        aside = os.path.join(out, name)
        if not os.path.exists(os.path.join(out, "checkpoint.h5")):
            for f in os.listdir(aside):
                if not os.path.exists(os.path.join(out, f)):
                    os.replace(os.path.join(aside, f), os.path.join(out, f))
            if not os.listdir(aside):
                os.rmdir(aside)
            message = f"note: {out} held the run an interrupted `train --overwrite` had moved aside; it is back in place"
        else:
            message = (f"note: {aside} holds a run an interrupted `train --overwrite` had replaced; delete it when "
                       f"you no longer need it")
        if log:
            log(message)
