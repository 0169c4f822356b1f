"""Data-parallel training over MPI (tinydae/distributed.py).

Without MPI: the pieces that make R ranks equal one process (global-position noise, gradients
as parts of the global mean, the row split), the launcher detection and the clear errors.
With the mpi extra (mpi4py + MPICH's mpiexec): whole `cli.py train` runs under mpiexec -n 2
and -n 3 (oversubscribed on a 2-core machine) compared with one process.
"""
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import tinydae
from tinydae import distributed
from tinydae.checkpoint import load_checkpoint
from tinydae.cli import cli
from tinydae.corruption import Corruption

from cli_helpers import one_error_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


MPI_MISSING = ("mpi4py is not installed (pip install -e '.[mpi]')" if importlib.util.find_spec("mpi4py") is None
               else "no mpiexec on PATH or beside python" if _mpiexec() is None else None)
needs_mpi = pytest.mark.skipif(MPI_MISSING is not None, reason=MPI_MISSING or "")


# -- without MPI -----------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 200), size=st.integers(1, 9))
def test_shards_cover_the_batch_once_in_order(n, size):
    parts = []
    for rank in range(size):
        comm = distributed.SingleProcess()
        comm.rank, comm.size = rank, size
        parts.append(distributed.shard(n, comm))
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    sizes = [hi - lo for lo, hi in parts]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("spec", ["gaussian:0.3", "gaussian:0.05..1", "masking:0.25", "salt_pepper:0.1"])
def test_a_rank_draws_its_rows_noise_at_their_global_position(spec):
    """Corrupting rows lo:hi with element offset lo * D (and the levels from row lo) gives
    exactly rows lo:hi of the whole batch's corruption: the noise does not depend on R."""
    backend = tinydae.get_backend("cpu")
    x = np.random.default_rng(1).uniform(0.05, 0.95, (37, 19)).astype(np.float32)
    c = Corruption.parse(spec)
    whole = c.apply(backend, x, 7, 5)
    for lo, hi in [(0, 12), (12, 25), (25, 37), (36, 37)]:
        part = c.apply(backend, x[lo:hi], 7, 5, offset=lo * x.shape[1])
        np.testing.assert_array_equal(part, whole[lo:hi])
    if c.level_max is not None:
        levels = c.row_sigmas(backend, 37, 7, 5)
        np.testing.assert_array_equal(c.row_sigmas(backend, 13, 7, 5, first_row=12), levels[12:25])


@pytest.mark.parametrize("arch", ["mlp:9", "unet:4,6,sigma"])
def test_the_parts_gradients_sum_to_the_whole_batch_gradient(arch):
    """float64: each part's gradient with mean_over = B, summed, is the batch's gradient, and the
    parts' loss sums add up to the batch's."""
    shape = (8, 8, 1) if arch.startswith("unet") else None
    D = 64
    model = tinydae.DAE(D, arch=arch, dtype="float64", seed=2, input_shape=shape)
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, (11, D))
    x_in = x + 0.3 * rng.standard_normal(x.shape)
    sigma = rng.uniform(0.1, 1, 11) if model.noise_conditional else None
    total = np.zeros(1)
    model.loss_sum_and_grad(x_in, x, total, sigma=sigma)
    whole, whole_loss = model.grads.copy(), total[0]
    summed, loss = np.zeros_like(whole), 0.0
    for lo, hi in [(0, 4), (4, 8), (8, 11)]:
        model.loss_sum_and_grad(x_in[lo:hi], x[lo:hi], total, mean_over=11,
                                sigma=None if sigma is None else sigma[lo:hi])
        summed += model.grads
        loss += total[0]
    assert np.abs(whole).max() > 1e-3  # a real gradient, not zeros
    np.testing.assert_allclose(summed, whole, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(loss, whole_loss, rtol=1e-13)


def test_launcher_detection():
    assert distributed.launcher_size({}) == 1 and distributed.launcher_rank({}) == 0
    assert distributed.launcher_size({"PMI_SIZE": "3", "PMI_RANK": "2"}) == 3
    assert distributed.launcher_rank({"PMI_SIZE": "3", "PMI_RANK": "2"}) == 2
    assert distributed.launcher_size({"OMPI_COMM_WORLD_SIZE": "4"}) == 4
    assert distributed.launcher_size({"PMIX_RANK": "0", "SLURM_NTASKS": "8"}) == 8
    assert distributed.launcher_size({"SLURM_NTASKS": "8"}) == 1  # a batch script's own python is one process


def test_connect_off_and_unknown_mode(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "4")
    assert isinstance(distributed.connect("off"), distributed.SingleProcess)
    with pytest.raises(tinydae.ConfigError, match="auto, mpi, off"):
        distributed.connect("nccl")


def test_several_processes_without_mpi4py_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    monkeypatch.setenv("PMI_RANK", "0")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py -> ImportError
    r = CliRunner().invoke(cli, ["train", "--epochs", "1"])
    one_error_line(r, "mpi4py", 'pip install -e ".[mpi]"')
    monkeypatch.setenv("PMI_RANK", "1")  # the other ranks stay silent: one line in all
    r = CliRunner().invoke(cli, ["train", "--epochs", "1"])
    assert r.exit_code == 2 and r.stderr == ""


def test_fit_refuses_augment_with_several_ranks():
    comm = distributed.SingleProcess()
    comm.size, comm.collective = 2, True
    model = tinydae.DAE(16, hidden=(4,), seed=0)
    x = np.random.default_rng(0).uniform(0, 1, (8, 16)).astype(np.float32)
    with pytest.raises(tinydae.ConfigError, match="augment"):
        tinydae.fit(model, x, epochs=1, comm=comm, augment=lambda b, seed, step: b)


class _FakeNccl:
    """cupy.cuda.nccl as far as NcclAllReduce uses it: records what it is asked to do."""
    NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 7, 8, 0
    calls = []

    @staticmethod
    def get_unique_id():
        return (1, 2, 3)

    class NcclCommunicator:
        def __init__(self, size, uid, rank):
            _FakeNccl.calls.append(("init", size, uid, rank))

        def allReduce(self, send, recv, count, dtype, op, stream):
            _FakeNccl.calls.append(("allReduce", send, recv, count, dtype, op, stream))


def test_nccl_is_wired_in_place_on_the_current_stream(monkeypatch):
    """Without a GPU: the unique id comes from rank 0 over MPI, and a device buffer is reduced
    in place (send = receive pointer), as float32 sums over its elements, on the current stream."""
    import types

    cupy = types.ModuleType("cupy")
    cupy.cuda = types.ModuleType("cupy.cuda")
    cupy.cuda.nccl = _FakeNccl
    cupy.cuda.get_current_stream = lambda: types.SimpleNamespace(ptr=0xABC)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "cupy.cuda", cupy.cuda)
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", _FakeNccl)
    sent = []
    mpi = types.SimpleNamespace(bcast=lambda obj: sent.append(obj) or obj)
    comm = types.SimpleNamespace(comm=mpi, root=True, size=2, rank=0)
    _FakeNccl.calls.clear()
    reduce = distributed.NcclAllReduce(comm, types.SimpleNamespace(xp=cupy))
    buf = types.SimpleNamespace(flags=types.SimpleNamespace(c_contiguous=True), data=types.SimpleNamespace(ptr=4096),
                                size=1234, dtype=np.dtype(np.float32))
    reduce(buf)
    assert sent == [(1, 2, 3)]
    assert _FakeNccl.calls == [("init", 2, (1, 2, 3), 0), ("allReduce", 4096, 4096, 1234, 7, 0, 0xABC)]
    buf.flags.c_contiguous = False
    with pytest.raises(tinydae.ConfigError, match="contiguous"):
        reduce(buf)


def test_nccl_buckets_run_on_a_side_stream_after_the_compute_stream(monkeypatch):
    """Without a GPU: each bucket's reduction is queued on a stream of its own after an event
    recorded on the compute stream (the backward that wrote it), and join() makes the compute
    stream wait for the last reduction on the device: no host wait anywhere."""
    import types

    log = []

    class Stream:
        def __init__(self, ptr=0x51DE, non_blocking=False):
            self.ptr = ptr

        def wait_event(self, event):
            log.append(("wait", self.ptr, event.on))

    class Event:
        def __init__(self, disable_timing=False):
            self.on = None

        def record(self, stream):
            self.on = stream.ptr
            log.append(("record", stream.ptr))

    compute = Stream(0xABC)
    cupy = types.ModuleType("cupy")
    cupy.cuda = types.SimpleNamespace(nccl=_FakeNccl, Stream=Stream, Event=Event, get_current_stream=lambda: compute)
    reduce = distributed.NcclAllReduce.__new__(distributed.NcclAllReduce)
    reduce.nccl, reduce.xp, reduce.comm = _FakeNccl, cupy, _FakeNccl.NcclCommunicator(2, (1,), 0)
    _FakeNccl.calls.clear()

    def buf(ptr, size):
        return types.SimpleNamespace(flags=types.SimpleNamespace(c_contiguous=True), data=types.SimpleNamespace(ptr=ptr),
                                     size=size, dtype=np.dtype(np.float32))

    reduce.join()  # nothing started: nothing to wait for
    assert log == []
    reduce.start(buf(4096, 10))
    reduce.start(buf(4136, 20))
    reduce.join()
    side = 0x51DE
    assert log == [("record", 0xABC), ("wait", side, 0xABC), ("record", 0xABC), ("wait", side, 0xABC),
                   ("record", side), ("wait", 0xABC, side)]
    assert [c[1:4] + c[6:] for c in _FakeNccl.calls] == [(4096, 4096, 10, side), (4136, 4136, 20, side)]


def test_nccl_missing_is_a_clear_error(monkeypatch):
    import types

    monkeypatch.setitem(sys.modules, "cupy", types.ModuleType("cupy"))
    monkeypatch.setitem(sys.modules, "cupy.cuda", None)
    with pytest.raises(tinydae.ConfigError, match="nvidia-nccl-cu13"):
        distributed.NcclAllReduce(types.SimpleNamespace(), types.SimpleNamespace(xp=None))


class _RecordingComm(distributed.SingleProcess):
    """One process that goes through fit's collective path, recording each reduction."""
    collective = True

    def __init__(self):
        self.reduced = []

    def allreduce_sum(self, buf):
        self.reduced.append((buf.shape, buf.dtype))


def test_a_signal_after_the_steps_flag_reduction_stops_at_the_next_step():
    """The ranks decide to stop on the reduced flag: a signal that reaches a rank after this
    step's reduction (here: during the progress callback) is acted on at the next step, by every
    rank alike; acting on the rank's own flag at once would leave the others in the next step's
    all-reduce, waiting forever (a review found it)."""
    model = tinydae.DAE(16, hidden=(4,), seed=0)
    x = np.random.default_rng(0).uniform(0, 1, (80, 16)).astype(np.float32)

    def progress(event, info):
        if event == "step" and info["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(tinydae.TrainingInterrupted) as stopped:
        tinydae.fit(model, x, epochs=1, batch_size=8, comm=_RecordingComm(), progress=progress)
    assert stopped.value.step == 4 and stopped.value.exit_code == 143
    with pytest.raises(tinydae.TrainingInterrupted) as stopped:  # one process decides at once, as before
        tinydae.fit(tinydae.DAE(16, hidden=(4,), seed=0), x, epochs=1, batch_size=8, progress=progress)
    assert stopped.value.step == 3


def test_fit_reduces_the_gradient_buffer_and_the_loss_once_a_step():
    model = tinydae.DAE(16, hidden=(4,), seed=0)
    x = np.random.default_rng(0).uniform(0, 1, (20, 16)).astype(np.float32)
    comm = _RecordingComm()
    tinydae.fit(model, x, epochs=1, batch_size=8, comm=comm)  # 3 steps
    grads = (model.grads.shape, model.grads.dtype)
    assert comm.reduced == [grads, ((1,), np.float64)] * 3


# -- the overlapped all-reduce (bucket_mb) ----------------------------------------------------

BUCKET_NETS = [("mlp:40,20", False, None), ("mlp:40,20", True, None), ("conv:4,6", True, (8, 8, 1)),
               ("unet:4,6", True, (8, 8, 1)), ("unet:4,6,sigma", False, (8, 8, 1))]


@pytest.mark.parametrize("arch,tied,shape", BUCKET_NETS)
@pytest.mark.parametrize("bucket_bytes", [0, 600, 2**30])
def test_each_bucket_starts_once_its_gradient_is_final(arch, tied, shape, bucket_bytes):
    """The buckets cover the gradient buffer once; when backward reports a layer done, the
    buckets planned there already hold their final values (a tied decoder adds to its encoder's
    weight before the encoder's own backward: starting that bucket at the decoder would send a
    partial sum); backward reports the layers in the order the plan assumed."""
    model = tinydae.DAE(64, arch=arch, tied=tied, dtype="float64", seed=1, input_shape=shape)
    plan = distributed.bucket_plan(model.net, bucket_bytes)
    ranges = sorted(r for rs in plan.values() for r in rs)
    assert ranges[0][0] == 0 and ranges[-1][1] == model.grads.size
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (5, 64))
    sigma = rng.uniform(0.1, 1, 5) if model.noise_conditional else None
    model.grads[...] = np.nan  # what a bucket would send if started before its layer wrote it
    seen, sent = [], []

    def done(name):
        seen.append(name)
        sent.extend((lo, hi, model.grads[lo:hi].copy()) for lo, hi in plan.get(name, ()))

    model.loss_sum_and_grad(x + 0.2 * rng.standard_normal(x.shape), x, np.zeros(1), sigma=sigma, done=done)
    sent.extend((lo, hi, model.grads[lo:hi].copy()) for lo, hi in plan.get(None, ()))
    assert seen == model.net.backward_order
    assert np.isfinite(model.grads).all() and np.abs(model.grads).max() > 1e-3
    for lo, hi, values in sent:
        np.testing.assert_array_equal(values, model.grads[lo:hi])
    if bucket_bytes == 0:  # every layer with parameters starts its own run at once
        assert None not in plan
    if bucket_bytes == 2**30:  # one bucket at the end: the plain all-reduce
        assert plan == {None: [(0, model.grads.size)]}


class _BucketComm(distributed.SingleProcess):
    """A collective rank `rank` of `size` that records the bucket reductions it starts, per step."""
    collective = True

    def __init__(self, rank, size):
        self.rank, self.size, self.started, self.waits = rank, size, [], 0

    def start_allreduce_sum(self, buf):
        self.started.append((buf.size, float(buf.sum())))

    def wait_all(self, handles):
        self.waits += 1


def test_a_rank_without_rows_starts_the_same_buckets_in_the_same_order():
    """The last batch (2 rows) leaves rank 0 of 3 without rows: it must start the others'
    buckets, in their order (mismatched collectives would hang), and wait once a step."""
    x = np.random.default_rng(0).uniform(0, 1, (18, 16)).astype(np.float32)
    started = {}
    for rank in (0, 2):
        comm = _BucketComm(rank, 3)
        tinydae.fit(tinydae.DAE(16, arch="mlp:8,6", seed=0), x, epochs=1, batch_size=8, comm=comm, bucket_mb=0)
        assert comm.waits == 3  # 3 steps
        started[rank] = comm.started
    sizes = [[size for size, _ in started[r]] for r in (0, 2)]
    assert sizes[0] == sizes[1] and len(sizes[0]) == 3 * 4  # 4 layers with parameters, 3 steps
    assert all(total == 0 for _, total in started[0][-4:])  # rank 0's last step: zeroed gradients
    assert any(total != 0 for _, total in started[2][-4:])


def test_bucket_mb_mistakes_are_clear():
    x = np.random.default_rng(0).uniform(0, 1, (8, 16)).astype(np.float32)
    for bad, match in [(-1, ">= 0"), (float("nan"), ">= 0"), ("4", ">= 0")]:
        with pytest.raises(tinydae.ConfigError, match=match):
            tinydae.fit(tinydae.DAE(16, hidden=(4,), seed=0), x, comm=_BucketComm(0, 2), bucket_mb=bad)
    with pytest.raises(tinydae.ConfigError, match="deterministic"):
        tinydae.fit(tinydae.DAE(16, hidden=(4,), seed=0), x, deterministic=True, bucket_mb=1)
    r = CliRunner().invoke(cli, ["train", "--bucket-mb", "-1"])
    one_error_line(r, "--bucket-mb must be a number of MiB >= 0")
    r = CliRunner().invoke(cli, ["train", "--bucket-mb", "1", "--deterministic"])
    one_error_line(r, "--bucket-mb and --deterministic")


# -- under mpiexec ---------------------------------------------------------------------------

def _run(ranks, *args, timeout=240, env=None, mpiexec_args=()):
    """python cli.py ARGS under mpiexec -n RANKS (RANKS=None: one plain process)."""
    command = [sys.executable, os.path.join(ROOT, "cli.py"), *args]
    if ranks is not None:
        command = [_mpiexec(), *mpiexec_args, "-n", str(ranks), *command]
    full_env = dict(os.environ, TINYDAE_THREADS="1", **(env or {}))
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)


# SGD: an update proportional to the gradient, so the ranks' rounding stays rounding.  (Adam's
# m / sqrt(v) turns a rounding difference in a near-zero gradient into a different step, up to
# lr: the resume test below compares Adam runs by their losses and 99.9% of their parameters.)
TRAIN = ["train", "--limit", "300", "--hidden", "48", "--batch-size", "32", "--seed", "5",
         "--checkpoint-every", "0", "--optimizer", "sgd", "--lr", "0.05"]


def _params(path):
    return load_checkpoint(path).params


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """One plain process's runs, per dtype."""
    outs = {}
    for dtype in ("float32", "float64"):
        outs[dtype] = tmp_path_factory.mktemp(f"one-{dtype}")
        r = _run(None, *TRAIN, "--epochs", "2", "--dtype", dtype, "--out", str(outs[dtype]))
        assert r.returncode == 0, r.stderr
    return outs


# How far R ranks may end from one process after 18 SGD steps with momentum: float32 rounding of
# the reordered sums (~1e-7 relative), grown by the training dynamics; float64 shows that
# nothing but rounding differs.
TOLERANCE = {"float32": 3e-5, "float64": 1e-12}


@needs_mpi
@pytest.mark.mpi
@pytest.mark.parametrize("ranks,dtype", [(2, "float32"), (3, "float32"), (3, "float64")])
def test_ranks_train_as_one_process_does(ranks, dtype, one_process, tmp_path):
    """R ranks: within rounding of one process (the batch of 32 split 16/16 or 11/11/10, 270
    rows: the last batch 14 rows), bit-identical when repeated; one set of files, one summary."""
    runs = []
    for i in range(2):
        out = tmp_path / f"r{i}"
        r = _run(ranks, *TRAIN, "--epochs", "2", "--dtype", dtype, "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert r.stderr.count("epoch 2/2  train") == 1 and r.stdout.count("checkpoint:") == 1, r.stderr
        assert f"{ranks} processes (MPI)" in r.stderr
        runs.append(out)
    one = one_process[dtype]
    assert sorted(os.listdir(runs[0])) == sorted(os.listdir(one))
    a, b, ref = (_params(p / "checkpoint.h5") for p in (*runs, one))
    np.testing.assert_array_equal(a, b)  # the same R: the same bits
    assert not np.array_equal(a, ref)  # summed in another order: rounding differs ...
    np.testing.assert_allclose(a, ref, rtol=0, atol=TOLERANCE[dtype] * np.abs(ref).max())  # ... by rounding only
    h1, hr = (load_checkpoint(p / "checkpoint.h5").history for p in (one, runs[0]))
    for row1, rowr in zip(h1, hr):
        for key in ("train_loss", "val_bce_denoise", "val_bce_clean"):
            assert rowr[key] == pytest.approx(row1[key], rel=1e-5 if dtype == "float32" else 1e-12), key


@needs_mpi
@pytest.mark.mpi
def test_resume_with_another_number_of_ranks_adam(tmp_path):
    adam = [*TRAIN[:-4], "--lr", "0.002"]
    one, out = tmp_path / "one", tmp_path / "run"
    assert _run(None, *adam, "--epochs", "2", "--out", str(one)).returncode == 0
    r = _run(2, *adam, "--epochs", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    r = _run(3, "train", "--resume", str(out / "checkpoint.h5"), "--out", str(out), "--epochs", "2",
             "--checkpoint-every", "0")
    assert r.returncode == 0, r.stderr
    ref, got = _params(one / "checkpoint.h5"), _params(out / "checkpoint.h5")
    diff = np.abs(got - ref)
    assert np.quantile(diff, 0.999) < 1e-6 * np.abs(ref).max() and diff.max() < 2 * 0.002, diff.max()
    h1, hr = (load_checkpoint(p / "checkpoint.h5").history for p in (one, out))
    assert [row["val_bce_denoise"] for row in hr] == pytest.approx([row["val_bce_denoise"] for row in h1], rel=1e-5)


@needs_mpi
@pytest.mark.mpi
def test_distributed_mistakes_are_one_error_line(tmp_path):
    python, cli_py = sys.executable, os.path.join(ROOT, "cli.py")
    r = _run(2, "train", "--epochs", "0", "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: --epochs and --batch-size must be >= 1"]
    r = _run(2, "export", "nothing.h5")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: 'export' runs on one process")
    assert len(r.stderr.strip().splitlines()) == 1
    # click's own messages, once: a usage error (exit 2) and --help (exit 0)
    r = _run(2, "train", "--bogus")
    assert r.returncode == 2 and r.stderr.count("No such option") == 1 and "Traceback" not in r.stderr, r.stderr
    r = _run(2, "train", "--help")
    assert r.returncode == 0 and r.stdout.count("Usage: ") == 1 and "Traceback" not in r.stderr, r.stderr
    # ranks started with different options (an MPMD launch): refused before any work
    common = ["--epochs", "1", "--limit", "200", "--out", str(tmp_path / "b")]
    r = subprocess.run([_mpiexec(), "-n", "1", python, cli_py, "train", *common, ":", "-n", "1", python, cli_py,
                        "train", *common, "--seed", "1"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "ranks disagree on the command's options: rank 1 has {'seed': 1}, rank 0 {'seed': 0}" in lines[0]
    assert not (tmp_path / "b").exists()
    r = subprocess.run([_mpiexec(), "-n", "1", python, cli_py, "train", *common, ":", "-n", "1", python, cli_py,
                        "sample", "x.h5"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: the ranks disagree on the command: rank 1 has 'sample', rank 0 'train'; start every rank with the "
        "same command"], r.stderr


AGREE = """
import sys
from tinydae import distributed
from tinydae.errors import DataError, TinyDAEError
comm = distributed.connect("mpi")
def read():  # rank 2 alone fails
    if comm.rank == 2:
        raise DataError("x.npz: no such file")
    return comm.rank
def write():  # rank 0 alone runs it
    raise DataError("disk full")
for what, fn in (("agree", read), ("root_call", write)):
    try:
        getattr(comm, what)(fn)
        line = f"{what} {comm.rank} ok"
    except TinyDAEError as e:
        line = f"{what} {comm.rank} {type(e).__name__} {e} {e.exit_code}"
    sys.stdout.write(line + "\\n")  # one write: the ranks' lines do not interleave
    sys.stdout.flush()
"""


@needs_mpi
@pytest.mark.mpi
def test_a_failure_on_one_rank_reaches_every_rank():
    """agree: rank 2 fails, ranks 0 and 1 raise 'rank 2: ...' (nobody waits in a collective);
    root_call: rank 0's error reaches ranks 1 and 2."""
    r = subprocess.run([_mpiexec(), "-n", "3", sys.executable, "-c", AGREE], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    lines = sorted(r.stdout.splitlines())
    assert lines == ["agree 0 RankFailed rank 2: x.npz: no such file 2", "agree 1 RankFailed rank 2: x.npz: no such file 2",
                     "agree 2 DataError x.npz: no such file 2", "root_call 0 DataError disk full 2",
                     "root_call 1 RankFailed disk full 2", "root_call 2 RankFailed disk full 2"], r.stdout


def _ranks_of(out):
    """pids of the python processes whose command line names `out` (the ranks, not mpiexec)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if str(out).encode() in args and any(a.endswith(b"cli.py") for a in args) \
                and not any(a.endswith(b"mpiexec") or a.endswith(b"mpiexec.hydra") for a in args):
            pids.append(int(entry))
    return sorted(pids)


@needs_mpi
@pytest.mark.mpi
@pytest.mark.parametrize("target", ["mpiexec", "one rank"])
def test_sigterm_stops_every_rank_with_the_checkpoint_saved(tmp_path, target):
    """SIGTERM to mpiexec (forwarded to every rank) or to one rank alone, at any moment of a step:
    the ranks stop at one step (they decide on the reduced flag), exit 143, checkpoint saved."""
    out = tmp_path / "run"
    command = [_mpiexec(), "-n", "2", sys.executable, os.path.join(ROOT, "cli.py"), *TRAIN, "--epochs", "500",
               "--out", str(out)]
    p = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                         env=dict(os.environ, TINYDAE_THREADS="1"))
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.h5").exists() and time.monotonic() < deadline:  # training is under way
        time.sleep(0.2)
    if target == "mpiexec":
        p.send_signal(signal.SIGTERM)
    else:
        ranks = _ranks_of(out)
        assert len(ranks) == 2, ranks
        os.kill(ranks[-1], signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # the ranks hang: end them, then fail
        for pid in _ranks_of(out):
            os.kill(pid, signal.SIGKILL)
        p.kill()
        p.communicate()
        pytest.fail("the ranks did not stop within 120 s of SIGTERM")
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert p.returncode == 143 and len(lines) == 1 and "by SIGTERM" in lines[0], err
    ckpt = load_checkpoint(out / "checkpoint.h5")
    assert f"at step {ckpt.state['step']} by" in lines[0]  # saved where it stopped, on both ranks alike


@needs_mpi
@pytest.mark.mpi
@pytest.mark.parametrize("sampler", ["mean", "annealed"])
def test_sharded_chains_are_one_process_chains(sampler, one_process, tmp_path):
    """mpiexec -n 3 sample: chain i's draws depend on i only, so at the same batch size per rank
    (12 chains, batches of 4) and one thread each, the samples and the kept states are one
    process's bit for bit; the mean change per step is a reordered float sum; one PNG, one h5."""
    import h5py

    ckpt = str(one_process["float32"] / "checkpoint.h5")
    args = ["sample", ckpt, "--n", "12", "--batch-size", "4", "--steps", "6", "--keep-every", "2",
            "--sampler", sampler, "--chain-corruption", "gaussian:0.1..1"]
    for ranks, name in ((None, "one"), (3, "three")):
        r = _run(ranks, *args, "--out", str(tmp_path / f"{name}.png"), "--h5", str(tmp_path / f"{name}.h5"))
        assert r.returncode == 0, r.stderr
    assert r.stdout.count("chain:") == 1 and "on 3 processes" in r.stdout
    with h5py.File(tmp_path / "one.h5") as a, h5py.File(tmp_path / "three.h5") as b:
        assert a["samples"].shape == (12, 784) and a["trajectory"].shape == (10, 4, 784)
        for key in ("samples", "trajectory", "kept_steps"):
            np.testing.assert_array_equal(b[key][()], a[key][()])
        np.testing.assert_allclose(b["mean_abs_change"][()], a["mean_abs_change"][()], rtol=1e-12)
        assert np.abs(np.diff(a["samples"][()], axis=0)).max() > 0.1  # distinct chains, not one repeated
    assert (tmp_path / "three.png").read_bytes() == (tmp_path / "one.png").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.h5", "one.png", "three.h5", "three.png"]


@needs_mpi
@pytest.mark.mpi
def test_sharded_improve_of_a_samples_file(one_process, tmp_path):
    """improve --from FILE under mpiexec -n 2: the file's rows split between the ranks; the
    result is one process's: bit for bit when each rank's share makes the one process's batches
    (8 rows, 4 a rank, --batch-size 4), to float32 rounding when it does not (7 rows: 3 and 4 a
    rank against batches of 4 and 3; a GEMM's rows round differently with the batch's row count
    on some CPUs, e.g. OpenBLAS's AVX-512 kernels)."""
    import h5py

    ckpt = str(one_process["float32"] / "checkpoint.h5")
    for rows in (8, 7):
        start = tmp_path / f"start{rows}.npz"
        np.savez(start, x=np.random.default_rng(4).uniform(0, 1, (rows, 784)).astype(np.float32))
        for ranks, name in ((None, f"one{rows}"), (2, f"two{rows}")):
            r = _run(ranks, "improve", ckpt, "--from", str(start), "--n", "100", "--steps", "3", "--batch-size", "4",
                     "--out", str(tmp_path / f"{name}.png"), "--h5", str(tmp_path / f"{name}.h5"))
            assert r.returncode == 0, r.stderr
        with h5py.File(tmp_path / f"one{rows}.h5") as a, h5py.File(tmp_path / f"two{rows}.h5") as b:
            assert a["samples"].shape == (rows, 784)
            assert np.abs(np.diff(a["samples"][()], axis=0)).max() > 0.01  # the rows stay distinct
            if rows == 8:
                np.testing.assert_array_equal(b["samples"][()], a["samples"][()])
            else:
                np.testing.assert_allclose(b["samples"][()], a["samples"][()], rtol=0, atol=1e-5)
    r = _run(3, "sample", ckpt, "--n", "2", "--out", str(tmp_path / "x.png"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --n 2 gives fewer chains than the 3 processes: ask for at least 3"], r.stderr


# -- rows left on disk (data.Rows): each rank reads its rows only ------------------------------

@pytest.fixture(scope="module")
def glyph_files(tmp_path_factory):
    import h5py

    folder = tmp_path_factory.mktemp("lazy")
    u8 = (tinydae.glyphs(600, seed=0).x * 255).round().astype(np.uint8).reshape(-1, 28, 28)
    np.save(folder / "g.npy", u8)
    with h5py.File(folder / "g.h5", "w") as f:
        f["images"] = u8
    return folder


@pytest.mark.parametrize("name", ["g.npy", "g.h5"])
def test_rows_on_disk_train_as_rows_in_memory(glyph_files, name):
    """lazy=True: the same rows, the same training, bit for bit (one process)."""
    path = str(glyph_files / name)
    eager, lazy = (tinydae.load_dataset(path, lazy=flag) for flag in (False, True))
    assert isinstance(lazy.x, tinydae.data.Rows) and isinstance(eager.x, np.ndarray)
    assert lazy.image_shape == eager.image_shape == (28, 28)
    index = np.array([5, 3, 3, 599, 0])
    np.testing.assert_array_equal(lazy.x[index], eager.x[index])  # any order, repeats (h5py reads sorted)
    runs = []
    for data in (eager, lazy):
        train, val = data.split(0.1, seed=0)
        model = tinydae.DAE(784, hidden=(32,), seed=0)
        state = tinydae.fit(model, train, val, epochs=2, batch_size=50, seed=1)
        runs.append((model.params.copy(), state.history))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1][-1]["val_bce_denoise"] == runs[1][1][-1]["val_bce_denoise"]


def test_rows_on_disk_are_read_a_batch_at_a_time(glyph_files, monkeypatch):
    reads = []
    original = tinydae.data.Rows._read
    monkeypatch.setattr(tinydae.data.Rows, "_read", lambda self, rows: reads.append(len(rows)) or original(self, rows))
    data = tinydae.load_dataset(str(glyph_files / "g.npy"), lazy=True)
    train, _ = data.split(0.1, seed=0)
    tinydae.fit(tinydae.DAE(784, hidden=(8,), seed=0), train, epochs=1, batch_size=50, seed=1)
    assert reads[0] == 540  # the value check: one block (blocks of 65,536 rows)
    assert reads[1:] == [50] * 10 + [40]  # then one batch per step, nothing else


def test_bad_rows_on_disk_are_found_where_they_are(tmp_path):
    x = np.random.default_rng(0).uniform(0, 1, (300, 16)).astype(np.float32)
    x[237, 3] = 2.5
    np.save(tmp_path / "x.npy", x)
    data = tinydae.load_dataset(str(tmp_path / "x.npy"), lazy=True)
    with pytest.raises(tinydae.DataError, match=r"lies in \[.*2\.5\]"):
        tinydae.fit(tinydae.DAE(16, hidden=(4,), seed=0), data, epochs=1)
    x[237, 3] = np.nan
    np.save(tmp_path / "x.npy", x)
    data = tinydae.load_dataset(str(tmp_path / "x.npy"), lazy=True)
    with pytest.raises(tinydae.DataError, match="first in row 237"):
        tinydae.fit(tinydae.DAE(16, hidden=(4,), seed=0), data, epochs=1)
    with pytest.raises(tinydae.DataError, match="--rescale needs the whole file"):
        tinydae.load_dataset(str(tmp_path / "x.npy"), lazy=True, rescale=True)


READS = """
import sys, numpy as np, tinydae
from tinydae import distributed
comm = distributed.connect("mpi")
reads = []
original = tinydae.data.Rows._read
tinydae.data.Rows._read = lambda self, rows: reads.append(len(rows)) or original(self, rows)
train, val = tinydae.load_dataset(sys.argv[1], lazy=True).split(0.1, seed=0)
tinydae.fit(tinydae.DAE(784, hidden=(8,), seed=0), train, epochs=1, batch_size=50, seed=1, comm=comm)
sys.stdout.write(f"{comm.rank} {reads}\\n")
"""


@needs_mpi
@pytest.mark.mpi
def test_each_rank_reads_only_its_rows(glyph_files):
    """mpiexec -n 2, a .npy file left on disk: rank 0 checks the one block of values, each rank
    reads the rows the ranks compare (up to 4,096 spread over the file: all 540 here), and each
    step each rank reads its half of the batch, nothing more."""
    r = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-c", READS, str(glyph_files / "g.npy")],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, env=dict(os.environ, TINYDAE_THREADS="1"))
    assert r.returncode == 0, r.stderr
    reads = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert reads["0"] == str([540, 540] + [25] * 10 + [20])
    assert reads["1"] == str([540] + [25] * 10 + [20])


# -- feature figures from sums: one reduction --------------------------------------------------

def test_sharded_figures_equal_the_whole_set_figures():
    """One process: the figures from sums equal features.fid / inception_score / class_entropy of
    the whole sets (the covariance from sums, float64)."""
    from tinydae.science import features
    from tinydae.classifier import Classifier

    judge = Classifier(784, hidden=(32, 16), seed=0)
    rows = tinydae.glyphs(700, seed=3).x
    samples, reference = rows[:300], rows[300:]
    got = features.sharded_figures(judge, samples, reference, batch=128)  # several blocks per set

    def blocks(f, rows):  # the same 128-row blocks: float32 GEMM rows can round differently in
        return np.concatenate([f(rows[i:i + 128]) for i in range(0, len(rows), 128)])  # other sizes

    fs, fr, ps = blocks(judge.features, samples), blocks(judge.features, reference), blocks(judge.probs, samples)
    assert got["fid"] == pytest.approx(features.fid(fs, fr), rel=1e-8) and got["fid"] > 0.01
    assert got["inception_score"] == pytest.approx(features.inception_score(ps), rel=1e-10)
    assert got["inception_score"] > 1.001
    assert got["class_entropy"] == pytest.approx(features.class_entropy(ps), abs=1e-12)
    assert (got["n_samples"], got["n_reference"]) == (300, 400)
    with pytest.raises(tinydae.DataError, match="at least 2"):
        features.sharded_figures(judge, samples[:1], reference)


@needs_mpi
@pytest.mark.mpi
def test_sample_scores_with_one_reduction_as_one_process_does(one_process, tmp_path):
    """sample --score under mpiexec -n 3: each rank scores its own chains and reference rows;
    the figures are one process's up to the order of the sums."""
    import json

    clf = tmp_path / "clf.h5"
    r = _run(None, "classifier", "train", "--limit", "600", "--epochs", "1", "--hidden", "32,16", "--out", str(clf))
    assert r.returncode == 0, r.stderr
    ckpt = str(one_process["float32"] / "checkpoint.h5")
    scores = []
    for ranks in (None, 3):
        r = _run(ranks, "sample", ckpt, "--n", "30", "--steps", "3", "--batch-size", "10", "--score", str(clf),
                 "--out", str(tmp_path / f"{ranks}.png"), "--json")
        assert r.returncode == 0, r.stderr
        scores.append(json.loads(r.stdout)["score"])
    one, three = scores
    assert one["n_samples"] == three["n_samples"] == 30 and one["n_reference"] == three["n_reference"] == 300
    # Each rank computes its share's features in blocks of other sizes than one process's, and a
    # float32 GEMM's rows can round differently with the row count (OpenBLAS's AVX-512 kernels:
    # ~1e-7 relative), so the figures agree to float32 rounding, not to the float64 sums' 1e-12.
    for key in ("fid", "inception_score", "class_entropy"):
        assert three[key] == pytest.approx(one[key], rel=1e-6, abs=1e-12), key
    assert one["fid"] > 0


# -- --deterministic: the same bits for any R -------------------------------------------------------

@needs_mpi
@pytest.mark.mpi
def test_deterministic_training_is_bit_identical_for_any_number_of_ranks(tmp_path):
    """Batches of 200 rows = chunks of 64, 64, 64, 8 (the last batch of 50: one chunk, so two of
    three ranks hold none): one plain process, 2 and 3 ranks end with the same parameters, bit
    for bit; and within rounding of the ordinary (non-deterministic) run."""
    args = ["train", "--deterministic", "--limit", "500", "--hidden", "64", "--batch-size", "200", "--epochs", "2",
            "--corruption", "gaussian:0.1..0.5", "--seed", "4"]
    for ranks in (None, 2, 3):
        r = _run(ranks, *args, "--out", str(tmp_path / f"r{ranks}"))
        assert r.returncode == 0, r.stderr
    r = _run(None, "train", *args[2:], "--out", str(tmp_path / "plain"))
    assert r.returncode == 0, r.stderr
    one, two, three, plain = (_params(tmp_path / name / "checkpoint.h5") for name in ("rNone", "r2", "r3", "plain"))
    np.testing.assert_array_equal(two, one)
    np.testing.assert_array_equal(three, one)
    assert not np.array_equal(plain, one)
    np.testing.assert_allclose(one, plain, rtol=0, atol=2e-5 * np.abs(plain).max())


@needs_mpi
@pytest.mark.mpi
def test_buckets_reduce_to_the_same_gradients(tmp_path):
    """--bucket-mb: the all-reduce in buckets started during backward.  2 ranks: the same bits as
    one all-reduce after backward (a sum of two values has one rounding); 3 ranks (MPICH may
    associate the three sums otherwise per bucket size): within rounding of one process."""
    runs = {}
    for name, ranks, extra in [("flat2", 2, []), ("bucket2", 2, ["--bucket-mb", "0"]),
                               ("bucket3", 3, ["--bucket-mb", "0.05"]), ("one", None, [])]:
        r = _run(ranks, *TRAIN, "--epochs", "1", "--out", str(tmp_path / name), *extra)
        assert r.returncode == 0, r.stderr
        runs[name] = _params(tmp_path / name / "checkpoint.h5")
    np.testing.assert_array_equal(runs["bucket2"], runs["flat2"])
    np.testing.assert_allclose(runs["bucket3"], runs["one"], rtol=0, atol=TOLERANCE["float32"] * np.abs(runs["one"]).max())


@needs_mpi
@pytest.mark.mpi
def test_bench_scale_compares_buckets_with_one_allreduce():
    import json as json_module

    r = CliRunner().invoke(cli, ["bench", "scale", "--ranks", "2", "--steps", "2", "--repeats", "2", "--arch", "mlp:16",
                                 "--buckets", "0", "--json"])
    assert r.exit_code == 0, r.output
    rows = [row for row in json_module.loads(r.stdout)["rows"] if row["kind"] == "overlap"]
    assert [row["bucket_mb"] for row in rows] == [None, 0.0]
    assert rows[1]["buckets"] == 2 and all(row["step_ms"] > 0 for row in rows)  # enc0 and dec0 apart
    r = CliRunner().invoke(cli, ["bench", "scale", "--buckets", "1,x"])
    one_error_line(r, "--buckets takes sizes in MiB")
