"""Checkpoints cannot be silently corrupt (issue 10): checksums, finiteness, config keys,
format versions, orphaned temporaries and atomic saves.

Damage is done the way it happens: bytes flipped in the file on disk, at an offset found from
HDF5's own storage map and checked to hold the data meant to be damaged.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import tinydae.checkpoint as checkpoint
from tinydae import DAE, Adam, CheckpointError, load_checkpoint, restore_model, save_checkpoint
from tinydae.cli import cli

V1_FIXTURE = Path(__file__).parent / "data" / "checkpoint-v1.h5"
# buffer_digest of its parameters, taken when tinydae 0.1.0 (format 1) wrote the fixture
V1_PARAMS_SHA256 = "42385892e63c63a070af9488f807e10930ec148acd9cd306a2e69662e974535a"
DAMAGED = "the file is damaged; use an earlier checkpoint"


def saved(tmp_path, name="c.h5", seed=5):
    model = DAE(16, hidden=(8, 4), tied=True, activation="tanh", seed=seed)
    opt = Adam(model, lr=0.01)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        x = rng.random((4, 16)).astype(np.float32)
        model.loss_and_grad(x, x)
        opt.step()
    path = tmp_path / name
    save_checkpoint(path, model, opt, dict(step=3, epoch=1), {"data": "glyphs"},
                    [dict(epoch=1, step=3, train_loss=1.5)])
    return path, model, opt


def data_offset(path, name, index):
    """(file offset of element `index` of dataset `name`, its bytes), for contiguous or chunked data."""
    with h5py.File(path, "r") as f:
        d = f[name]
        itemsize = d.dtype.itemsize
        expected = d[index : index + 1].tobytes()
        if d.chunks is None:
            offset = d.id.get_offset() + index * itemsize
        else:
            for i in range(d.id.get_num_chunks()):
                info = d.id.get_chunk_info(i)
                start = info.chunk_offset[0]
                if start <= index < start + d.chunks[0]:
                    _, raw = d.id.read_direct_chunk(info.chunk_offset)
                    within = (index - start) * itemsize
                    assert raw[within : within + itemsize] == expected  # no compression: raw data
                    offset = info.byte_offset + within
                    break
    with open(path, "rb") as fh:
        fh.seek(offset)
        assert fh.read(itemsize) == expected  # the flip lands inside the element we mean
    return offset


def flip_byte(path, offset, mask=0x10):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([b ^ mask]))


def rewrite(path, name, **attrs):
    """Change attributes of object `name` as an editor would, re-sealing its attrs checksum
    (so the check under test is the one after the checksums)."""
    with h5py.File(path, "a") as f:
        obj = f[name]
        for k, v in attrs.items():
            obj.attrs[k] = v
        if "attrs_sha256" in obj.attrs:
            obj.attrs["attrs_sha256"] = checkpoint._attrs_digest(obj)


# 1. checksums ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["params", "optimizer/m", "optimizer/v"])
def test_byte_flipped_on_disk_is_one_clear_error(tmp_path, name):
    path, model, _ = saved(tmp_path)
    flip_byte(path, data_offset(path, name, 37))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(e.value) == f"{path}: checksum mismatch in /{name}: {DAMAGED}"


def test_every_dataset_carries_a_checksum(tmp_path):
    path, _, _ = saved(tmp_path)
    with h5py.File(path, "r") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert {"params", "optimizer/m", "optimizer/v", "history/epoch"} <= set(names)
        assert all(f[n].fletcher32 for n in names)
        for n in ("params", "optimizer/m", "optimizer/v"):
            assert f[n].attrs["sha256"] == checkpoint.buffer_digest(f[n][()])


def test_data_rewritten_through_hdf5_fails_the_sha256(tmp_path):
    path, _, _ = saved(tmp_path)
    with h5py.File(path, "a") as f:  # HDF5 recomputes Fletcher-32, so only the SHA-256 sees it
        f["optimizer/v"][5] = f["optimizer/v"][5] * 2
    with pytest.raises(CheckpointError, match=f"checksum mismatch in /optimizer/v: {DAMAGED}"):
        load_checkpoint(path)


def test_flipped_attribute_bytes_are_caught(tmp_path):
    path, _, _ = saved(tmp_path)
    raw = path.read_bytes()
    assert raw.count(b'"glyphs"') == 1
    flip_byte(path, raw.index(b'"glyphs"') + 6, mask=0x13)  # "glyphs" -> "glyph`": a silent wrong data set
    with pytest.raises(CheckpointError, match=f"checksum mismatch in the attributes of /: {DAMAGED}"):
        load_checkpoint(path)
    path, _, _ = saved(tmp_path, "d.h5")
    with h5py.File(path, "a") as f:
        f["state"].attrs["step"] = 300  # would resume at the wrong step and noise counter
    with pytest.raises(CheckpointError, match="attributes of /state"):
        load_checkpoint(path)


def test_cli_reports_a_damaged_checkpoint_in_one_line(tmp_path):
    path, _, _ = saved(tmp_path)
    flip_byte(path, data_offset(path, "params", 3))
    r = CliRunner().invoke(cli, ["sample", str(path), "--n", "2", "--out", str(tmp_path / "s.png")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.stderr == f"error: {path}: checksum mismatch in /params: {DAMAGED}\n"


# 2. non-finite parameters ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["params", "optimizer/v"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_values_with_valid_checksums_are_rejected(tmp_path, name, value):
    path, _, _ = saved(tmp_path)
    with h5py.File(path, "a") as f:  # a writer that saved the NaNs faithfully, checksums and all
        d = f[name]
        a = d[()]
        a[[2, 9]] = value
        d[...] = a
        d.attrs["sha256"] = checkpoint.buffer_digest(a)
    with pytest.raises(CheckpointError, match=f"/{name} has 2 of 196 values NaN or infinite; .*diverged"):
        load_checkpoint(path)


def test_non_finite_version_1_file_is_rejected(tmp_path):
    path = tmp_path / "v1.h5"
    shutil.copy(V1_FIXTURE, path)
    with h5py.File(path, "a") as f:
        f["params"][4] = np.nan
    with pytest.raises(CheckpointError, match="v1.h5: /params has 1 of 196 values NaN or infinite"):
        load_checkpoint(path)


def test_save_refuses_non_finite_and_keeps_the_previous_file(tmp_path):
    path, model, opt = saved(tmp_path)
    before = path.read_bytes()
    model.params[7] = np.nan
    with pytest.raises(CheckpointError, match="not saved, /params has 1 of 196 values NaN or infinite; "
                                              "the model has diverged \\(the previous checkpoint is kept\\)"):
        save_checkpoint(path, model, opt)
    assert path.read_bytes() == before
    with pytest.raises(CheckpointError, match="diverged \\(nothing was written\\)"):
        save_checkpoint(tmp_path / "new.h5", model, opt)
    assert not (tmp_path / "new.h5").exists()
    model.params[7] = 0
    opt.buffers["m"][1] = -np.inf
    with pytest.raises(CheckpointError, match="/optimizer/m has 1 of 196 values NaN"):
        save_checkpoint(path, model, opt)
    assert path.read_bytes() == before


# 3. config keys ----------------------------------------------------------------------------

@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(dropout=0.5), "unknown key\\(s\\) 'dropout'"),
    (lambda c: c.pop("tied"), "lacks key\\(s\\) 'tied'"),
    (lambda c: c.update(activation="swish"), "bad model config.*unknown activation 'swish'"),
])
@pytest.mark.parametrize("version", [1, 2])
def test_bad_model_config_is_a_checkpoint_error(tmp_path, edit, message, version):
    path = tmp_path / "c.h5"
    if version == 1:
        shutil.copy(V1_FIXTURE, path)
    else:
        saved(tmp_path)
    with h5py.File(path, "r") as f:
        config = json.loads(f.attrs["model_config"])
    edit(config)
    rewrite(path, "/", model_config=json.dumps(config))
    with pytest.raises(CheckpointError, match=f"c.h5: .*{message}"):
        load_checkpoint(path)
    r = CliRunner().invoke(cli, ["sample", str(path), "--n", "2", "--out", str(tmp_path / "s.png")])
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {path}: ") and "Traceback" not in r.output


# 4. format versions ------------------------------------------------------------------------

def test_version_1_fixture_loads_with_a_note():
    ck = load_checkpoint(V1_FIXTURE)
    assert ck.format_version == 1
    assert ck.note.startswith(f"{V1_FIXTURE} is a format-1 checkpoint and carries no checksums")
    # a format-1 config names hidden widths: it loads as the mlp spec (the network it was)
    assert ck.model_config == dict(input_dim=16, input_shape=[16], arch="mlp:8,4", activation="tanh", tied=True,
                                   loss="bce", dtype="float32", seed=5)
    assert ck.params.dtype == np.float32 and ck.params.shape == (196,)
    assert checkpoint.buffer_digest(ck.params) == V1_PARAMS_SHA256
    assert ck.optimizer["t"] == 3 and set(ck.optimizer["buffers"]) == {"m", "v"}
    assert ck.state == dict(step=3, epoch=1, rng_seed=0)
    assert ck.train_config == {"data": "glyphs", "corruption": "masking:0.25"}
    assert restore_model(ck).corruption == "masking:0.25"


def test_new_saves_are_version_4_without_a_note(tmp_path):
    path, model, _ = saved(tmp_path)
    ck = load_checkpoint(path)
    assert checkpoint.FORMAT_VERSION == 4 and ck.format_version == 4 and ck.note == ""
    np.testing.assert_array_equal(ck.params, model.params)


def test_unknown_versions_name_what_this_tinydae_reads(tmp_path):
    path, _, _ = saved(tmp_path)
    rewrite(path, "/", format_version=5)
    with pytest.raises(CheckpointError, match="version 5; this tinydae reads versions 1, 2, 3, 4; upgrade"):
        load_checkpoint(path)


# 5. orphaned temporaries -------------------------------------------------------------------

def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_next_save_removes_orphans_of_dead_processes_only(tmp_path):
    path, model, opt = saved(tmp_path)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        orphans = [tmp_path / f"c.h5.tmp-{dead_pid()}" for _ in range(2)]
        keep = [tmp_path / f"c.h5.tmp-{live.pid}",    # a concurrent save in progress
                tmp_path / f"other.h5.tmp-{dead_pid()}",  # another file's: its own next save
                tmp_path / "c.h5.tmp-notes"]           # not a temporary of ours
        for p in orphans + keep:
            p.write_bytes(b"\0" * 1000)
        save_checkpoint(path, model, opt)
        assert not any(p.exists() for p in orphans)
        assert all(p.exists() for p in keep)
        assert load_checkpoint(path).format_version == checkpoint.FORMAT_VERSION
    finally:
        live.kill()
        live.wait()


KILLED_MID_SAVE = """
import os, sys, time
from tinydae import checkpoint
def slow_fsync(path, directory=False):  # the bytes are in the temporary, not yet moved into place
    print("writing", flush=True)
    time.sleep(60)
checkpoint._fsync_path = slow_fsync
checkpoint.atomic_write(sys.argv[1], lambda f: f.write(b"half a checkpoint"))
"""


def test_temporary_left_by_kill_9_is_removed_by_the_next_save(tmp_path):
    path, model, opt = saved(tmp_path)
    for _ in range(3):  # each save starts by removing the orphan of the one killed before it
        with subprocess.Popen([sys.executable, "-c", KILLED_MID_SAVE, str(path)],
                              stdout=subprocess.PIPE, text=True) as proc:
            assert proc.stdout.readline() == "writing\n"
            proc.send_signal(signal.SIGKILL)
        assert [p.name for p in tmp_path.glob("c.h5.tmp-*")] == [f"c.h5.tmp-{proc.pid}"]
    save_checkpoint(path, model, opt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]


# 6. atomic saves ---------------------------------------------------------------------------

def test_save_writes_a_temporary_fsyncs_it_then_replaces(tmp_path, monkeypatch):
    path, model, opt = saved(tmp_path)
    events = []
    real_fsync, real_replace = checkpoint._fsync_path, os.replace
    monkeypatch.setattr(checkpoint, "_fsync_path",
                        lambda p, directory=False: (events.append(("fsync", p)), real_fsync(p, directory)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", a, b)), real_replace(a, b)))
    save_checkpoint(path, model, opt)
    tmp = f"{path}.tmp-{os.getpid()}"
    assert events == [("fsync", tmp), ("replace", tmp, str(path)), ("fsync", str(tmp_path))]
    assert load_checkpoint(path).format_version == checkpoint.FORMAT_VERSION


def test_cli_notes_a_format_1_checkpoint_in_one_line(tmp_path):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run([sys.executable, os.path.join(root, "cli.py"), "sample",
                        os.path.join(root, "tests", "data", "checkpoint-v1.h5"), "--n", "4", "--steps", "2",
                        "--start", "noise", "--out", str(tmp_path / "s.png")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "carries no checksums" in notes[0], r.stderr
