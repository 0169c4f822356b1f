"""The CLI's workflows as library calls (issue 20, item 6): resuming with train --resume's
checks (tinydae.runs.resume_settings) and running chains as sample / improve do
(tinydae.workflows.run_chains), from Python, with the same errors and files."""
import numpy as np
import pytest

import tinydae as td
from tinydae import runs, workflows
from tinydae.errors import ConfigError, DataError, TinyDAEError

from png_reader import read_gray_png


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A conv DAE on 6x8 images (not square), fitted briefly, with its training data on disk."""
    folder = tmp_path_factory.mktemp("wf")
    x = np.random.default_rng(0).random((40, 6, 8)).astype(np.float32)
    np.savez(folder / "data.npz", x=x)
    data = td.load_dataset(str(folder / "data.npz"))
    model = td.DAE(48, arch="conv:3", input_shape=data.image_shape, seed=1)
    path = str(folder / "checkpoint.h5")
    td.fit(model, data, None, epochs=1, batch_size=10, checkpoint_path=path, handle_sigint=False,
           train_config=dict(data=str(folder / "data.npz"), corruption="gaussian:0.3", optimizer="adam", lr=1e-3,
                             momentum=0.9, weight_decay=0.0, batch_size=10, seed=0, epochs=1, rescale=False,
                             val_fraction=0.0, key=None, limit=None))
    return folder, path


def test_resume_settings_check_like_train_resume(trained):
    folder, path = trained
    ckpt = td.load_checkpoint(path)
    saved, state = runs.resume_settings(ckpt, {"arch": "conv:3"}, {"batch_size": 10}, epochs=2)
    assert saved["batch_size"] == 10 and state.epoch == 1 and state.step == 4
    with pytest.raises(ConfigError, match=r"arch: checkpoint 'conv:3' vs requested 'conv:4'; batch_size: "
                                          r"checkpoint 10 vs requested 20"):
        runs.resume_settings(ckpt, {"arch": "conv:4"}, {"batch_size": 20}, epochs=2)
    with pytest.raises(ConfigError, match="already has 1 completed epoch"):
        runs.resume_settings(ckpt, epochs=1)
    # the spec as the CLI takes it: normalised, --hidden as shorthand; unknown options refused
    runs.resume_settings(ckpt, {"arch": " CONV:3 "}, {}, epochs=2)
    with pytest.raises(ConfigError, match=r"arch: checkpoint 'conv:3' vs requested 'mlp:8'"):
        runs.resume_settings(ckpt, {"hidden": [8]}, {}, epochs=2)
    with pytest.raises(ConfigError, match=r"unknown option\(s\) 'archh', 'batchsize'"):
        runs.resume_settings(ckpt, {"archh": "conv:3"}, {"batchsize": 10}, epochs=2)


def test_resume_settings_name_moved_data(trained, tmp_path):
    folder, path = trained
    ckpt = td.load_checkpoint(path)
    ckpt.train_config["data"] = str(tmp_path / "gone.npz")
    with pytest.raises(DataError, match="gone.npz: no such file; this path is the training data recorded in"):
        runs.resume_settings(ckpt, epochs=2)
    saved, _ = runs.resume_settings(ckpt, {}, {"data": str(folder / "data.npz")}, epochs=2)
    assert saved["data"] == str(folder / "data.npz")


def test_run_chains_from_python_writes_the_strip_in_the_image_shape(trained, tmp_path):
    _, path = trained
    lines = []
    summary, result = workflows.run_chains(path, "noise", n=4, steps=3, keep_every=1, out=str(tmp_path / "s.png"),
                                           h5=str(tmp_path / "s.h5"), log=lines.append)
    assert summary["chains"] == 4 and summary["png"] == str(tmp_path / "s.png") and result.samples.shape == (4, 48)
    img = read_gray_png((tmp_path / "s.png").read_bytes())
    assert img.shape == (2 * (4 * (6 + 2) + 2), 2 * (4 * (8 + 2) + 2))  # 4 chains x steps 0-3 of 6x8 images
    assert (tmp_path / "s.h5").exists()
    # the same rules as the CLI: an existing output is refused without overwrite, before any work
    with pytest.raises(TinyDAEError, match="exists"):
        workflows.run_chains(path, "noise", n=4, steps=3, out=str(tmp_path / "s.png"))
    workflows.run_chains(path, "pixels", n=4, steps=1, out=str(tmp_path / "s.png"), overwrite=True, log=lines.append)
    assert any("fitting the pixels baseline" in line for line in lines)
