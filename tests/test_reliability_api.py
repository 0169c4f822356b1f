"""Issue 19, the Python API: one inference policy (check=True refuses non-finite inputs and
targets outside [0, 1]; check=False skips it), a foreign optimizer and a folder as checkpoint
path refused before work, and every mistake a TinyDAEError (never a bare ValueError/TypeError)."""
import numpy as np
import pytest

import tinydae as td
from tinydae.errors import ConfigError, DataError, TinyDAEError


@pytest.fixture
def model():
    return td.DAE(12, hidden=(5,), seed=1)


def rows(n=6, d=12, seed=0):
    return np.random.default_rng(seed).uniform(0.05, 0.95, (n, d)).astype(np.float32)


def test_inference_refuses_nan_unless_asked_not_to_check(model):
    x = rows()
    x[2, 3] = np.nan
    for method in (model.reconstruct, model.logits, model.encode):
        with pytest.raises(DataError, match="the batch holds NaN or infinite values"):
            method(x)
        assert np.isnan(method(x, check=False)).any()  # the documented switch
    assert np.isfinite(model.reconstruct(rows() * 3 - 1)).all()  # a corrupted input may leave [0, 1]


def test_loss_and_grad_checks_its_target_and_shapes(model):
    x, t = rows(), rows(seed=1)
    assert np.isfinite(model.loss_and_grad(x, t))
    bad = t.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="the target holds NaN"):
        model.loss_and_grad(x, bad)
    with pytest.raises(DataError, match=r"the target lies in \[.*\], outside \[0, 1\]"):
        model.loss_and_grad(x, t * 255)
    with pytest.raises(DataError, match="x_in and the target must have one shape"):
        model.loss_and_grad(x[:3], t)
    with pytest.raises(DataError, match="x_in holds NaN"):
        model.loss_and_grad(np.full_like(x, np.inf), t)


def test_chain_refuses_starting_points_outside_the_unit_interval(model):
    with pytest.raises(DataError, match=r"chain starting points lie in \[.*\], outside \[0, 1\]"):
        td.chain(model, rows() * 255, 2)


def test_fit_refuses_an_optimizer_of_another_model(model):
    other = td.DAE(12, hidden=(7,), seed=2)
    before = model.params.copy()
    with pytest.raises(ConfigError, match="the optimizer was made for another model object"):
        td.fit(model, rows(20), optimizer=td.Adam(other), epochs=1, batch_size=5)
    np.testing.assert_array_equal(model.params, before)


def test_fit_checks_its_checkpoint_path_before_training(model, tmp_path):
    before = model.params.copy()
    with pytest.raises(ConfigError, match="checkpoint_path .* is a directory"):
        td.fit(model, rows(20), epochs=1, batch_size=5, checkpoint_path=str(tmp_path))
    np.testing.assert_array_equal(model.params, before)  # not trained first


@pytest.mark.parametrize("source", [123, None, ""])
def test_load_dataset_of_no_source_is_a_data_error(source):
    with pytest.raises(TinyDAEError):
        td.load_dataset(source)


def test_messages_name_the_option_the_user_typed(tmp_path, cli_checkpoint):
    from click.testing import CliRunner

    from tinydae.cli import cli

    two = tmp_path / "two.npz"
    np.savez(two, a=rows(), b=rows())
    with pytest.raises(DataError, match="holds 2 arrays .*; name one with --samples-key"):
        td.load_dataset(two, key_option="--samples-key")
    with pytest.raises(DataError, match="name one with --key"):
        td.load_dataset(two)
    r = CliRunner().invoke(cli, ["train", "--data", "", "--epochs", "1"])
    assert r.exit_code == 2 and r.stderr.startswith("error: the data source is empty; give 'glyphs'")
    # --limit without --data applies to the checkpoint's data (it was ignored): 0 is refused
    r = CliRunner().invoke(cli, ["sample", str(cli_checkpoint), "--start", "pca", "--limit", "0", "--n", "4",
                                 "--steps", "1", "--backend", "cpu", "--out", str(tmp_path / "s.png")])
    assert r.exit_code == 2 and "--limit must be >= 1, got 0" in r.stderr


@pytest.mark.parametrize("delay", [0.08, 0.15])
def test_ctrl_c_while_the_cli_imports_is_quiet(delay):
    """SIGINT in the first fraction of a second (numpy, h5py and click still loading) ends like a
    later Ctrl-C: 'interrupted' and exit 130, not an 18-line KeyboardInterrupt traceback."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.Popen([sys.executable, "cli.py", "info"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=root)
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert p.returncode in (130, -signal.SIGINT), (p.returncode, err)


@pytest.mark.parametrize("config,field", [({"data": None}, "train_config.data is None"),
                                          ({"batch_size": 64.0}, "train_config.batch_size is 64.0"),
                                          ({"optimizer": "lbfgs"}, "train_config.optimizer is 'lbfgs'")])
def test_fit_refuses_a_train_config_its_checkpoint_could_not_record(model, tmp_path, config, field):
    before = model.params.copy()
    with pytest.raises(ConfigError, match=field.replace(".", r"\.").replace("(", r"\(")):
        td.fit(model, rows(20), epochs=1, batch_size=5, checkpoint_path=str(tmp_path / "c.h5"), train_config=config)
    np.testing.assert_array_equal(model.params, before)
    with pytest.raises(td.CheckpointError, match="not saved"):
        td.save_checkpoint(tmp_path / "d.h5", model, train_config=config)
    assert not (tmp_path / "d.h5").exists()


def test_the_run_folder_rules_are_in_the_library(tmp_path):
    """tinydae.runs: what `train` does to a run folder, from Python (issue 20, item 6)."""
    from tinydae import runs

    out = tmp_path / "run"
    out.mkdir()
    assert runs.check_run_folder(str(out)) is False  # empty: nothing to replace
    (out / "checkpoint.h5").write_bytes(b"old")
    with pytest.raises(ConfigError, match="already holds a run"):
        runs.check_run_folder(str(out))
    assert runs.check_run_folder(str(out), overwrite=True) is True
    aside = runs.move_run_aside(str(out))
    (out / "checkpoint.h5").write_bytes(b"interrupted")
    said = []
    runs.restore_aside(str(out), aside, log=said.append)
    assert (out / "checkpoint.h5").read_bytes() == b"old" and len(said) == 1 and "back in place" in said[0]
    assert [p.name.startswith(".interrupted-") for p in out.iterdir() if p.name != "checkpoint.h5"] == [True]
