"""Issue 11, part 2: samplers that really sample (bernoulli / GSN, langevin, annealed) beside the
mean chain, and the noise-range corruption annealing trains with.

Each update rule is checked against a direct NumPy computation of the same step from the
reference Philox draws; then batch-size independence, seeds, the eta -> 0 limit, a density
check on known-density data, memory, host reads and the CLI."""
import json
import math
import tracemalloc

import numpy as np
import pytest
from click.testing import CliRunner

import tinydae as td
from tinydae import ConfigError, sampling
from tinydae.backend import HOST_READS
from tinydae.cli import cli
from tinydae.corruption import Corruption, gaussian
from tinydae.kernels.reference import philox_normal, philox_uniform
from tinydae.rng import STREAM_CHAIN, STREAM_GSN, STREAM_LANGEVIN, STREAM_NOISE_LEVEL
from tinydae.sampling import chain, make_sampler, noise_start

N, D, SEED = 10, 12, 5


@pytest.fixture(scope="module")
def tiny():
    """Random weights, large enough that r(x) is far from constant."""
    model = td.DAE(D, hidden=(8,), seed=0)
    model.params[...] *= 3
    model.corruption = "gaussian:0.3"
    return model


def normals(t, stream, n=N * D):
    return philox_normal(n, SEED, t, stream).reshape(-1, D)


def uniforms(t, stream, n=N * D):
    return philox_uniform(n, SEED, t, stream).reshape(-1, D)


# -- update rules against NumPy ----------------------------------------------------------------


def test_bernoulli_chain_draws_from_r_of_the_corrupted_state(tiny):
    x0 = noise_start(N, D, seed=1)
    states = [x0]
    means = []
    for t in (1, 2, 3):
        p = tiny.reconstruct(states[-1] + np.float32(0.3) * normals(t, STREAM_CHAIN))
        means.append(p)
        states.append((uniforms(t, STREAM_GSN) < p).astype(np.float32))
    drawn = chain(tiny, x0, 3, sampler="bernoulli", final="sample", seed=SEED, batch_size=7)
    np.testing.assert_array_equal(drawn.samples, states[-1])
    assert set(np.unique(drawn.samples)) == {0.0, 1.0}
    np.testing.assert_array_equal(drawn.trajectory[:, 2], states[2])
    change = [np.abs(b.astype(np.float64) - a).mean() for a, b in zip(states, states[1:])]
    np.testing.assert_allclose(drawn.mean_abs_change, change, rtol=1e-12)
    shown = chain(tiny, x0, 3, sampler="bernoulli", seed=SEED, batch_size=7)  # final="mean"
    np.testing.assert_allclose(shown.samples, means[-1], atol=1e-6)  # the expected value of the last draw
    np.testing.assert_allclose(shown.trajectory[:, 1], means[0], atol=1e-6)
    change = [np.abs(b.astype(np.float64) - a).mean() for a, b in zip([x0] + means, means)]
    np.testing.assert_allclose(shown.mean_abs_change, change, rtol=1e-5)


@pytest.mark.parametrize("final", ["sample", "mean"])
def test_langevin_step_is_x_plus_eta_score_plus_noise(tiny, final):
    sigma, a = 0.3, 0.2  # eta = a sigma^2: drift a (r(x) - x), noise sqrt(2 a) sigma
    x = noise_start(N, D, seed=1)
    for t in (1, 2, 3):
        eta = a * sigma**2
        score = (tiny.reconstruct(x).astype(np.float64) - x) / sigma**2
        x = (x + eta * score + math.sqrt(2 * eta) * normals(t, STREAM_LANGEVIN)).astype(np.float32)
    r = chain(tiny, noise_start(N, D, seed=1), 3, sampler="langevin", final=final, step_size=a,
              seed=SEED, batch_size=7)
    np.testing.assert_allclose(r.samples, x if final == "sample" else tiny.reconstruct(x), atol=1e-5)
    assert (r.samples.min() < 0 or r.samples.max() > 1) == (final == "sample")  # states are not clipped


def test_annealed_runs_the_ladder_high_to_low(tiny):
    s = make_sampler("annealed", "gaussian:0.1..0.4", levels=3, step_size=0.5)
    np.testing.assert_allclose(s.sigmas, [0.4, 0.2, 0.1])
    assert [s.sigma(t, 6) for t in range(1, 7)] == [0.4, 0.4, 0.2, 0.2, 0.1, 0.1]
    assert [s.sigma(t, 4) for t in range(1, 5)] == [0.4, 0.4, 0.2, 0.1]  # 4 steps over 3 levels
    # fewer steps than levels: the chain still starts at the top and ends at the bottom
    ten = make_sampler("annealed", "gaussian:0.01..1", levels=10)
    for steps in (1, 2, 3, 7, 9):
        ladder = [ten.sigma(t, steps) for t in range(1, steps + 1)]
        assert ladder[-1] == ten.sigmas[-1] and (steps == 1 or ladder[0] == ten.sigmas[0])
        assert all(a > b for a, b in zip(ladder, ladder[1:]))  # no level twice, none back up
    x = noise_start(N, D, seed=2)
    for t in range(1, 5):
        sigma = s.sigma(t, 4)
        eta = 0.5 * sigma**2  # eta_i = eta * sigma_i^2 / sigma_L^2 with eta = 0.5 sigma_L^2
        x = x + eta * (tiny.reconstruct(x) - x) / sigma**2 + math.sqrt(2 * eta) * normals(t, STREAM_LANGEVIN)
    r = chain(tiny, noise_start(N, D, seed=2), 4, corruption="gaussian:0.1..0.4", sampler="annealed",
              levels=3, step_size=0.5, seed=SEED, final="sample")
    np.testing.assert_allclose(r.samples, x, atol=1e-5)


def test_langevin_with_eta_to_zero_is_the_identity(tiny):
    x0 = noise_start(N, D, seed=3)
    for sampler in ("langevin", "annealed"):
        kw = dict(corruption="gaussian:0.1..0.5", sampler=sampler, step_size=1e-12, seed=SEED)
        np.testing.assert_allclose(chain(tiny, x0, 20, final="sample", **kw).samples, x0, atol=1e-5)
        np.testing.assert_allclose(chain(tiny, x0, 20, **kw).samples, tiny.reconstruct(x0), atol=1e-5)


def test_the_mean_sampler_is_the_chain_as_before(tiny):
    x0 = noise_start(N, D, seed=3)
    a = chain(tiny, x0, 5, seed=SEED, batch_size=4)
    b = chain(tiny, x0, 5, seed=SEED, batch_size=4, sampler="mean", final="mean")
    np.testing.assert_array_equal(a.samples, b.samples)
    x = x0
    for t in range(1, 6):
        x = tiny.reconstruct(x + np.float32(0.3) * normals(t, STREAM_CHAIN))
    np.testing.assert_allclose(a.samples, x, atol=1e-6)


# -- batches, seeds, host reads ----------------------------------------------------------------

SAMPLER_CASES = [("mean", {}), ("bernoulli", {}), ("bernoulli", dict(final="sample")), ("langevin", {}),
                 ("langevin", dict(final="sample")), ("annealed", dict(levels=3)), ("ddim", {}),
                 ("ddim", dict(final="sample"))]


@pytest.mark.parametrize("sampler, kw", SAMPLER_CASES)
def test_samplers_are_batch_independent_reproducible_and_finite(tiny, sampler, kw):
    x0 = noise_start(64, D, seed=4)
    kw = dict(kw, corruption="gaussian:0.1..0.5", sampler=sampler, keep_chains=64)
    a = chain(tiny, x0, 12, seed=1, batch_size=64, **kw)
    b = chain(tiny, x0, 12, seed=1, batch_size=7, **kw)  # same draws, other GEMM shapes
    np.testing.assert_allclose(b.samples, a.samples, atol=1e-5)
    np.testing.assert_allclose(b.trajectory, a.trajectory, atol=1e-5)
    np.testing.assert_allclose(b.mean_abs_change, a.mean_abs_change, rtol=1e-5)
    np.testing.assert_array_equal(chain(tiny, x0, 12, seed=1, batch_size=7, **kw).samples, b.samples)
    assert not np.array_equal(chain(tiny, x0, 12, seed=2, batch_size=64, **kw).samples, a.samples)
    assert np.isfinite(a.trajectory).all() and (a.mean_abs_change > 0).all()


@pytest.mark.parametrize("sampler", ["bernoulli", "langevin"])
def test_no_host_reads_inside_the_step_loop(tiny, sampler):
    x0 = noise_start(30, D, seed=4)
    before = HOST_READS["count"]
    r = chain(tiny, x0, 300, sampler=sampler, keep_chains=0, keep_every=100, batch_size=16)
    assert r.host_syncs == 0
    assert HOST_READS["count"] - before == 2 * 2  # per batch: the change sums and the samples


def test_chain_memory_covers_the_samplers_measured_peak():
    model = td.DAE(784, hidden=(64,), seed=0, dtype="float64")
    x0 = noise_start(400, 784, seed=0)
    for sampler, final in (("bernoulli", "sample"), ("langevin", "mean")):
        chain(model, x0[:2], 2, "gaussian:0.3", sampler=sampler)  # compiled before tracing
        tracemalloc.start()
        chain(model, x0, 5, "gaussian:0.3", 1, 10, sampler=sampler, final=final)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        estimate = sampling.chain_memory(model, 400, 5, 1, 10, sampler=sampler)
        assert peak <= estimate, (sampler, peak, estimate)


# -- known density: Langevin climbs it ------------------------------------------------------


@pytest.fixture(scope="module")
def gmm_model():
    data = td.load_dataset("gmm:2", limit=8000)
    model = td.DAE(2, hidden=(32, 32), seed=0)
    td.fit(model, data, None, corruption="gaussian:0.1", epochs=4, batch_size=64)
    return model, data.density


def test_langevin_samples_the_smoothed_density_from_noise(gmm_model):
    """Raw Langevin states sample p_sigma, the data blurred by sigma = 0.1: from uniform noise
    they reach its typical log-density and spread and keep every mode's share; the shown r(x_T)
    lies near the data."""
    model, density = gmm_model
    x0 = noise_start(600, 2, seed=7)
    truth = density.sample(4000, 9) + 0.1 * np.random.default_rng(0).standard_normal((4000, 2))
    r = chain(model, x0, 200, sampler="langevin", step_size=0.1, seed=3, final="sample")
    typical = density.log_prob(truth, 0.1).mean()  # 1.10; uniform noise: -2.95
    assert abs(density.log_prob(r.samples, 0.1).mean() - typical) < 0.1  # measured 0.005
    np.testing.assert_allclose(r.samples.std(0), truth.std(0), rtol=0.1)  # measured 4 %
    # Components closer than 2 std are one mode (gmm:2 has two 0.03 apart): the first names it.
    gap = np.linalg.norm(density.means[:, None] - density.means[None], axis=-1)
    mode_of = np.array([np.flatnonzero(row < 2 * density.std)[0] for row in gap])

    def shares(x):
        return np.bincount(mode_of[((x[:, None] - density.means[None]) ** 2).sum(-1).argmin(1)],
                           minlength=len(gap)) / len(x)
    expected, modes = shares(truth), np.unique(mode_of)
    np.testing.assert_allclose(shares(r.samples)[modes], expected[modes], atol=0.08)
    shown = chain(model, x0, 200, sampler="langevin", step_size=0.1, seed=3)  # r(x_T): denoised
    data_level = density.log_prob(density.sample(600, 8)).mean()
    assert density.log_prob(shown.samples).mean() > data_level - 1.5


# -- the noise-range corruption ----------------------------------------------------------------


def test_noise_range_corruption_draws_a_log_uniform_level_per_row():
    c = Corruption.parse("gaussian:0.1..0.5")
    assert c == gaussian(0.1, 0.5) and str(c) == "gaussian:0.1..0.5" and c.sigmas == (0.1, 0.5)
    assert Corruption.parse(str(c)) == c
    backend = td.get_backend("cpu")
    x = noise_start(50, D, seed=1)
    out = c.apply(backend, x, 3, 4, STREAM_CHAIN, offset=20 * D)  # rows 20..69 of a larger set
    u = philox_uniform(50, 3, 4, STREAM_NOISE_LEVEL + STREAM_CHAIN, offset=20).astype(np.float64)
    levels = 0.1 * 5.0**u
    expected = x + (levels[:, None].astype(np.float32) * philox_normal(50 * D, 3, 4, STREAM_CHAIN, 20 * D).reshape(50, D))
    np.testing.assert_allclose(out, expected, atol=1e-6)
    np.testing.assert_allclose(c.apply(backend, x[5:], 3, 4, STREAM_CHAIN, offset=25 * D), out[5:], atol=1e-6)
    many = c.row_levels(backend, 20000, 0, 1)
    assert 0.1 <= many.min() and many.max() < 0.5
    assert abs(np.log(many).mean() - np.log(0.1 * 0.5) / 2) < 0.01  # log-uniform: its log mean
    for bad in ("gaussian:0.5..0.1", "gaussian:0..0.3", "masking:0.1..0.2", "gaussian:0.1..", "gaussian:0.1..inf"):
        with pytest.raises(ConfigError):
            Corruption.parse(bad)


def test_a_model_trained_across_levels_remembers_its_range():
    model = td.DAE(4, hidden=(3,))
    td.fit(model, td.load_dataset("gmm:4", limit=128), td.load_dataset("gmm:4", limit=32),
           corruption="gaussian:0.1..0.5", epochs=1)
    assert model.corruption == "gaussian:0.1..0.5"
    r = chain(model, noise_start(5, 4), 4, sampler="annealed", levels=2)
    assert np.isfinite(r.samples).all()


def test_sampler_option_errors(tiny):
    x0 = noise_start(2, D)
    for kw, fragment in [(dict(sampler="gibbs"), "unknown sampler"),
                         (dict(sampler="langevin", step_size=0), "step size"),
                         (dict(sampler="langevin", step_size=1.5), "step size"),
                         (dict(sampler="langevin", step_size=float("nan")), "step size"),
                         (dict(sampler="mean", step_size=0.1), "applies to"),
                         (dict(sampler="bernoulli", levels=3), "applies to"),
                         (dict(sampler="annealed", levels=1, corruption="gaussian:0.1..0.3"), "levels"),
                         (dict(sampler="annealed"), "range of noise levels"),
                         (dict(sampler="langevin", corruption="masking:0.3"), "Gaussian"),
                         (dict(sampler="mean", final="sample"), "already the mean"),
                         (dict(sampler="bernoulli", final="median"), "unknown final")]:
        with pytest.raises(ConfigError, match=fragment):
            chain(tiny, x0, 2, **kw)


# -- CLI ---------------------------------------------------------------------------------------


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    r = invoke("train", "--limit", "300", "--hidden", "16", "--epochs", "1", "--backend", "cpu",
               "--corruption", "gaussian:0.1..0.5", "--out", out)
    assert r.exit_code == 0, r.output
    return out / "checkpoint.h5"


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
def test_cli_sample_runs_each_sampler(ckpt, tmp_path, sampler):
    r = invoke("sample", ckpt, "--sampler", sampler, "--n", 12, "--steps", 6, "--backend", "cpu",
               "--out", tmp_path / "s.png", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["sampler"] == sampler and len(summary["mean_abs_change"]) == 6
    assert (tmp_path / "s.png").exists()
    assert summary["sigmas"] == {"langevin": [0.1], "annealed": list(np.geomspace(0.5, 0.1, 10)),
                                 "ddim": [0.5, 0.1]}.get(sampler, [])  # ddim: the range its per-step ladder spans


def test_cli_improve_takes_a_sampler(ckpt, tmp_path):
    r = invoke("improve", ckpt, "--from", "pixels", "--sampler", "langevin", "--step-size", "0.3", "--final", "sample",
               "--n", 8, "--steps", 3, "--backend", "cpu", "--out", tmp_path / "i.png")
    assert r.exit_code == 0, r.output
    assert "langevin sampler, sigma 0.1, step size 0.3" in r.stdout


@pytest.mark.parametrize("args, fragment", [
    (("--sampler", "gibbs"), "unknown sampler 'gibbs'; choose one of mean, bernoulli, langevin, annealed"),
    (("--sampler", "langevin", "--step-size", "0"), "step size"),
    (("--sampler", "langevin", "--step-size", "-1"), "step size"),
    (("--sampler", "annealed", "--step-size", "nan"), "step size"),
    (("--step-size", "0.1"), "step_size applies to the langevin and annealed samplers"),
    (("--sampler", "annealed", "--chain-corruption", "gaussian:0.3"), "--corruption gaussian:0.05..1"),
    (("--sampler", "bernoulli", "--final", "median"), "unknown final")])
def test_cli_sampler_mistakes_are_one_line_before_any_chain(ckpt, monkeypatch, args, fragment):
    monkeypatch.setattr(sampling, "chain", lambda *a, **k: pytest.fail("a chain ran before the checks"))
    r = invoke("sample", ckpt, "--backend", "cpu", *args)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.stderr


# -- the CUDA kernels, under Numba's simulator (as tests/test_cudasim.py) ------------------------


@pytest.mark.cudasim
@pytest.mark.parametrize("sampler, kw", SAMPLER_CASES[1:])
def test_samplers_on_the_cuda_kernels_match_the_reference(sampler, kw):
    import os

    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        pytest.skip("the simulated CUDA backend needs NUMBA_ENABLE_CUDASIM=1 (as .ci/run sets)")
    import tinydae.kernels.cuda as kc
    from tinydae.backend import Backend

    sim = Backend("cudasim", np, kc, "Numba CUDA simulator")
    ref = td.DAE(10, hidden=(6,), seed=2, backend=td.get_backend("cpu", kernels="reference"))
    model = td.DAE(10, hidden=(6,), seed=2, backend=sim)
    x0 = noise_start(7, 10, seed=3)
    kw = dict(kw, corruption="gaussian:0.1..0.5", sampler=sampler, seed=1, batch_size=4)
    a, b = chain(ref, x0, 3, **kw), chain(model, x0, 3, **kw)
    np.testing.assert_allclose(b.samples, a.samples, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.mean_abs_change, a.mean_abs_change, rtol=1e-5, atol=1e-7)
