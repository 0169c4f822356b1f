import h5py
import numpy as np
import pytest

import tinydae as td
from tinydae import ConfigError, DataError
from tinydae.metrics import parzen_evaluate
from tinydae.sampling import (PCABaseline, PixelBernoulliBaseline, bernoulli_start, chain, improve,
                              noise_start, start_points)


@pytest.fixture(scope="module")
def gmm_model():
    data = td.load_dataset("gmm:2", limit=20000)
    model = td.DAE(2, hidden=(64, 64), seed=0)
    td.fit(model, data, None, corruption="gaussian:0.1", epochs=6, batch_size=128)
    return model, data.density


def test_chain_from_noise_raises_exact_log_density(gmm_model):
    model, density = gmm_model
    x0 = noise_start(1000, 2, seed=3)
    r = chain(model, x0, 20, keep_every=5, quality=density.log_prob)
    assert r.quality[0] == pytest.approx(density.log_prob(x0).mean())
    assert r.quality[20] > r.quality[0] + 10          # noise sits far below the data density
    assert r.quality[20] > density.log_prob(density.sample(1000, 9)).mean() - 1  # near the data's
    assert r.mean_abs_change[-1] < r.mean_abs_change[0]   # the chain settles


def test_chains_are_reproducible_and_batch_independent_up_to_blas_rounding(gmm_model):
    model, _ = gmm_model
    x0 = noise_start(300, 2, seed=1)
    a = chain(model, x0, 15, seed=4, batch_size=300)
    np.testing.assert_array_equal(a.samples, chain(model, x0, 15, seed=4, batch_size=300).samples)
    assert not np.array_equal(a.samples, chain(model, x0, 15, seed=5, batch_size=300).samples)
    b = chain(model, x0, 15, seed=4, batch_size=64)  # same draws, different GEMM shapes
    np.testing.assert_allclose(a.samples, b.samples, atol=1e-5)


@pytest.mark.parametrize("block", [3, 256])  # 3: the device-side change blocks fill and flush
def test_chain_states_and_changes_match_a_plain_loop(gmm_model, monkeypatch, block):
    """The fused chain step against x_{t+1} = reconstruct(c(x_t)) written out by hand."""
    import tinydae.sampling as sampling
    from tinydae.corruption import Corruption
    from tinydae.rng import STREAM_CHAIN

    monkeypatch.setattr(sampling, "CHANGE_ROWS", block)
    model, _ = gmm_model
    x0 = noise_start(50, 2, seed=2)
    r = chain(model, x0, 8, corruption="gaussian:0.2", seed=6, batch_size=20)
    c = Corruption.parse("gaussian:0.2")
    states, change = [], np.zeros(8)  # keep_chains 64 > batch 20: every chain's trajectory is kept
    for start in range(0, 50, 20):
        x = x0[start:start + 20]
        states.append([x])
        for t in range(1, 9):
            x_next = model.reconstruct(c.apply(model.backend, x, 6, t, STREAM_CHAIN, offset=start * 2))
            change[t - 1] += np.abs(x_next.astype(np.float64) - x).sum()
            x = x_next
            states[-1].append(x)
    trajectory = np.concatenate([np.stack(s, axis=1) for s in states])  # (50, 9, 2)
    np.testing.assert_array_equal(r.trajectory, trajectory)
    np.testing.assert_array_equal(r.samples, trajectory[:, -1])
    np.testing.assert_allclose(r.mean_abs_change, change / (50 * 2), rtol=1e-12)
    assert (r.mean_abs_change > 0).all()


def test_trajectory_and_h5(gmm_model, tmp_path):
    model, _ = gmm_model
    x0 = noise_start(10, 2, seed=2)
    r = chain(model, x0, 7, keep_every=3, keep_chains=4, corruption="none")
    assert r.kept_steps == [0, 3, 6, 7] and r.trajectory.shape == (4, 4, 2)
    np.testing.assert_array_equal(r.trajectory[:, 0], x0[:4])
    np.testing.assert_array_equal(r.trajectory[:, -1], r.samples[:4])
    # deterministic chain: step t is r applied t times
    x = x0[:4]
    for _ in range(3):
        x = model.reconstruct(x)
    np.testing.assert_allclose(r.trajectory[:, 1], x, rtol=1e-6)
    r.save_h5(tmp_path / "c.h5")
    with h5py.File(tmp_path / "c.h5") as f:
        np.testing.assert_array_equal(f["samples"][()], r.samples)
        assert list(f["kept_steps"][()]) == [0, 3, 6, 7]


def test_improve_raises_parzen_ll_of_pca_samples_on_glyphs():
    data = td.glyphs(3000, seed=0)
    train, held = data.split(0.3, seed=0)
    model = td.DAE(784, hidden=(256,), seed=0)
    td.fit(model, train, None, corruption="gaussian:0.3", epochs=4, batch_size=64)
    before = start_points("pca", 300, 784, seed=0, data=train.x)
    after = improve(model, before, 2).samples  # the model's own corruption, 2 steps
    ll_before = parzen_evaluate(before, held.x[:400], held.x[400:])["mean_ll"]
    ll_after = parzen_evaluate(after, held.x[:400], held.x[400:])["mean_ll"]
    assert ll_after > ll_before + 5, (ll_before, ll_after)


def test_starting_points_and_baselines(rng):
    u = noise_start(200, 30, seed=1)
    assert u.shape == (200, 30) and u.dtype == np.float32 and 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.02
    b = bernoulli_start(200, 30, seed=1)
    assert set(np.unique(b)) == {0.0, 1.0} and abs(b.mean() - 0.5) < 0.03
    data = td.glyphs(1000).x
    pca = PCABaseline(10).fit(data)
    s = pca.sample(2000, seed=3)
    assert s.shape == (2000, 784) and s.min() >= 0 and s.max() <= 1
    assert np.abs(s.mean(0) - data.mean(0)).mean() < 0.02  # centred on the data
    assert not np.array_equal(s, pca.sample(2000, seed=4))
    pix = PixelBernoulliBaseline().fit(data).sample(4000, seed=1)
    assert np.abs(pix.mean(0) - data.mean(0)).max() < 0.05
    with pytest.raises(ConfigError):
        start_points("pca", 10, 784)  # needs data
    with pytest.raises(ConfigError):
        start_points("gan", 10, 784)


def test_chain_errors():
    model = td.DAE(4, hidden=(3,))
    with pytest.raises(ConfigError, match="corruption"):
        chain(model, np.zeros((2, 4)), 3)  # never trained: no recorded corruption
    with pytest.raises(DataError):
        chain(model, np.zeros((2, 5)), 3, corruption="none")
    with pytest.raises(DataError):
        chain(model, np.full((2, 4), np.nan), 3, corruption="none")
    with pytest.raises(ConfigError):
        chain(model, np.zeros((2, 4)), -1, corruption="none")


def test_checkpoint_remembers_training_corruption(tmp_path):
    model = td.DAE(4, hidden=(3,))
    td.fit(model, td.load_dataset("gmm:4", limit=64), None, corruption="masking:0.2", epochs=1,
           checkpoint_path=str(tmp_path / "c.h5"), train_config={"corruption": "masking:0.2"})
    assert model.corruption == "masking:0.2"
    assert td.load_model(tmp_path / "c.h5").corruption == "masking:0.2"


def test_keep_steps_keeps_exactly_those_states():
    """keep_steps= keeps 0, the listed steps and the last; the kept states are the chain's own
    (the same run with keep_every=1 holds them at the same steps)."""
    from tinydae import DAE
    from tinydae.sampling import chain, chain_memory, noise_start

    m = DAE(16, (8,), seed=3)
    x0 = noise_start(5, 16, seed=1)
    some = chain(m, x0, 12, corruption="gaussian:0.2", keep_steps=[2, 5, 5, 9], keep_chains=5, seed=4)
    every = chain(m, x0, 12, corruption="gaussian:0.2", keep_every=1, keep_chains=5, seed=4)
    assert some.kept_steps == [0, 2, 5, 9, 12]
    np.testing.assert_array_equal(some.trajectory, every.trajectory[:, [0, 2, 5, 9, 12]])
    assert chain_memory(m, 5, 12, keep_steps=[2, 5]) < chain_memory(m, 5, 12, keep_every=1)
    with pytest.raises(ConfigError, match="keep_steps"):
        chain(m, x0, 12, corruption="gaussian:0.2", keep_steps=[13])
