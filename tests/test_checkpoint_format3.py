"""Issue 19, checkpoints: format 3 checksums the whole file (/history included), and every field
is checked for type and range on load, so a value that passes the checksums because another
program re-stamped them ends in one error naming the field, never a TypeError or IndexError
deep inside a command.  Format 1 and 2 files still load."""
import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from tinydae import checkpoint
from tinydae.checkpoint import CheckpointError, buffer_digest, load_checkpoint
from tinydae.cli import cli

from cli_helpers import one_error_line


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def ck(cli_checkpoint, tmp_path):
    """A copy of a checkpoint `train` wrote, in a run folder of its own."""
    run = tmp_path / "run"
    run.mkdir()
    path = run / "checkpoint.h5"
    path.write_bytes(open(cli_checkpoint, "rb").read())
    return path


def reseal(obj):
    obj.attrs["attrs_sha256"] = checkpoint._attrs_digest(obj)


def replace_dataset(path, name, data, sealed=True):
    """Put `data` where dataset `name` was; sealed: give it a matching sha256, as a tool that
    re-stamps checksums would."""
    with h5py.File(path, "a") as f:
        attrs = dict(f[name].attrs)
        del f[name]
        d = f.create_dataset(name, data=data)
        for k, v in attrs.items():
            d.attrs[k] = v
        if sealed:
            d.attrs["sha256"] = buffer_digest(np.asarray(data))


def set_attrs(path, name, **attrs):
    with h5py.File(path, "a") as f:
        for k, v in attrs.items():
            f[name].attrs[k] = v
        reseal(f[name])


def set_json_attr(path, attr, key, value):
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs[attr])
    config[key] = value
    set_attrs(path, "/", **{attr: json.dumps(config)})


def test_new_checkpoints_checksum_their_history(ck):
    assert load_checkpoint(ck).format_version >= 3
    with h5py.File(ck, "r") as f:
        assert sorted(json.loads(f["history"].attrs["columns"])) == sorted(f["history"].keys())
        assert all("sha256" in f["history"][k].attrs for k in f["history"].keys())
    replace_dataset(ck, "history/wall_s", np.array([1.0]), sealed=False)
    with pytest.raises(CheckpointError, match="checksum mismatch in /history/wall_s"):
        load_checkpoint(ck)


def test_a_resealed_history_column_of_another_length_is_one_error_line(ck, tmp_path):
    replace_dataset(ck, "history/wall_s", np.array([1.0, 2.0, 3.0]))
    one_error_line(invoke("sample", ck, "--n", "4", "--steps", "2", "--backend", "cpu", "--out", tmp_path / "s.png"),
             "the /history columns differ in length")
    one_error_line(invoke("train", "--resume", ck, "--epochs", "2", "--out", ck.parent, "--backend", "cpu"),
             "the /history columns differ in length")


def test_a_nan_in_the_history_is_resumed_into_strict_json(ck):
    with h5py.File(ck, "r") as f:
        column = f["history/val_bce_denoise"][()]
    column[0] = np.nan
    replace_dataset(ck, "history/val_bce_denoise", column)
    r = invoke("train", "--resume", ck, "--epochs", "2", "--out", ck.parent, "--backend", "cpu")
    assert r.exit_code == 0, r.output
    text = (ck.parent / "history.json").read_text()
    rows = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in history.json"))
    assert rows[0]["val_bce_denoise"] is None and len(rows) == 2


@pytest.mark.parametrize("attr,key,value,field", [
    ("train_config", "data", 123, "train_config.data is 123"),
    ("train_config", "batch_size", "64", "train_config.batch_size is '64'"),
    ("train_config", "lr", -1.0, "train_config.lr is -1.0"),
    ("train_config", "seed", -1, "train_config.seed is -1"),
])
def test_resealed_train_config_values_are_named(ck, tmp_path, attr, key, value, field):
    set_json_attr(ck, attr, key, value)
    one_error_line(invoke("improve", ck, "--n", "4", "--steps", "1", "--backend", "cpu", "--out", tmp_path / "i.png"),
             field, "it must be")


@pytest.mark.parametrize("value,shown", [(-5, "-5"), (2.5, "2.5")])
def test_resealed_state_values_are_named(ck, value, shown):
    set_attrs(ck, "state", step=value)
    one_error_line(invoke("train", "--resume", ck, "--epochs", "2", "--out", ck.parent, "--backend", "cpu"),
             f"/state.step is {shown}; it must be an integer >= 0")


def test_a_negative_optimizer_step_count_is_named_not_blamed_on_the_learning_rate(ck):
    set_attrs(ck, "optimizer", t=-3)
    one_error_line(invoke("train", "--resume", ck, "--epochs", "2", "--out", ck.parent, "--backend", "cpu"),
             "/optimizer.t is -3; it must be an integer >= 0")


def test_parameters_stored_as_strings_are_named(ck, tmp_path):
    with h5py.File(ck, "r") as f:
        n = f["params"].shape[0]
    replace_dataset(ck, "params", np.array(["0.1"] * n, dtype="S8"))
    one_error_line(invoke("sample", ck, "--n", "4", "--steps", "2", "--backend", "cpu", "--out", tmp_path / "s.png"),
             "/params holds |S8 values, its model config says float32")


def test_format_2_files_still_load(ck):
    """A version-2 file (no checksums on /history) loads as before, without a note."""
    with h5py.File(ck, "a") as f:
        h = f["history"]
        for k in list(h.attrs):
            del h.attrs[k]
        for name in h.keys():
            del h[name].attrs["sha256"]
        f.attrs["format_version"] = 2
        reseal(f)
    loaded = load_checkpoint(ck)
    assert loaded.format_version == 2 and loaded.note == "" and loaded.history
