"""Issue 19, data loss: no command writes over an existing file it did not create in this run
unless --overwrite is given, never over an input of the same command (also through links), and
`train --overwrite` keeps the old run until the new one has saved its first checkpoint.

The rule lives in one place (tinydae.safety.check_output_file); these tests go through the CLI.
"""
import hashlib
import json
import os

import pytest
from click.testing import CliRunner

from test_reliability_sample import assert_one_error_line as assert_refused  # one error: line, exit 2
from tinydae.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()




@pytest.fixture
def ck(cli_checkpoint, tmp_path):
    """A copy of a checkpoint `train` wrote (the tests may try to damage it)."""
    path = tmp_path / "CK.h5"
    path.write_bytes(open(cli_checkpoint, "rb").read())
    return path


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


CHAIN = ["--n", "4", "--steps", "2", "--backend", "cpu"]


@pytest.mark.parametrize("command,option", [("sample", "--h5"), ("sample", "--out"), ("improve", "--out"),
                                            ("improve", "--h5")])
def test_sample_and_improve_never_write_over_their_checkpoint(ck, tmp_path, command, option):
    before = digest(ck)
    for extra in ([], ["--overwrite"]):
        r = invoke(command, ck, *CHAIN, option, ck, *extra)
        assert_refused(r, f"{option} {ck} is the checkpoint {ck} itself")
    link = tmp_path / "link.h5"
    os.symlink(ck, link)
    assert_refused(invoke(command, ck, *CHAIN, option, link, "--overwrite"), "is the checkpoint")
    assert digest(ck) == before


def test_a_second_sample_needs_overwrite_for_its_files(ck, tmp_path):
    png, h5 = tmp_path / "s.png", tmp_path / "s.h5"
    r = invoke("sample", ck, *CHAIN, "--out", png, "--h5", h5)
    assert r.exit_code == 0, r.output
    first = digest(h5)
    r = invoke("sample", ck, *CHAIN, "--seed", "1", "--out", tmp_path / "other.png", "--h5", h5)
    assert_refused(r, f"--h5 {h5} already exists; pass --overwrite")
    r = invoke("sample", ck, *CHAIN, "--seed", "1", "--out", png)
    assert_refused(r, f"--out {png} already exists; pass --overwrite")
    assert digest(h5) == first
    r = invoke("sample", ck, *CHAIN, "--seed", "1", "--out", png, "--h5", h5, "--overwrite")
    assert r.exit_code == 0, r.output
    assert digest(h5) != first
    assert_refused(invoke("sample", ck, *CHAIN, "--out", tmp_path / "x.png", "--h5", tmp_path / "x.png"),
                   "is also --out")


def test_bench_out_never_replaces_a_file_without_overwrite(ck, tmp_path):
    before = digest(ck)
    assert_refused(invoke("bench", "kernels", "--sizes", "4K", "--repeats", "1", "--out", ck),
                   f"--out {ck} already exists; pass --overwrite")
    assert digest(ck) == before
    existing = tmp_path / "old.json"
    existing.write_text('{"mine": 1}\n')
    assert_refused(invoke("bench", "kernels", "--sizes", "4K", "--repeats", "1", "--out", existing), "already exists")
    assert json.loads(existing.read_text()) == {"mine": 1}


def test_train_overwrite_keeps_the_old_run_when_the_new_one_fails_before_a_checkpoint(tmp_path):
    run = tmp_path / "RUN"
    base = ["train", "--limit", "200", "--hidden", "8", "--epochs", "1", "--backend", "cpu", "--out", run]
    assert invoke(*base).exit_code == 0
    files = {name: digest(run / name) for name in ("checkpoint.h5", "history.json", "samples.png")}
    r = invoke(*base, "--overwrite", "--optimizer", "sgd", "--lr", "1e30")
    assert r.exit_code == 3, r.output
    assert "the run that was in" in r.stderr and "is back in place" in r.stderr
    assert {name: digest(run / name) for name in files} == files  # the old run, whole
    assert not [p for p in run.iterdir() if p.name.startswith(".replaced")]
    r = invoke(*base, "--overwrite", "--seed", "4")
    assert r.exit_code == 0, r.output
    assert digest(run / "checkpoint.h5") != files["checkpoint.h5"]
    assert not [p for p in run.iterdir() if p.name.startswith(".replaced")]  # the old run, deleted


def test_classifier_reproduce_and_build_cuda_refuse_to_replace(tmp_path):
    data = tmp_path / "data.npz"
    data.write_bytes(b"not really")
    assert_refused(invoke("classifier", "train", "--data", data, "--out", data, "--overwrite"),
                   f"--out {data} is --data {data} itself")
    report = tmp_path / "rep"
    report.mkdir()
    (report / "report.md").write_text("an earlier report")
    assert_refused(invoke("reproduce", "--quick", "--out", report), "already holds a report (report.md)")
    assert (report / "report.md").read_text() == "an earlier report"
    samples = tmp_path / "samples"  # no report, but a file of the same name as one reproduce writes
    samples.mkdir()
    (samples / "noise_ddim_nc.npz").write_bytes(b"someone's samples")
    assert_refused(invoke("reproduce", "--quick", "--out", samples), "already holds files reproduce writes "
                   "(noise_ddim_nc.npz)")
    assert (samples / "noise_ddim_nc.npz").read_bytes() == b"someone's samples"
    build = tmp_path / "bundle"
    build.mkdir()
    (build / "manifest.json").write_text("{}")
    assert_refused(invoke("build-cuda", "--out", build), "already holds a build (manifest.json)")
    assert (build / "manifest.json").read_text() == "{}"


# -- review findings ---------------------------------------------------------------------------


def test_an_interrupt_before_the_first_regular_checkpoint_keeps_the_old_run(tmp_path):
    """Ctrl-C right after a mistaken --overwrite: the interrupt's own checkpoint is not a reason to
    delete the old run; it comes back, and the interrupted run waits in .interrupted-PID/."""
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "RUN"
    base = ["train", "--hidden", "8", "--epochs", "1", "--backend", "cpu", "--out", run]
    assert invoke(*base, "--limit", "200").exit_code == 0
    before = {name: digest(run / name) for name in ("checkpoint.h5", "history.json", "samples.png")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # an epoch of 9,000 single-row steps of a 784-256-784 model: seconds before its first regular save
    p = subprocess.Popen([sys.executable, os.path.join(root, "cli.py"), *map(str, base), "--overwrite", "--epochs", "3",
                          "--hidden", "256", "--batch-size", "1", "--checkpoint-every", "0"], stderr=subprocess.PIPE,
                         text=True, cwd=tmp_path)
    banner = p.stderr.readline()  # printed once the old run is aside and training starts
    assert " on glyphs: " in banner, banner
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    err = p.stderr.read()
    assert p.wait(timeout=120) == 130, err
    assert "epoch 1/3  train" not in err, "the first epoch ended first: the test's timing failed, not the code"
    assert "the run that was in" in err and "is back in place" in err, err
    assert {name: digest(run / name) for name in before} == before
    interrupted = [q for q in run.iterdir() if q.name.startswith(".interrupted-")]
    if "checkpoint saved" in err:  # the interrupt's own checkpoint: kept aside, resumable
        assert "the new run's files are in" in err and (interrupted[0] / "checkpoint.h5").exists()
    assert not [q for q in run.iterdir() if q.name.startswith(".replaced-")]


def test_a_run_left_aside_by_kill_9_is_put_back(tmp_path):
    run = tmp_path / "RUN"
    assert invoke("train", "--limit", "200", "--hidden", "8", "--epochs", "1", "--backend", "cpu",
                  "--out", run).exit_code == 0
    old = digest(run / "checkpoint.h5")
    aside = run / ".replaced-999999999"  # a PID no process has
    aside.mkdir()
    for name in ("checkpoint.h5", "history.json", "samples.png"):
        os.replace(run / name, aside / name)
    r = invoke("train", "--limit", "200", "--hidden", "8", "--epochs", "1", "--backend", "cpu", "--out", run)
    note, error = r.stderr.strip().splitlines()
    assert note.startswith(f"note: {run} held the run an interrupted `train --overwrite` had moved aside")
    assert r.exit_code == 2 and error.startswith(f"error: --out {run} already holds a run")  # back: --overwrite again
    assert digest(run / "checkpoint.h5") == old and not aside.exists()


def test_outputs_never_replace_the_recorded_training_data(tmp_path):
    import numpy as np

    data = tmp_path / "data.npz"
    np.savez(data, x=np.random.default_rng(0).uniform(0, 1, (60, 16)).astype(np.float32))
    assert invoke("train", "--data", data, "--hidden", "4", "--epochs", "1", "--backend", "cpu",
                  "--out", tmp_path / "r").exit_code == 0
    before = digest(data)
    r = invoke("sample", tmp_path / "r" / "checkpoint.h5", *CHAIN, "--start", "pca", "--h5", data, "--overwrite")
    assert_refused(r, f"--h5 {data} is the training data recorded in the checkpoint")
    assert digest(data) == before


def test_train_does_not_replace_a_lone_samples_png_and_slashes_name_folders(tmp_path, ck):
    other = tmp_path / "other"
    other.mkdir()
    (other / "samples.png").write_bytes(b"my picture")
    assert_refused(invoke("train", "--limit", "200", "--hidden", "8", "--epochs", "1", "--backend", "cpu",
                          "--out", other), "already holds a run (samples.png)")
    assert (other / "samples.png").read_bytes() == b"my picture"
    assert_refused(invoke("sample", ck, *CHAIN, "--h5", "nd/"), "--h5 nd/ names a directory")
    assert not (tmp_path / "runs" / "sample.png").exists()  # refused before the chains wrote the default PNG


def test_the_default_png_is_replaced_without_overwrite(ck, tmp_path):
    for seed in ("1", "2"):  # runs/sample.png is tinydae's own scratch output
        r = invoke("sample", ck, *CHAIN, "--seed", seed)
        assert r.exit_code == 0, r.output
    assert (tmp_path / "runs" / "sample.png").exists()
