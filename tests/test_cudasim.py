"""The whole model on the CUDA twins, under Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1).

CuPy cannot run without a GPU, but the simulator takes NumPy arrays as device arrays, so a
backend of NumPy arrays + kernels/cuda.py runs every layer, loss, optimizer and chain step
through the CUDA kernels in CI, and counts their launches and host reads per step
(tests/test_gpu.py repeats the counts on a real GPU).  Models are tiny: the simulator runs each GPU thread as a Python
thread.
"""
import os

import numpy as np
import pytest

import tinydae as td
from tinydae.backend import Backend, get_backend
from tinydae.corruption import Corruption
from tinydae.sampling import chain, kernel_launches_per_chain_step, noise_start
from tinydae.train import kernel_launches_per_step

pytestmark = pytest.mark.cudasim


@pytest.fixture(scope="module")
def sim():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        pytest.skip("the simulated CUDA backend needs NUMBA_ENABLE_CUDASIM=1 (as .ci/run sets)")
    import tinydae.kernels.cuda as kc

    return Backend("cudasim", np, kc, "Numba CUDA simulator")


def train_steps(backend, config, corruption, n_steps=3):
    """-> (model, each step's loss, each step's CUDA kernel launches (0 on the CPU))"""
    import tinydae.kernels.cuda as kc

    model = td.DAE(10, hidden=(6, 4), seed=5, backend=backend, **config)
    opt = td.Adam(model, lr=1e-2)
    c = Corruption.parse(corruption)
    data = np.random.default_rng(1).uniform(0.05, 0.95, (n_steps, 5, 10)).astype(np.float32)
    losses, launches = [], []
    for step, batch in enumerate(data):
        x = model.as_input(batch)
        before = kc.LAUNCHES["count"]
        losses.append(model.loss_and_grad(c.apply(backend, x, 7, step), x))
        opt.step()
        launches.append(kc.LAUNCHES["count"] - before)
    return model, losses, launches


@pytest.mark.parametrize("config,corruption", [
    (dict(activation="relu", tied=False, loss="bce"), "gaussian:0.3"),
    (dict(activation="softplus", tied=True, loss="mse"), "salt_pepper:0.2")])
def test_training_on_the_cuda_kernels_matches_the_reference(sim, config, corruption):
    ref_model, ref_losses, _ = train_steps(get_backend("cpu", kernels="reference"), config, corruption)
    model, losses, launches = train_steps(sim, config, corruption)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    np.testing.assert_allclose(model.params, ref_model.params, rtol=1e-4, atol=1e-5)
    assert np.abs(model.params - td.DAE(10, hidden=(6, 4), seed=5, **config).params).max() > 1e-3  # it trained
    assert launches == [kernel_launches_per_step(model)] * 3 == [2 * 4 + 3] * 3


def test_fit_on_the_cuda_kernels_reads_the_host_once_per_step(sim, tmp_path):
    """fit() reads one number back per step, the loss sum, after queueing the update; the
    launches between two steps are kernel_launches_per_step.  Validation and checkpoints, at
    epoch ends, read more."""
    import tinydae.kernels.cuda as kc
    from tinydae.backend import HOST_READS

    data = np.random.default_rng(2).uniform(0.05, 0.95, (13, 10)).astype(np.float32)
    marks = []

    def progress(event, info):
        marks.append((event, HOST_READS["count"], kc.LAUNCHES["count"]))

    model = td.DAE(10, hidden=(6, 4), seed=5, backend=sim)
    before = HOST_READS["count"]
    state = td.fit(model, data[:10], data[10:], epochs=2, batch_size=5, progress=progress,
                   checkpoint_path=str(tmp_path / "c.h5"))  # 2 steps per epoch
    steps = [i for i, m in enumerate(marks) if m[0] == "step"]
    reads = [marks[j][1] - marks[i][1] for i, j in zip(steps, steps[1:])]
    launches = [marks[j][2] - marks[i][2] for i, j in zip(steps, steps[1:])]
    assert reads[0] == reads[2] == 1  # step to step within an epoch: the loss alone
    assert reads[1] > 1  # epoch 1 ended between steps 2 and 3: validation and the checkpoint
    assert launches[0] == launches[2] == kernel_launches_per_step(model)
    assert state.step == 4 and np.isfinite(state.history[-1]["val_bce_denoise"])
    before = HOST_READS["count"]
    td.fit(td.DAE(10, hidden=(6, 4), seed=5, backend=sim), data[:10], None, epochs=1, batch_size=5)
    assert HOST_READS["count"] - before == 2  # one per step, nothing else


def test_fit_on_the_cuda_kernels_skips_the_update_of_a_non_finite_loss(sim):
    data = np.random.default_rng(3).uniform(0.05, 0.95, (10, 10)).astype(np.float32)
    model = td.DAE(10, hidden=(6, 4), seed=5, backend=sim)
    opt = td.Adam(model)
    td.fit(model, data, None, optimizer=opt, epochs=1, batch_size=5)  # 2 good steps
    model.named_params["enc0.b"][2] = np.nan
    params, m, v = model.params.copy(), opt.buffers["m"].copy(), opt.buffers["v"].copy()
    with pytest.raises(td.TrainingDiverged, match="step 3 "):
        td.fit(model, data, None, optimizer=opt, epochs=2, batch_size=5, state=td.TrainState(step=2, epoch=1))
    np.testing.assert_array_equal(model.params, params)  # the update kernel read the NaN and stopped
    np.testing.assert_array_equal(opt.buffers["m"], m)
    np.testing.assert_array_equal(opt.buffers["v"], v)
    assert opt.t == 2


@pytest.mark.parametrize("corruption", ["gaussian:0.2", "none"])
def test_chain_on_the_cuda_kernels_matches_the_reference(sim, corruption):
    import tinydae.kernels.cuda as kc

    ref_model = td.DAE(10, hidden=(6, 4), seed=2, backend=get_backend("cpu", kernels="reference"))
    model = td.DAE(10, hidden=(6, 4), seed=2, backend=sim)
    x0 = noise_start(7, 10, seed=3)
    kw = dict(corruption=corruption, seed=1, batch_size=4, keep_every=4, keep_chains=0)  # keep nothing
    a = chain(ref_model, x0, 4, **kw)
    before = kc.LAUNCHES["count"]
    b = chain(model, x0, 4, **kw)
    np.testing.assert_allclose(b.samples, a.samples, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.mean_abs_change, a.mean_abs_change, rtol=1e-5, atol=1e-7)  # ulps of 1 near a fixed point
    assert b.host_syncs == 0
    # 2 batches x 4 steps, nothing else launched: the chain's statistics are xp calls
    per_step = kernel_launches_per_chain_step(model, corruption)
    assert kc.LAUNCHES["count"] - before == 2 * 4 * per_step
    assert per_step == (1 if corruption != "none" else 0) + 4


@pytest.mark.parametrize("arch,tied", [("conv:3,4", False), ("conv:3,4", True), ("unet:3,4", False)])
def test_a_conv_dae_trains_and_chains_on_the_cuda_kernels_as_on_the_reference(sim, arch, tied):
    """Conv2d down, tied or untied ConvTranspose2d up (im2col, col2im and the bias kernels on
    image rows), a fit() of two short epochs and a chain, simulated against the reference."""
    import tinydae.kernels.cuda as kc

    data = np.random.default_rng(1).uniform(0.05, 0.95, (14, 49)).astype(np.float32)

    def run(backend):
        model = td.DAE(49, arch=arch, tied=tied, seed=5, backend=backend)
        td.fit(model, data[:10], data[10:], optimizer=td.Adam(model, lr=1e-2), corruption="gaussian:0.3",
               epochs=2, batch_size=5, seed=5, handle_sigint=False)
        before = kc.LAUNCHES["count"]
        loss = model.loss_and_grad(data[:5], data[:5])
        launches = kc.LAUNCHES["count"] - before
        return model, loss, launches, chain(model, data[:3], 2, corruption="gaussian:0.2", seed=1, keep_chains=0)

    ref_model, ref_loss, _, ref_chain = run(get_backend("cpu", kernels="reference"))
    model, loss, launches, got_chain = run(sim)
    np.testing.assert_allclose(model.params, ref_model.params, rtol=1e-4, atol=1e-5)
    assert np.abs(model.params - td.DAE(49, arch=arch, tied=tied, seed=5).params).max() > 1e-3  # it trained
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(got_chain.samples, ref_chain.samples, rtol=1e-4, atol=1e-5)
    # a step without its corruption and optimizer update: 2 convolutions' im2col + bias forward,
    # 2 transposed convolutions' col2im + bias forward, the loss, then backward (the first
    # convolution without col2im)
    assert launches == kernel_launches_per_step(model) - 2
    if arch.startswith("conv"):
        assert launches == 4 * 2 + 1 + (2 + 2 + 2 + 1)


def test_a_noise_conditional_unet_trains_on_a_ladder_and_anneals_on_the_cuda_kernels(sim):
    """unet:...,sigma: fit() telling each row its level (drawn on the device) and an annealed
    chain telling each step its level, simulated against the reference."""
    data = np.random.default_rng(1).uniform(0.05, 0.95, (14, 49)).astype(np.float32)

    def run(backend):
        model = td.DAE(49, arch="unet:3,4,sigma", seed=5, backend=backend)
        td.fit(model, data[:10], data[10:], optimizer=td.Adam(model, lr=1e-2), corruption="gaussian:0.01..1",
               epochs=2, batch_size=5, seed=5, handle_sigint=False)
        return model, chain(model, data[:3], 4, corruption="gaussian:0.01..1", sampler="annealed", levels=2,
                            seed=1, keep_chains=0)

    ref_model, ref_chain = run(get_backend("cpu", kernels="reference"))
    model, got_chain = run(sim)
    np.testing.assert_allclose(model.params, ref_model.params, rtol=1e-4, atol=1e-5)
    assert np.abs(model.params - td.DAE(49, arch="unet:3,4,sigma", seed=5).params).max() > 1e-3  # it trained
    np.testing.assert_allclose(got_chain.samples, ref_chain.samples, rtol=1e-4, atol=1e-4)
