"""Tests that need a real CUDA GPU with CuPy (skipped with the reason elsewhere)."""
import json

import numpy as np
import pytest

import tinydae as td
from tinydae.corruption import Corruption
from tinydae.train import kernel_launches_per_step

pytestmark = pytest.mark.gpu


def steps(backend, n_steps=8, hidden=(256, 64)):
    data = td.glyphs(n_steps * 64, seed=1).x
    model = td.DAE(784, hidden=hidden, seed=3, backend=backend)
    opt = td.Adam(model, lr=1e-3)
    c = Corruption.parse("gaussian:0.3")
    losses = []
    for step in range(n_steps):
        x = model.as_input(data[step * 64:(step + 1) * 64])
        losses.append(model.loss_and_grad(c.apply(model.backend, x, 4, step), x))
        opt.step()
    return losses, model


def test_cuda_training_matches_cpu_step_by_step():
    cpu_losses, cpu_model = steps("cpu")
    gpu_losses, gpu_model = steps("cuda")
    np.testing.assert_allclose(gpu_losses, cpu_losses, rtol=1e-4)
    np.testing.assert_allclose(gpu_model.backend.to_host(gpu_model.params), cpu_model.params,
                               rtol=1e-3, atol=1e-5)


def test_float32_stays_float32_on_the_gpu():
    import cupy

    _, model = steps("cuda", n_steps=2)
    x = model.as_input(td.glyphs(8).x)
    arrays = [model.params, model.grads, model.logits(x), model.reconstruct(x),
              Corruption.parse("masking:0.3").apply(model.backend, x, 0, 0)]
    for a in arrays:
        assert isinstance(a, cupy.ndarray) and a.dtype == np.float32


def test_kernel_launches_per_step_are_as_claimed():
    import tinydae.kernels.cuda as kc

    model = td.DAE(784, hidden=(128, 32), seed=0, backend="cuda")
    opt = td.Adam(model)
    c = Corruption.parse("salt_pepper:0.2")
    x = model.as_input(td.glyphs(64).x)
    before = kc.LAUNCHES["count"]
    model.loss_and_grad(c.apply(model.backend, x, 0, 0), x)
    opt.step()
    assert kc.LAUNCHES["count"] - before == kernel_launches_per_step(model) == 2 * 4 + 3


def test_a_training_step_reads_the_host_once(tmp_path):
    """fit() on CuPy reads one number back per step (the loss sum, after the update is queued);
    the validation and checkpoint at an epoch end read more."""
    import tinydae.kernels.cuda as kc
    from tinydae.backend import HOST_READS

    train, val = td.glyphs(600, seed=0).split(0.2)  # 480 rows: 8 steps of 64 per epoch (the last 32)
    marks = []
    model = td.DAE(784, hidden=(128, 32), seed=0, backend="cuda")
    td.fit(model, train, val, epochs=2, checkpoint_path=str(tmp_path / "c.h5"),
           progress=lambda event, info: marks.append((event, HOST_READS["count"], kc.LAUNCHES["count"])))
    steps = [i for i, m in enumerate(marks) if m[0] == "step"]
    reads = [marks[j][1] - marks[i][1] for i, j in zip(steps, steps[1:])]
    launches = [marks[j][2] - marks[i][2] for i, j in zip(steps, steps[1:])]
    assert reads[:7] == reads[8:] == [1] * 7 and reads[7] > 1
    assert launches[:7] == launches[8:] == [kernel_launches_per_step(model)] * 7
    before = HOST_READS["count"]
    state = td.fit(td.DAE(784, hidden=(128, 32), seed=0, backend="cuda"), train, None, epochs=1)
    assert HOST_READS["count"] - before == state.step == 8


def test_a_queued_training_step_does_not_block_the_host():
    """loss_sum_and_grad + a guarded update read nothing back: queued behind a few hundred ms
    of GPU work, they return long before it finishes (a hidden sync would wait for it)."""
    import time

    import cupy

    model = td.DAE(784, hidden=(256, 64), seed=0, backend="cuda")
    opt = td.Adam(model)
    x = model.as_input(td.glyphs(256).x)
    total = cupy.zeros(1, cupy.float64)

    def step():
        model.loss_sum_and_grad(x, x, total)
        opt.step(guard=total)

    step()  # kernels loaded, workspaces and the memory pool's blocks allocated
    a = cupy.random.random((4096, 4096), dtype=cupy.float32)
    cupy.cuda.get_current_stream().synchronize()
    for _ in range(20):
        a = a @ a
        a /= cupy.float32(4096)
    t0 = time.perf_counter()
    step()
    step_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    cupy.cuda.get_current_stream().synchronize()
    queued_s = time.perf_counter() - t1
    assert queued_s > 0.02, "the GPU work finished too fast to tell"
    assert step_s < queued_s / 4, (step_s, queued_s)
    assert np.isfinite(float(total[0]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_acc_accumulates_into_c_and_f_ordered_gradients(dtype):
    """cupy.cublas.gemm with beta = 1 writes out += a.T @ b into out itself, for an untied dW
    (C-ordered) and a tied decoder's dW (the F-ordered transpose view of the encoder's)."""
    import cupy

    backend = td.get_backend("cuda")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(64, 300)).astype(dtype), rng.normal(size=(64, 200)).astype(dtype)
    c_out = cupy.asarray(rng.normal(size=(300, 200)).astype(dtype))
    f_base = cupy.asarray(rng.normal(size=(200, 300)).astype(dtype))
    for out in (c_out, f_base.T):
        start, ptr = cupy.asnumpy(out), out.data.ptr
        backend.gemm_acc(cupy.asarray(a), cupy.asarray(b), out)
        assert out.data.ptr == ptr
        tol = dict(rtol=1e-4, atol=1e-3) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-11)
        np.testing.assert_allclose(cupy.asnumpy(out), start + a.T @ b, **tol)
    np.testing.assert_array_equal(cupy.asnumpy(f_base.T), cupy.asnumpy(out))  # written through the view


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_acc_writes_with_beta_zero(dtype):
    """accumulate=False: out = a.T @ b, whatever out held (NaN here), C- and F-ordered."""
    import cupy

    backend = td.get_backend("cuda")
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(64, 300)).astype(dtype), rng.normal(size=(64, 200)).astype(dtype)
    tol = dict(rtol=1e-4, atol=1e-3) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-11)
    for out in (cupy.full((300, 200), np.nan, dtype), cupy.full((200, 300), np.nan, dtype).T):
        backend.gemm_acc(cupy.asarray(a), cupy.asarray(b), out, accumulate=False)
        np.testing.assert_allclose(cupy.asnumpy(out), a.T @ b, **tol)


def test_cpu_and_cuda_draw_identical_streams():
    import cupy

    import tinydae.kernels.cpu as kcpu
    import tinydae.kernels.cuda as kc

    n = 1 << 20
    host = np.empty(n, np.uint32)
    kcpu.philox_uint32(host, 123, 7, 0, 5)
    dev = cupy.empty(n, cupy.uint32)
    kc.philox_uint32(dev, 123, 7, 0, 5)
    np.testing.assert_array_equal(cupy.asnumpy(dev), host)
    x = np.random.default_rng(0).uniform(0.1, 0.9, (256, 784)).astype(np.float32)
    for mode, level in ((2, 0.25), (3, 0.1), (1, 0.3)):
        a, b = np.empty_like(x), cupy.empty(x.shape, cupy.float32)
        kcpu.corrupt(a, x, mode, level, 9, 3, 0)
        kc.corrupt(b, cupy.asarray(x), mode, level, 9, 3, 0)
        if mode == 1:  # Gaussian: libm and CUDA's logf/cosf differ by a few ulp
            np.testing.assert_allclose(cupy.asnumpy(b), a, rtol=1e-6, atol=2e-6)
        else:
            np.testing.assert_array_equal(cupy.asnumpy(b), a)


def test_fit_on_cuda_and_checkpoint_loads_on_cpu(tmp_path):
    train, val = td.glyphs(1200).split(0.2)
    model = td.DAE(784, hidden=(128,), backend="cuda")
    state = td.fit(model, train, val, epochs=2, checkpoint_path=str(tmp_path / "c.h5"))
    assert state.history[-1]["val_bce_denoise"] < state.history[0]["val_bce_denoise"]
    cpu = td.load_model(tmp_path / "c.h5", backend="cpu")
    x = val.x[:16]
    np.testing.assert_allclose(cpu.reconstruct(x), model.backend.to_host(model.reconstruct(x)),
                               rtol=1e-4, atol=1e-5)


def test_cli_train_backend_cuda(tmp_path):
    from click.testing import CliRunner

    from tinydae.cli import cli
    r = CliRunner().invoke(cli, ["train", "--backend", "cuda", "--limit", "2000", "--epochs", "2",
                                 "--out", str(tmp_path), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["final"]["val_bce_denoise"] > 0


def test_a_kernel_launch_does_not_block_the_host():
    import time

    import cupy

    import tinydae.kernels.cuda as kc

    a = cupy.random.random((4096, 4096), dtype=cupy.float32)
    out = cupy.empty(1 << 20, cupy.uint32)
    kc.philox_uint32(out, 0, 0, 0)  # compiled
    cupy.cuda.get_current_stream().synchronize()
    for _ in range(20):  # queue a few hundred ms of GPU work
        a = a @ a
        a /= cupy.float32(4096)
    t0 = time.perf_counter()
    kc.philox_uint32(out, 0, 1, 0)
    launch_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    cupy.cuda.get_current_stream().synchronize()
    queued_s = time.perf_counter() - t1
    assert queued_s > 0.02, "the GPU work finished too fast to tell"
    assert launch_s < queued_s / 4, (launch_s, queued_s)  # the launch returned before the work ran


def test_chain_on_cuda_matches_cpu():
    import tinydae.kernels.cuda as kc
    from tinydae.sampling import chain, kernel_launches_per_chain_step, noise_start

    data = td.load_dataset("gmm:2", limit=4000)
    cpu = td.DAE(2, hidden=(32, 32), seed=0)
    td.fit(cpu, data, None, corruption="gaussian:0.1", epochs=2)
    gpu = td.DAE(2, hidden=(32, 32), seed=0, backend="cuda")
    gpu.params[...] = gpu.backend.to_device(cpu.params)
    x0 = noise_start(256, 2, seed=1)
    a = chain(cpu, x0, 10, corruption="gaussian:0.1", quality=data.density.log_prob)
    before = kc.LAUNCHES["count"]
    b = chain(gpu, x0, 10, corruption="gaussian:0.1", quality=data.density.log_prob)
    assert kc.LAUNCHES["count"] - before == 10 * kernel_launches_per_chain_step(gpu, "gaussian:0.1") == 10 * 5
    np.testing.assert_allclose(b.samples, a.samples, atol=1e-4)  # same Philox draws, float32 rounding
    np.testing.assert_allclose(b.mean_abs_change, a.mean_abs_change, rtol=1e-3, atol=1e-6)
    assert b.quality[10] == pytest.approx(a.quality[10], rel=1e-3)


def test_gpu_arrays_go_in_without_a_copy():
    """CuPy arrays and torch CUDA tensors are read where they are (DLPack): no copy, same results."""
    import cupy

    m = td.DAE(12, hidden=16, seed=3, backend="cuda")
    host = np.random.default_rng(13).uniform(0.05, 0.95, (20, 12)).astype(np.float32)
    want = m.backend.to_host(m.reconstruct(host))
    arrays = [cupy.asarray(host)]
    try:
        import torch

        if torch.cuda.is_available():
            arrays.append(torch.from_numpy(host).cuda())
    except ImportError:
        pass
    for a in arrays:
        ptr = a.data.ptr if isinstance(a, cupy.ndarray) else a.data_ptr()
        assert m.backend.to_device(a, np.float32).data.ptr == ptr, type(a)
        assert m.as_input(a).data.ptr == ptr, type(a)
        np.testing.assert_array_equal(m.backend.to_host(m.reconstruct(a)), want)
        np.testing.assert_array_equal(td.chain(m, a, 2, corruption="gaussian:0.3").samples,
                                      td.chain(m, host, 2, corruption="gaussian:0.3").samples)


@pytest.mark.parametrize("arch,tied", [("conv:8,16,fc32", False), ("conv:8,16,fc32", True), ("unet:8,16", True)])
def test_conv_dae_on_the_gpu_matches_the_cpu(arch, tied):
    """A conv DAE (Conv2d, ConvTranspose2d, a dense bottleneck; im2col, cuBLAS GEMMs, the fused
    bias kernels, col2im) on CuPy arrays against the CPU, float32: the loss, every gradient, and
    reconstruct."""
    import cupy

    x = np.random.default_rng(21).uniform(0, 1, (3, 784)).astype(np.float32)
    x_in = x + np.random.default_rng(22).normal(0, 0.3, x.shape).astype(np.float32)
    results = []
    for name in ("cpu", "cuda"):
        m = td.DAE(784, arch=arch, tied=tied, seed=3, backend=name)
        loss = m.loss_and_grad(x_in, x)
        results.append((loss, m.backend.to_host(m.grads).copy(), m.backend.to_host(m.reconstruct(x_in))))
    assert isinstance(m.params, cupy.ndarray)
    assert abs(results[1][0] - results[0][0]) < 1e-4 * abs(results[0][0])
    for got, want in zip(results[1][1:], results[0][1:]):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_noise_conditional_unet_on_the_gpu_matches_the_cpu():
    """unet:8,16,sigma on CuPy arrays: levels per row as a device array (what fit passes) and as
    host numbers, against the CPU: the loss, every gradient, and reconstruct."""
    import cupy

    x = np.random.default_rng(21).uniform(0, 1, (3, 784)).astype(np.float32)
    x_in = x + np.random.default_rng(22).normal(0, 0.3, x.shape).astype(np.float32)
    sigma = np.array([0.01, 0.2, 1.0])
    results = []
    for name in ("cpu", "cuda"):
        m = td.DAE(784, arch="unet:8,16,sigma", seed=3, backend=name)
        s = cupy.asarray(sigma) if name == "cuda" else sigma
        loss = m.loss_and_grad(x_in, x, sigma=s)
        results.append((loss, m.backend.to_host(m.grads).copy(), m.backend.to_host(m.reconstruct(x_in, sigma=sigma))))
    assert abs(results[1][0] - results[0][0]) < 1e-4 * abs(results[0][0])
    for got, want in zip(results[1][1:], results[0][1:]):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("bucket_mb", [None, 0])
def test_fit_through_nccl_with_one_rank_reads_the_host_once_and_matches(bucket_mb):
    """--distributed mpi with one process on the GPU: the gradient and loss go through NCCL (an
    identity for R = 1) on the current stream (bucket_mb=0: a bucket per layer on a side stream,
    after the compute stream's events); a step still reads the host once, and the run is the
    plain run's, bit for bit."""
    pytest.importorskip("mpi4py")
    from tinydae import distributed
    from tinydae.backend import HOST_READS

    comm = distributed.connect("mpi")
    data = td.glyphs(512, seed=0).x
    runs = []
    for c in (None, comm):
        model = td.DAE(784, hidden=(128, 32), seed=0, backend="cuda")
        before = HOST_READS["count"]
        state = td.fit(model, data, epochs=1, comm=c, bucket_mb=None if c is None else bucket_mb)
        runs.append((model.backend.to_host(model.params), HOST_READS["count"] - before, state.step))
    assert comm.nccl is not None  # bound: device buffers went to NCCL
    (plain, reads_plain, steps), (nccl, reads_nccl, _) = runs
    assert reads_plain == steps == 8
    assert reads_nccl == steps + 1  # + the initial parameters' digest the ranks compare
    np.testing.assert_array_equal(nccl, plain)
