import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from tinydae.cli import cli
from tinydae.experiments import theorem_check


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_theorem_holds_for_the_bce_dae_on_2d_gmm():
    r = theorem_check(dim=2, sigma=0.1, n_train=10000, n_eval=1000, hidden=(64, 64), epochs=5, seed=1)
    bce, mse = r["results"]["bce"], r["results"]["mse"]
    assert bce["cosine_mean"] >= 0.8, bce
    assert bce["rel_error_median"] < 0.6
    assert mse["cosine_mean"] >= 0.8  # the MSE DAE, the paper's comparison, also agrees


def test_theorem_fails_for_an_untrained_model_so_the_check_can_fail():
    r = theorem_check(dim=2, sigma=0.1, n_train=256, n_eval=500, hidden=(8,), epochs=1, lr=1e-6, seed=0)
    assert r["results"]["bce"]["cosine_mean"] < 0.8


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    r = invoke("train", "--limit", "1500", "--hidden", "64", "--epochs", "2", "--backend", "cpu", "--out", out)
    assert r.exit_code == 0, r.output
    return out / "checkpoint.h5"


def test_cli_sample_writes_strip_and_h5(checkpoint, tmp_path):
    # batches of 4 chains: the 10 chains drawn in the strip span three batches
    r = invoke("sample", checkpoint, "--n", "12", "--steps", "6", "--keep-every", "3", "--out", tmp_path / "s.png",
               "--h5", tmp_path / "c.h5", "--json", "--backend", "cpu", "--batch-size", "4")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["kept_steps"] == [0, 3, 6] and summary["corruption"] == "gaussian:0.3"
    assert len(summary["mean_abs_change"]) == 6
    with h5py.File(tmp_path / "c.h5") as f:
        assert f["samples"].shape == (12, 784) and f["trajectory"].shape == (10, 3, 784)
        np.testing.assert_array_equal(f["trajectory"][:, -1], f["samples"][:10])
        assert np.all(f["trajectory"][:, 0] != f["trajectory"][:, -1], axis=1).any()
    assert (tmp_path / "s.png").stat().st_size > 0


def test_cli_improve_from_a_file_and_from_pca(checkpoint, tmp_path):
    np.savez(tmp_path / "mine.npz", x=np.random.default_rng(0).random((5, 784)).astype(np.float32))
    r = invoke("improve", checkpoint, "--from", tmp_path / "mine.npz", "--steps", "3", "--out", tmp_path / "i.png",
               "--json", "--backend", "cpu")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["chains"] == 5
    r = invoke("improve", checkpoint, "--steps", "2", "--n", "8", "--out", tmp_path / "p.png", "--backend", "cpu")
    assert r.exit_code == 0 and "from pca" in r.stdout


def test_cli_evaluate(checkpoint):
    r = invoke("evaluate", checkpoint, "--n-samples", "60", "--steps", "3", "--json", "--backend", "cpu")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["reconstruction"]["val_bce_clean"] > 0
    assert out["chain"]["parzen_ll"] > out["start"]["parzen_ll"]  # chains from noise beat the noise


def test_cli_science_errors(checkpoint, tmp_path):
    for args, fragment in [(("sample", checkpoint, "--start", "gan"), "gan"),
                           (("sample", checkpoint, "--steps", "-1"), "--steps"),
                           (("sample", tmp_path / "none.h5"), "no such"),
                           (("evaluate",), "CHECKPOINT"),
                           (("evaluate", "--theorem", "--dims", "x"), "--dims"),
                           (("sample", checkpoint, "--chain-corruption", "blur:2"), "corruption")]:
        r = invoke(*args)
        assert r.exit_code == 2 and fragment in r.stderr and "Traceback" not in r.output, (args, r.output)


def test_cli_reproduce_quick_writes_a_report(tmp_path):
    r = invoke("reproduce", "--quick", "--out", tmp_path, "--backend", "cpu")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "report.json").read_text())
    theorem = {t["dim"]: t["results"]["bce"]["cosine_mean"] for t in report["claims"]["theorem"]}
    assert theorem[2] > 0.8 and theorem[16] > 0.8
    noise = report["claims"]["chains_from_noise"]["bce"]
    assert noise[-1]["parzen_ll"] > noise[0]["parzen_ll"]  # claim 2 on the built-in data
    md = (tmp_path / "report.md").read_text()
    assert "## Claim 1" in md and "## Claim 3" in md and "chains_from_noise_bce.png" in md
    assert (tmp_path / "improve_pca_mse.png").exists()
