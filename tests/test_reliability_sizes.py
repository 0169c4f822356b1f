"""Issue 19, sizes: everything that allocates from user input is estimated before it allocates
(one `error:` line, never a MemoryError traceback), with the real batch bound min(batch, rows);
gradcheck estimates its time; bench sizes are parsed strictly."""
import time

import numpy as np
import pytest
from click.testing import CliRunner

from test_reliability_sample import assert_one_error_line as assert_refused  # one error: line, exit 2
from tinydae.cli import cli


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)




@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_huge_gmm_data_is_refused_by_its_size():
    assert_refused(invoke("train", "--data", "gmm:100000000000", "--epochs", "1", "--backend", "cpu"),
                   "gmm:100000000000 data (10,000 rows of 100,000,000,000 values) needs about", "of memory")


def test_the_theorem_check_estimates_every_dimension_first_and_names_sigma():
    t = time.perf_counter()
    assert_refused(invoke("evaluate", "--theorem", "--dims", "2,100000000000", "--epochs", "1"),
                   "the --theorem check on gmm:100000000000 needs about")
    assert time.perf_counter() - t < 10  # refused before gmm:2 trained
    assert_refused(invoke("evaluate", "--theorem", "--sigma", "inf"), "--sigma must be a finite number > 0")
    assert_refused(invoke("evaluate", "--theorem", "--sigma", "nan"), "--sigma")


def test_classifier_sizes_from_hidden_widths_and_labels_are_estimated(tmp_path):
    assert_refused(invoke("classifier", "train", "--hidden", "1000000000", "--limit", "300", "--epochs", "1"),
                   "a classifier of 784-1000000000-10", "needs about")
    rows = np.random.default_rng(0).uniform(0, 1, (20, 16)).astype(np.float32)
    np.savez(tmp_path / "good.npz", x=rows)
    labels = np.arange(20) % 3
    labels[7] = 10**12  # one bad label makes a 10^12-class one-hot
    np.savez(tmp_path / "labels_huge.npz", y=labels)
    assert_refused(invoke("classifier", "train", "--data", "good.npz", "--labels", "labels_huge.npz",
                          "--epochs", "1"), "1,000,000,000,001 classes: labels up to 1,000,000,000,000")


def test_gradcheck_estimates_its_time_before_it_runs():
    t = time.perf_counter()
    assert_refused(invoke("gradcheck", "--input-dim", "3000", "--hidden", "1000"),
                   "gradcheck checks each of the 6,004,000 parameters", "minutes")
    assert time.perf_counter() - t < 5
    assert invoke("gradcheck").exit_code == 0  # the default still runs


def test_a_batch_larger_than_the_data_is_bounded_by_the_rows():
    r = invoke("train", "--limit", "300", "--hidden", "8", "--epochs", "1", "--batch-size", "1000000000",
               "--backend", "cpu", "--out", "run")
    assert r.exit_code == 0, r.output  # one batch of 270 rows, not a 17.5 TiB refusal


@pytest.mark.parametrize("sizes", ["", ",", "inf", "1e30", "nan", "0", "-4K", "4Q"])
def test_bench_sizes_are_parsed_strictly(sizes):
    assert_refused(invoke("bench", "kernels", "--backend", "cpu", "--repeats", "1", "--sizes", sizes),
                   "--sizes takes element counts from 1 to")


def test_gradcheck_runs_past_its_estimate_when_asked():
    assert_refused(invoke("gradcheck", "--input-dim", "100", "--hidden", "50", "--max-seconds", "1"),
                   "over --max-seconds 1")
    r = invoke("gradcheck", "--input-dim", "100", "--hidden", "50", "--activation", "relu", "--loss", "bce",
               "--tied", "no")
    assert r.exit_code == 0, r.output  # one 100-50 model: about 2 s, under the default 120


def test_the_api_estimates_before_it_allocates_too():
    """The library entries the CLI guards: a model's parameters (flat_buffers: the DAE and the
    classifier alike), chain's kept states and fit's training arrays; never a MemoryError."""
    import tinydae as td
    from tinydae.errors import ConfigError

    with pytest.raises(ConfigError, match="a model of 15,690,000,000,784 parameters needs about"):
        td.DAE(784, hidden=(10**10,))
    small = td.DAE(4, hidden=(3,))
    x = np.full((2, 4), 0.5, np.float32)
    with pytest.raises(ConfigError, match="2 chains of 4 values x 1,000,000,000,000 steps needs about"):
        td.chain(small, x, 10**12, corruption="none")
    td.fit(small, x, epochs=1, batch_size=10**13)  # batches cannot exceed the 2 rows: no refusal
