import json

import numpy as np
import pytest
from click.testing import CliRunner

from tinydae import load_checkpoint
from tinydae.cli import cli

from png_reader import read_gray_png

TINY = ["--limit", "300", "--hidden", "16", "--epochs", "2", "--backend", "cpu"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_train_writes_checkpoint_history_and_png(tmp_path):
    r = invoke("train", *TINY, "--out", tmp_path, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["step"] == 2 * 5 and summary["epochs"] == 2  # 270 train rows / 64 -> 5 steps
    assert summary["final"]["val_bce_denoise"] > 0
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    ck = load_checkpoint(tmp_path / "checkpoint.h5")
    assert ck.model_config["arch"] == "mlp:16" and ck.state["step"] == 10
    assert ck.history == history
    img = read_gray_png((tmp_path / "samples.png").read_bytes())
    assert img.shape == (2 * (3 * 30 + 2), 2 * (10 * 30 + 2))  # 3 rows x 10 images, padded, x2
    assert img.min() < 64 < img.max()  # digits drawn on the grey padding, not a blank page


def test_train_shows_progress_and_final_bce(tmp_path):
    r = invoke("train", *TINY, "--out", tmp_path)
    assert r.exit_code == 0
    assert "epoch 2/2" in r.stderr and "ex/s" in r.stderr
    assert "final validation BCE" in r.stdout and "nats/example" in r.stdout


def test_resume_continues_the_run(tmp_path):
    assert invoke("train", *TINY, "--out", tmp_path).exit_code == 0
    r = invoke("train", "--resume", tmp_path / "checkpoint.h5", "--epochs", "3", "--out", tmp_path, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["step"] == 15
    assert len(load_checkpoint(tmp_path / "checkpoint.h5").history) == 3


def test_cosine_schedule_is_recorded_and_resume_keeps_its_epochs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert invoke("train", *TINY, "--out", a).exit_code == 0
    r = invoke("train", *TINY, "--lr-schedule", "cosine", "--out", b)
    assert r.exit_code == 0, r.output
    ck = load_checkpoint(b / "checkpoint.h5")
    assert ck.train_config["lr_schedule"] == "cosine" and ck.train_config["epochs"] == 2
    assert load_checkpoint(a / "checkpoint.h5").train_config["lr_schedule"] == "constant"
    assert not np.array_equal(ck.params, load_checkpoint(a / "checkpoint.h5").params)
    assert ck.optimizer["hyper"]["lr"] < 1e-4  # the rate of the last step: decayed
    # finished: no --epochs, its own total or another all say it cannot be extended (no circle of hints)
    for more in ([], ["--epochs", "2"], ["--epochs", "3"]):
        assert_user_error(invoke("train", "--resume", b / "checkpoint.h5", *more, "--out", b),
                          "start a new run")
    # a checkpoint from before the option trained at a constant rate: cosine is a difference
    from tinydae import Adam, restore_model
    from tinydae.checkpoint import save_checkpoint

    old = load_checkpoint(a / "checkpoint.h5")
    model = restore_model(old)
    opt = Adam(model)
    opt.load_state_dict(old.optimizer)
    config = {k: v for k, v in old.train_config.items() if k != "lr_schedule"}
    save_checkpoint(a / "checkpoint.h5", model, opt, dict(old.state), config, old.history)
    assert "lr_schedule" not in load_checkpoint(a / "checkpoint.h5").train_config
    assert_user_error(invoke("train", "--resume", a / "checkpoint.h5", "--lr-schedule", "cosine", "--epochs", "3",
                             "--out", a), "lr_schedule: checkpoint 'constant' vs requested 'cosine'")
    # a constant run extends as before
    assert invoke("train", "--resume", a / "checkpoint.h5", "--epochs", "3", "--out", a).exit_code == 0


def assert_user_error(result, fragment):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") or "Error:" in result.stderr, result.stderr
    assert fragment in result.stderr


def test_user_errors_are_one_clear_line(tmp_path):
    np.savez(tmp_path / "wide.npz", x=np.linspace(-1, 3, 90).reshape(10, 9))
    (tmp_path / "junk.h5").write_text("not hdf5")
    assert_user_error(invoke("train", "--data", tmp_path / "nope.gz", "--out", tmp_path), "no such file")
    assert_user_error(invoke("train", "--data", tmp_path / "wide.npz", "--out", tmp_path), "--rescale")
    assert_user_error(invoke("train", *TINY, "--corruption", "blur:1", "--out", tmp_path), "corruption")
    assert_user_error(invoke("train", *TINY, "--hidden", "10,x", "--out", tmp_path), "--hidden")
    assert_user_error(invoke("train", *TINY, "--lr", "-1", "--out", tmp_path), "lr")
    assert_user_error(invoke("train", *TINY, "--batch-size", "0", "--out", tmp_path), "batch")
    assert_user_error(invoke("train", "--backend", "cuda", "--out", tmp_path), "cuda")
    assert_user_error(invoke("train", "--resume", tmp_path / "junk.h5", "--out", tmp_path), "junk.h5")
    assert_user_error(invoke("train", "--activation", "gelu"), "gelu")  # click's own usage error


def test_resume_with_a_different_architecture_says_what_differs(tmp_path):
    assert invoke("train", *TINY, "--out", tmp_path).exit_code == 0
    r = invoke("train", "--resume", tmp_path / "checkpoint.h5", "--hidden", "32", "--out", tmp_path)
    assert_user_error(r, "arch: checkpoint 'mlp:16' vs requested 'mlp:32'")


def test_info_and_gradcheck():
    r = invoke("info", "--json")
    report = json.loads(r.stdout)
    assert report["backends"]["cpu"]["available"] and report["backends"]["auto"]["selects"] == "cpu"
    assert report["versions"]["numpy"] == np.__version__
    g = invoke("gradcheck", "--activation", "tanh", "--loss", "bce", "--json")
    assert g.exit_code == 0
    out = json.loads(g.stdout)
    assert out["worst"] < 1e-6 and len(out["results"]) == 2  # untied and tied


def test_console_script_runs_the_same_group():
    import importlib.metadata
    import os
    import shutil
    import subprocess
    import sys

    (ep,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "tinydae"]
    assert ep.value == "tinydae.cli:main"
    script = shutil.which("tinydae", path=os.path.dirname(sys.executable)) or shutil.which("tinydae")
    assert script, "the tinydae console script is not installed"
    r = subprocess.run([script, "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for command in cli.commands:  # the same click group as python cli.py
        assert command in r.stdout


def test_bench_kernels_prints_its_table():
    r = invoke("bench", "kernels", "--backend", "cpu", "--sizes", "4K", "--repeats", "2", "--no-save", "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    ops = {row["op"] for row in result["rows"]}
    assert {"sigmoid-BCE fwd+bwd", "corrupt gaussian", "adam update"} <= ops
    for row in result["rows"]:
        assert row["ms"] > 0 and row["GBps"] > 0 and row["speedup_vs_reference"] > 0
    assert_user_error(invoke("bench", "kernels", "--sizes", "lots"), "--sizes")


def test_bench_train_and_chain_tables():
    r = invoke("bench", "train", "--backend", "cpu", "--batches", "8", "--repeats", "2", "--no-compile",
               "--no-save", "--json")
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)["rows"][0]
    assert row["batch"] == 8 and row["ms"] > 0 and row["floor_ms"] > 0 and row["x_floor"] > 0
    r = invoke("bench", "chain", "--backend", "cpu", "--chains", "4:3", "--repeats", "1", "--no-compile", "--no-save",
               "--json")
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)["rows"][0]
    assert row["chains"] == 4 and row["steps"] == 3 and row["host_syncs_per_step"] == 0
    assert_user_error(invoke("bench", "chain", "--chains", "4"), "--chains")
    assert_user_error(invoke("bench", "train", "--batches", "0"), "--batches")


def test_more_user_errors(tmp_path):
    np.savez(tmp_path / "rows.npz", x=np.random.default_rng(0).random((40, 10)).astype(np.float32))
    assert_user_error(invoke("train", "--seed", "-1", "--out", tmp_path), "--seed")
    assert_user_error(invoke("reproduce", "--quick", "--data", tmp_path / "rows.npz", "--out", tmp_path / "r"),
                      "square images")
    assert_user_error(invoke("train", "--val-fraction", "1.5", "--limit", "100", "--out", tmp_path), "fraction")


def test_library_rejects_negative_seeds():
    from tinydae import ConfigError, DAE, DataError, fit, glyphs
    with pytest.raises(DataError):
        glyphs(10, seed=-1)
    with pytest.raises(DataError):
        glyphs(10).split(0.2, seed=-3)
    with pytest.raises(ConfigError):
        fit(DAE(784, hidden=(4,)), glyphs(20), epochs=1, seed=-1)


def test_a_scheduled_resume_trains_to_the_total_it_started_with():
    """An interrupted cosine run resumed with no --epochs goes on to its own total, not the
    default 10; another total is refused with the one that works."""
    from types import SimpleNamespace

    from tinydae.errors import ConfigError
    from tinydae.runs import scheduled_epochs

    cut = SimpleNamespace(path="c.h5", train_config=dict(lr_schedule="cosine", epochs=20), state=dict(epoch=12))
    assert scheduled_epochs(cut, None, 10) == 20 and scheduled_epochs(cut, 20, 10) == 20
    with pytest.raises(ConfigError, match="resume it with --epochs 20"):
        scheduled_epochs(cut, 30, 10)
    for config in (dict(lr_schedule="constant", epochs=20), dict(epochs=20)):  # the second: before the option
        plain = SimpleNamespace(path="c.h5", train_config=config, state=dict(epoch=12))
        assert scheduled_epochs(plain, None, 10) == 10 and scheduled_epochs(plain, 30, 10) == 30
