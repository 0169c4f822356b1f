import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from tinydae import DAE, Adam, CheckpointError, load_checkpoint, restore_model, save_checkpoint
from tinydae.checkpoint import FORMAT_VERSION


def trained_pair(rng):
    model = DAE(16, hidden=(8, 4), tied=True, activation="tanh", seed=5)
    opt = Adam(model, lr=0.01)
    for _ in range(3):
        x = rng.random((4, 16)).astype(np.float32)
        model.loss_and_grad(x, x)
        opt.step()
    return model, opt


def test_round_trip(tmp_path, rng):
    model, opt = trained_pair(rng)
    history = [dict(epoch=1, step=3, train_loss=10.5, val_bce_denoise=9.25)]
    path = tmp_path / "c.h5"
    save_checkpoint(path, model, opt, dict(step=3, epoch=1, rng_seed=0), {"data": "glyphs"}, history)
    ck = load_checkpoint(path)
    assert ck.model_config == model.config and ck.train_config == {"data": "glyphs"}
    assert ck.state["step"] == 3 and ck.history == history
    again = restore_model(ck)
    np.testing.assert_array_equal(again.params, model.params)
    x = rng.random((3, 16)).astype(np.float32)
    np.testing.assert_array_equal(again.reconstruct(x), model.reconstruct(x))
    assert ck.optimizer["t"] == 3
    for k in ("m", "v"):
        np.testing.assert_array_equal(ck.optimizer["buffers"][k], opt.buffers[k])
    assert not any(p.name.startswith("c.h5.tmp") for p in tmp_path.iterdir())


def test_truncated_foreign_and_wrong_version(tmp_path, rng):
    model, opt = trained_pair(rng)
    good = tmp_path / "good.h5"
    save_checkpoint(good, model, opt)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.h5"):
        load_checkpoint(truncated)
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.h5.*HDF5"):
        load_checkpoint(text)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("weights", data=np.ones(3))
    with pytest.raises(CheckpointError, match="not a tinydae checkpoint"):
        load_checkpoint(foreign)
    old = tmp_path / "old.h5"
    old.write_bytes(good.read_bytes())
    with h5py.File(old, "a") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(CheckpointError, match="version"):
        load_checkpoint(old)
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "absent.h5")
    mangled = tmp_path / "mangled.h5"
    mangled.write_bytes(good.read_bytes())
    with h5py.File(mangled, "a") as f:
        del f["params"]
    with pytest.raises(CheckpointError, match="mangled.h5"):
        load_checkpoint(mangled)


def test_failed_save_leaves_previous_checkpoint(tmp_path, rng, monkeypatch):
    model, opt = trained_pair(rng)
    path = tmp_path / "c.h5"
    save_checkpoint(path, model, opt, dict(step=1))
    before = path.read_bytes()
    real = h5py.Group.create_dataset

    def explode(self, name, *args, **kwargs):
        if name == "v":
            raise OSError("disk full (simulated)")
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", explode)
    model.params[...] += 1
    with pytest.raises(OSError):
        save_checkpoint(path, model, opt, dict(step=2))
    assert path.read_bytes() == before
    assert load_checkpoint(path).state["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]


SAVER = """
import sys, numpy as np
from tinydae import DAE, Adam, save_checkpoint
model = DAE(784, hidden=(1000, 500), seed=0)
opt = Adam(model)
step = 0
while True:
    step += 1
    model.params[...] = step
    save_checkpoint(sys.argv[1], model, opt, dict(step=step))
    print(step, flush=True)
"""


def test_kill_during_save_leaves_a_valid_checkpoint(tmp_path):
    path = tmp_path / "c.h5"
    for delay in (0.05, 0.13, 0.31):
        with subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True) as proc:
            proc.stdout.readline()  # at least one complete save exists
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        ck = load_checkpoint(path)  # never a half-written file
        assert (ck.params == ck.state["step"]).all()


def test_load_model_leaves_the_optimizer_state_unread(tmp_path):
    """load_model reads the parameters only: Adam's m and v (twice the parameters) are neither
    read nor needed, so even a damaged optimizer buffer does not stop inference; a full
    load_checkpoint still reads and verifies them."""
    import h5py
    import numpy as np

    from tinydae import DAE, Adam, CheckpointError, load_checkpoint, load_model, save_checkpoint

    model = DAE(12, hidden=(5,), seed=1)
    opt = Adam(model)
    x = np.random.default_rng(0).random((4, 12), dtype=np.float32)
    model.loss_and_grad(x, x)
    opt.step()
    path = tmp_path / "m.h5"
    save_checkpoint(path, model, optimizer=opt)
    assert load_checkpoint(path, optimizer=False).optimizer is None
    with h5py.File(path, "r+") as f:  # damage the optimizer's m (its checksum now fails)
        f["optimizer"]["m"][0] += 1.0
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)
    np.testing.assert_array_equal(load_model(path).reconstruct(x), model.reconstruct(x))
