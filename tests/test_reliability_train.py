"""Issue 10, data loading, train, fit() and gradcheck: every bad input or fault ends in one clear
`error: ...` line and exit 2 (or the signal's conventional code), checked before any work,
with nothing lost."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

import tinydae
from tinydae import (DAE, SGD, ConfigError, DataError, TrainingDiverged, TrainState, fit, glyphs,
                     load_checkpoint, load_dataset)
from tinydae.cli import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--limit", "300", "--hidden", "8", "--epochs", "1", "--backend", "cpu"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_error(result, *fragments, after_start=False):
    """One `error: ...` line on stderr, exit 2, no traceback, naming each fragment.
    after_start: training had begun, so its banner line comes first."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 + after_start and lines[-1].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


def rows(n=60, d=9, seed=0):
    return np.random.default_rng(seed).uniform(0.05, 0.95, (n, d)).astype(np.float32)


# -- item 1: a file named like a built-in is the file ------------------------------------------


def test_a_file_whose_name_starts_with_gmm_is_read_as_that_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez("gmm_samples.npz", x=rows(d=9))
    d = load_dataset("gmm_samples.npz")
    assert d.dim == 9 and d.density is None  # not the 2-D built-in mixture
    r = invoke("train", "--data", "gmm_samples.npz", "--hidden", "4", "--epochs", "1", "--backend", "cpu",
               "--out", "run", "--json")
    assert r.exit_code == 0, r.output
    assert load_checkpoint("run/checkpoint.h5").model_config["input_dim"] == 9
    assert load_dataset("gmm:3").dim == 3 and load_dataset("gmm").dim == 2  # the built-ins still work


@pytest.mark.parametrize("name", ["glyph", "gmm:x", "gmm_samples.npz", "gmm:2.npz"])
def test_a_name_that_is_neither_file_nor_built_in_lists_the_built_ins(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="no such file, and not a built-in data set") as info:
        load_dataset(name)
    assert "glyphs, gmm or gmm:D" in str(info.value)
    line = assert_error(invoke("train", "--data", name, "--out", "run"), name, "no such file", "built-in data")
    assert "use 'glyphs'" not in line
    assert not os.path.exists("run/checkpoint.h5")


# -- item 6: broken .npz files -----------------------------------------------------------------


def test_broken_npz_files_get_one_clear_error(tmp_path):
    import zipfile

    (tmp_path / "empty.npz").write_bytes(b"")
    (tmp_path / "random.npz").write_bytes(np.random.default_rng(1).bytes(300))
    np.savez(tmp_path / "none.npz")
    with zipfile.ZipFile(tmp_path / "member.npz", "w") as z:
        z.writestr("x.npy", b"not an array")
    cases = {"empty.npz": "empty file (0 bytes)", "random.npz": "not a .npz file",
             "none.npz": "holds no arrays", "member.npz": "member 'x' is not a NumPy array"}
    for name, fragment in cases.items():
        with pytest.raises(DataError, match=re.escape(fragment)):
            load_dataset(tmp_path / name)
        line = assert_error(invoke("train", "--data", tmp_path / name, "--out", tmp_path / "run"), fragment)
        assert "pickled" not in line and "Aborted" not in line


# -- item 2: another run in --out, and two runs at once ----------------------------------------


def test_train_refuses_an_out_that_holds_another_run(tmp_path):
    out = tmp_path / "run"
    assert invoke("train", *TINY, "--out", out).exit_code == 0
    before = (out / "checkpoint.h5").read_bytes(), (out / "history.json").read_bytes()
    assert_error(invoke("train", *TINY, "--out", out), f"--out {out} already holds a run",
                 "--overwrite", f"--resume {out / 'checkpoint.h5'}")
    assert ((out / "checkpoint.h5").read_bytes(), (out / "history.json").read_bytes()) == before  # nothing lost
    # resuming a *different* run into it would replace this one as well
    assert invoke("train", *TINY, "--out", tmp_path / "other").exit_code == 0
    assert_error(invoke("train", "--resume", tmp_path / "other" / "checkpoint.h5", "--epochs", "2", "--out", out),
                 "continues a different run")
    # a history.json alone is a run too
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "history.json").write_text("[]")
    assert_error(invoke("train", *TINY, "--out", tmp_path / "h"), "already holds a run (history.json)")
    r = invoke("train", *TINY, "--hidden", "6", "--out", out, "--overwrite", "--json")
    assert r.exit_code == 0, r.output
    assert load_checkpoint(out / "checkpoint.h5").model_config["arch"] == "mlp:6"
    assert not (out / ".lock").exists()  # the lock goes with the run


def test_a_stale_lock_file_does_not_block(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("999999\n")  # left by a run killed with -9: no process holds it
    assert invoke("train", *TINY, "--out", out).exit_code == 0


def test_sigterm_saves_like_sigint_and_a_second_run_cannot_share_the_out(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "cli.py"), "train", "--limit", "3000",
                             "--hidden", "64", "--epochs", "200", "--out", str(out),
                             "--checkpoint-every", "0", "--backend", "cpu"],
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint.h5").exists() and time.time() < deadline:
            time.sleep(0.1)  # the first epoch-end checkpoint: the run holds its lock
        assert (out / ".lock").read_text().strip() == str(proc.pid)
        second = invoke("train", *TINY, "--out", out, "--overwrite")
        assert_error(second, f"--out {out} is in use by another run (pid {proc.pid})")
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err  # 128 + SIGTERM, as a shell reports it
    assert "Traceback" not in err
    step = int(err.split("interrupted at step ")[1].split()[0])
    assert f"by SIGTERM; checkpoint saved to {out / 'checkpoint.h5'}" in err
    ck = load_checkpoint(out / "checkpoint.h5")
    assert ck.state["step"] == step > 0
    assert not (out / ".lock").exists()


# -- item 4: output paths checked before any work ----------------------------------------------


def test_train_checks_every_output_path_before_training(tmp_path, monkeypatch):
    def no_training(*a, **k):
        raise AssertionError("trained before the output paths were checked")

    monkeypatch.setattr(tinydae, "fit", no_training)
    monkeypatch.setattr(tinydae, "load_dataset", no_training)
    (tmp_path / "file").write_text("x")
    assert_error(invoke("train", *TINY, "--out", tmp_path / "file"), "is a file; give a directory")
    assert_error(invoke("train", *TINY, "--out", tmp_path / "file" / "run"), "which is a file, not a folder")
    for name in ("checkpoint.h5", "history.json", "samples.png"):
        out = tmp_path / f"d-{name}"
        (out / name).mkdir(parents=True)
        assert_error(invoke("train", *TINY, "--out", out), f"{out / name} is a directory, where train writes")


# -- item 5: sizes ------------------------------------------------------------------------------


def test_a_huge_model_is_refused_before_allocation(tmp_path, monkeypatch):
    line = assert_error(invoke("train", *TINY, "--hidden", "10000000", "--out", tmp_path / "run"),
                        "training a 784-10000000-784 DAE", "needs about", "use a smaller --arch (--hidden)")
    assert "MemoryError" not in line
    assert not (tmp_path / "run" / "checkpoint.h5").exists()
    from tinydae import safety  # the estimate counts params, grads, moments and activations

    monkeypatch.setattr(safety, "available_memory", lambda: 100 * 2**20)
    assert_error(invoke("train", *TINY, "--hidden", "20000", "--out", tmp_path / "run"), "needs about")


def test_a_memory_error_anyway_becomes_one_line(tmp_path, monkeypatch):
    def out_of_memory(*a, **k):
        raise MemoryError("Unable to allocate 58.4 GiB for an array")

    monkeypatch.setattr(tinydae, "DAE", out_of_memory)
    assert_error(invoke("train", *TINY, "--out", tmp_path / "a"), "ran out of memory building the 784-8-784 DAE",
                 "--hidden")
    monkeypatch.undo()
    monkeypatch.setattr(tinydae, "fit", out_of_memory)
    assert_error(invoke("train", *TINY, "--out", tmp_path / "b"), "ran out of memory training", after_start=True)


# -- item 7: messages that must not lie --------------------------------------------------------


def test_a_diverged_run_names_a_checkpoint_only_when_one_was_written(tmp_path):
    train = glyphs(200, seed=0)  # 4 steps of 50 per epoch
    model = DAE(784, hidden=(16,), seed=0)
    model.named_params["enc0.b"][3] = np.nan  # the first loss is NaN: diverges before any save
    with pytest.raises(TrainingDiverged, match="step 1 ") as info:
        fit(model, train, None, epochs=2, batch_size=50, checkpoint_path=str(tmp_path / "never.h5"))
    assert str(info.value).endswith("; no checkpoint was written") and "last good" not in str(info.value)
    assert not (tmp_path / "never.h5").exists()

    path = tmp_path / "resumed.h5"  # a resumed session that diverges before its first save
    model = DAE(784, hidden=(16,), seed=0)
    opt = tinydae.Adam(model)
    fit(model, train, None, optimizer=opt, epochs=1, batch_size=50, checkpoint_path=str(path))
    model.named_params["enc0.b"][3] = np.nan
    with pytest.raises(TrainingDiverged) as info:
        fit(model, train, None, optimizer=opt, epochs=2, batch_size=50, state=TrainState(step=4, epoch=1),
            checkpoint_path=str(path))
    assert f"no checkpoint was written in this session; {path} is as it was" in str(info.value)

    model = DAE(784, hidden=(32,), seed=0)  # saved every step until the blow-up
    with pytest.raises(TrainingDiverged) as info:
        fit(model, glyphs(400, seed=0), None, optimizer=SGD(model, lr=1e4, momentum=0.9), epochs=50,
            batch_size=40, checkpoint_path=str(tmp_path / "every.h5"), checkpoint_every=1)
    step = info.value.step
    assert f"the last good checkpoint is {tmp_path / 'every.h5'} (step {step - 1})" in str(info.value)


def test_resuming_a_finished_run_says_so(tmp_path):
    assert invoke("train", *TINY, "--epochs", "2", "--out", tmp_path / "a").exit_code == 0
    ckpt = tmp_path / "a" / "checkpoint.h5"
    for epochs in ("1", "2"):
        assert_error(invoke("train", "--resume", ckpt, "--epochs", epochs, "--out", tmp_path / "new"),
                     "already has 2 completed epoch(s)", "pass --epochs 3 or more")
    assert not (tmp_path / "new" / "checkpoint.h5").exists()  # and no path it never wrote is printed
    ck = load_checkpoint(ckpt)
    model = tinydae.restore_model(ck)
    with pytest.raises(ConfigError, match=re.escape("already has 2 completed epoch(s)")):  # fit() is no silent no-op
        fit(model, glyphs(300).split(0.1)[0], epochs=2, state=TrainState.from_checkpoint(ck))


def test_fit_refuses_data_outside_0_1_or_not_finite():
    model = DAE(784, hidden=(8,), seed=0)
    raw = glyphs(50).x * 255  # raw 8-bit pixel values as floats
    with pytest.raises(DataError, match=r"training data lies in \[0, 255\].*rescale"):
        fit(model, raw, epochs=1)
    bad = glyphs(50).x.copy()
    bad[7, 3] = np.nan
    with pytest.raises(DataError, match="NaN or infinite values .*row 7"):
        fit(model, bad, epochs=1)
    with pytest.raises(DataError, match=r"validation data lies in \[-1"):
        fit(model, glyphs(50).x, glyphs(10).x - 1, epochs=1)


def test_checkpoints_record_the_absolute_data_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.savez("rows.npz", x=rows(n=200, d=16, seed=2))
    assert invoke("train", "--data", "rows.npz", "--hidden", "4", "--epochs", "1", "--backend", "cpu",
                  "--out", "run").exit_code == 0
    ckpt = tmp_path / "run" / "checkpoint.h5"
    assert load_checkpoint(ckpt).train_config["data"] == str(tmp_path / "rows.npz")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # evaluate and improve find the data from another folder
    r = invoke("improve", ckpt, "--from", "pca", "--n", "4", "--steps", "1", "--out", "s.png", "--backend", "cpu")
    assert r.exit_code == 0, r.output
    os.rename(tmp_path / "rows.npz", tmp_path / "moved.npz")
    r = invoke("improve", ckpt, "--from", "pca", "--n", "4", "--steps", "1", "--out", "s2.png", "--backend", "cpu")
    assert_error(r, f"{tmp_path / 'rows.npz'}: no such file", f"recorded in {ckpt}", "pass --data",
                 after_start=True)  # after the progress line "loading the data for the pca starting points ..."
    assert_error(invoke("train", "--resume", ckpt, "--epochs", "2", "--out", tmp_path / "run"),
                 f"recorded in {ckpt}", "pass --data")
    r = invoke("train", "--resume", ckpt, "--data", tmp_path / "moved.npz", "--epochs", "2", "--out", tmp_path / "run")
    assert r.exit_code == 0, r.output  # the same data, moved: --data says where it is now
    assert load_checkpoint(ckpt).train_config["data"] == str(tmp_path / "moved.npz")


# -- item 6: gradcheck --------------------------------------------------------------------------


@pytest.mark.parametrize("tol", ["nan", "inf", "0", "-1e-6"])
def test_gradcheck_tolerance_must_be_finite_and_positive(tol):
    assert_error(invoke("gradcheck", "--tol", tol), "--tol must be a finite positive number")


def test_gradcheck_fails_with_exit_1_also_on_a_nan_error(monkeypatch):
    r = invoke("gradcheck", "--activation", "tanh", "--loss", "bce", "--tied", "no", "--tol", "1e-30")
    assert r.exit_code == 1 and "FAIL" in r.stdout
    import tinydae.gradcheck

    monkeypatch.setattr(tinydae.gradcheck, "check_model", lambda model, x, t: {"enc0.W": float("nan")})
    r = invoke("gradcheck", "--activation", "tanh", "--loss", "bce", "--tied", "no", "--json")
    assert r.exit_code == 1
    out = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert out["passed"] is False and out["results"][0]["errors"]["enc0.W"] is None
