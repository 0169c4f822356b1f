"""Every fused twin against the NumPy reference (kernels/reference.py), on random inputs.

The "cuda" twin runs under Numba's CUDA simulator when NUMBA_ENABLE_CUDASIM=1 (as .ci/run
does, with small sizes), on a real GPU with CuPy arrays when one is present, and is
skipped with the reason otherwise.
"""
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinydae.kernels import reference as ref

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
ACTS = sorted(ref.ACTIVATIONS)


class Twin:
    def __init__(self, name):
        self.name = name
        if name == "cpu":
            import tinydae.kernels.cpu as module
            self.to_dev, self.to_host = np.ascontiguousarray, np.asarray
        elif SIM:
            import tinydae.kernels.cuda as module
            self.to_dev, self.to_host = np.ascontiguousarray, np.asarray
        else:
            from conftest import gpu_unavailable_reason
            reason = gpu_unavailable_reason()
            if reason:
                pytest.skip(f"cuda twin needs NUMBA_ENABLE_CUDASIM=1 (as .ci/run sets) or a GPU: {reason}")
            import cupy

            import tinydae.kernels.cuda as module
            from bench.gpu_preflight import cupy_to_dev  # cupy.ascontiguousarray refuses NumPy arrays
            self.to_dev, self.to_host = cupy_to_dev, cupy.asnumpy
        self.k = module
        # The simulator runs every GPU thread as a Python thread: keep its cases few and small.
        self.examples = 8 if (name == "cuda" and SIM) else 40
        self.exact_float = name == "cpu"  # GPU compilers may fuse a*b+c into one FMA

    def empty_like(self, a):
        return self.to_dev(np.empty_like(a))


@pytest.fixture(scope="module", params=["cpu", pytest.param("cuda", marks=pytest.mark.cudasim)])
def twin(request):
    return Twin(request.param)


def tol(dtype):
    """The float32 reference rounds intermediates (sigmoid, 1 - y^2, ...) to float32 while the
    twins compute in float64 and round once: up to ~1.5 ulp(1) = 1.8e-7 of difference, times
    the loss scale (up to 2 here).  atol 1e-6 (about 8 ulp of 1) covers that with margin; a
    real bug is orders of magnitude larger.  (The BCE gradient came within 5.5e-8 of the
    former atol of 2e-7 in 20,000 random cases.)"""
    return dict(rtol=2e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)


shapes = st.tuples(st.integers(1, 5), st.integers(1, 37))
dtypes = st.sampled_from([np.float32, np.float64])


def run(twin, test):
    """Run a Hypothesis test body with the twin's example budget."""
    settings(max_examples=twin.examples, deadline=None)(test)()


def test_philox_uint32_is_bit_identical(twin):
    @given(n=st.integers(1, 70), seed=st.integers(0, 2**64 - 1), step=st.integers(0, 2**32 - 1),
           stream=st.integers(0, 5), offset=st.integers(0, 2**40))
    def body(n, seed, step, stream, offset):
        expected = np.empty(n, np.uint32)
        ref.philox_uint32(expected, seed, step, stream, offset)
        out = twin.to_dev(np.zeros(n, np.uint32))
        twin.k.philox_uint32(out, seed, step, stream, offset)
        np.testing.assert_array_equal(twin.to_host(out), expected)
    run(twin, body)


def test_corrupt_matches_reference(twin):
    @given(shape=shapes, dtype=dtypes, mode=st.sampled_from([0, 1, 2, 3]), level=st.floats(0.01, 0.99),
           seed=st.integers(0, 2**64 - 1), step=st.integers(0, 10**6), stream=st.integers(0, 4),
           offset=st.integers(0, 10**6), data_seed=st.integers(0, 2**32 - 1))
    def body(shape, dtype, mode, level, seed, step, stream, offset, data_seed):
        x = np.random.default_rng(data_seed).uniform(0.05, 0.95, shape).astype(dtype)
        expected = np.empty_like(x)
        ref.corrupt(expected, x, mode, level, seed, step, stream, offset)
        out = twin.empty_like(x)
        twin.k.corrupt(out, twin.to_dev(x), mode, level, seed, step, stream, offset)
        got = twin.to_host(out)
        assert got.dtype == dtype
        if mode == ref.CORRUPTION_GAUSSIAN:  # log/cos/sin differ by an ulp or two between libraries
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=4e-7 * level * 6)
        else:  # masks are decided on exact float32 uniforms: bit-identical
            np.testing.assert_array_equal(got, expected)
    run(twin, body)


def test_bias_act_forward_and_backward(twin):
    @given(shape=shapes, dtype=dtypes, act=st.sampled_from(ACTS), data_seed=st.integers(0, 2**32 - 1),
           in_place=st.booleans())
    def body(shape, dtype, act, data_seed, in_place):
        rng = np.random.default_rng(data_seed)
        z = rng.normal(0, 3, shape).astype(dtype)
        b = rng.normal(0, 1, shape[1]).astype(dtype)
        y_ref = np.empty_like(z)
        ref.bias_act_forward(y_ref, z, b, act)
        z_dev = twin.to_dev(z)
        y = z_dev if in_place else twin.empty_like(z)
        twin.k.bias_act_forward(y, z_dev, twin.to_dev(b), act)
        np.testing.assert_allclose(twin.to_host(y), y_ref, **tol(dtype))

        dy = rng.normal(0, 1, shape).astype(dtype)
        db0 = rng.normal(0, 1, shape[1]).astype(dtype)  # backward adds into db
        dz_ref, db_ref = np.empty_like(z), db0.copy()
        ref.bias_act_backward(dz_ref, db_ref, dy, y_ref, act)
        dz, db = twin.empty_like(z), twin.to_dev(db0.copy())
        twin.k.bias_act_backward(dz, db, twin.to_dev(dy), twin.to_dev(y_ref), act)
        np.testing.assert_allclose(twin.to_host(dz), dz_ref, **tol(dtype))
        t = tol(dtype)
        np.testing.assert_allclose(twin.to_host(db), db_ref, rtol=t["rtol"] * 10, atol=t["atol"] * 10 * shape[0])
    run(twin, body)


def test_bias_sigmoid_change(twin):
    @given(shape=shapes, dtype=dtypes, data_seed=st.integers(0, 2**32 - 1))
    def body(shape, dtype, data_seed):
        rng = np.random.default_rng(data_seed)
        z = rng.normal(0, 20, shape).astype(dtype)  # saturates some pixels at 0 and 1
        b = rng.normal(0, 1, shape[1]).astype(dtype)
        prev = rng.random(shape).astype(dtype)
        y_ref, change_ref = z.copy(), np.full(shape[0], np.nan)
        ref.bias_sigmoid_change(y_ref, change_ref, b, prev)
        y, change = twin.to_dev(z), twin.to_dev(np.full(shape[0], np.nan))
        twin.k.bias_sigmoid_change(y, change, twin.to_dev(b), twin.to_dev(prev))
        if twin.exact_float:  # the CPU twin runs the reference's own float32 operations
            np.testing.assert_array_equal(twin.to_host(y), y_ref)
        else:
            np.testing.assert_allclose(twin.to_host(y), y_ref, **tol(dtype))
        # change sums up to 37 differences: the twin's y may differ from y_ref by the tolerance
        t = tol(dtype)
        np.testing.assert_allclose(twin.to_host(change), change_ref, rtol=t["rtol"], atol=t["atol"] * shape[1])
    run(twin, body)


def test_bias_sigmoid_change_checks_its_arguments(twin):
    y = twin.to_dev(np.random.default_rng(1).random((3, 5)).astype(np.float32))
    b, prev = twin.to_dev(np.ones(5, np.float32)), twin.to_dev(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="row sums must be a float64 array of shape \\(3,\\)"):
        twin.k.bias_sigmoid_change(y, twin.to_dev(np.zeros(3, np.float32)), b, prev)
    with pytest.raises(ValueError, match="row sums"):
        twin.k.bias_sigmoid_change(y, twin.to_dev(np.zeros(4)), b, prev)
    with pytest.raises(ValueError, match="shape"):
        twin.k.bias_sigmoid_change(y, twin.to_dev(np.zeros(3)), b, twin.to_dev(np.zeros((3, 4), np.float32)))


@pytest.mark.parametrize("loss", ["sigmoid_bce_forward_backward", "sigmoid_mse_forward_backward"])
def test_losses_match_reference(twin, loss):
    @given(shape=shapes, dtype=dtypes, scale=st.floats(0.001, 2.0), data_seed=st.integers(0, 2**32 - 1))
    def body(shape, dtype, scale, data_seed):
        rng = np.random.default_rng(data_seed)
        z = rng.normal(0, 4, shape).astype(dtype)
        t = rng.random(shape).astype(dtype)
        d_ref = np.empty_like(z)
        total_ref = getattr(ref, loss)(d_ref, z, t, scale)
        d = twin.empty_like(z)
        total = getattr(twin.k, loss)(d, twin.to_dev(z), twin.to_dev(t), scale)
        assert isinstance(total, float)
        assert total == pytest.approx(total_ref, rel=1e-6 if dtype == np.float32 else 1e-12)
        if twin.exact_float:  # the CPU twin runs the reference's own operations for dlogits
            np.testing.assert_array_equal(twin.to_host(d), d_ref)
        else:
            np.testing.assert_allclose(twin.to_host(d), d_ref, **tol(dtype))
        # the training path: the sum goes to a caller's (1,) float64 array, nothing is returned
        on_device, d2 = twin.to_dev(np.full(1, np.nan)), twin.empty_like(z)
        assert getattr(twin.k, loss)(d2, twin.to_dev(z), twin.to_dev(t), scale, total=on_device) is None
        assert twin.to_host(on_device)[0] == total  # the same kernel, the same sum
        np.testing.assert_array_equal(twin.to_host(d2), twin.to_host(d))
    run(twin, body)


@pytest.mark.parametrize("loss", ["sigmoid_bce_forward_backward", "sigmoid_mse_forward_backward"])
def test_reference_loss_total_and_its_checks(loss):
    rng = np.random.default_rng(2)
    z, t = rng.normal(0, 4, (3, 7)), rng.random((3, 7))
    total = np.full(1, np.nan)
    assert getattr(ref, loss)(np.empty_like(z), z, t, 0.5, total=total) is None
    assert total[0] == getattr(ref, loss)(np.empty_like(z), z, t, 0.5)
    with pytest.raises(ValueError, match="float64 array of shape \\(1,\\)"):
        getattr(ref, loss)(np.empty_like(z), z, t, 0.5, total=np.zeros(1, np.float32))


def test_loss_total_is_checked(twin):
    z = twin.to_dev(np.random.default_rng(1).random((3, 5)))
    for bad in (np.zeros(2), np.zeros(1, np.float32), np.zeros((1, 1))):
        with pytest.raises(ValueError, match="total must be a float64 array of shape \\(1,\\)"):
            twin.k.sigmoid_bce_forward_backward(twin.empty_like(z), z, z, 1.0, total=twin.to_dev(bad))


@pytest.mark.parametrize("loss", ["sigmoid_bce_forward_backward", "sigmoid_mse_forward_backward"])
def test_cpu_loss_may_write_its_gradient_over_the_logits(loss):
    """The CPU twin uses dlogits as scratch; with dlogits = logits it must not read its own scratch."""
    import tinydae.kernels.cpu as K

    rng = np.random.default_rng(4)
    z = rng.normal(0, 4, (7, 33)).astype(np.float32)
    t = rng.random((7, 33)).astype(np.float32)
    d_ref = np.empty_like(z)
    total_ref = getattr(ref, loss)(d_ref, z, t, 0.5)
    zd = z.copy()
    assert getattr(K, loss)(zd, zd, t, 0.5) == pytest.approx(total_ref, rel=1e-6)
    np.testing.assert_array_equal(zd, d_ref)


def test_losses_at_extreme_logits(twin):
    z = np.array([[-1e4, -100.0, -1.0, 0.0, 1.0, 100.0, 1e4]], np.float32)
    t = np.array([[0.0, 1.0, 0.5, 0.3, 0.0, 0.0, 1.0]], np.float32)
    for loss in ("sigmoid_bce_forward_backward", "sigmoid_mse_forward_backward"):
        d = twin.empty_like(z)
        total = getattr(twin.k, loss)(d, twin.to_dev(z), twin.to_dev(t), 1.0)
        d_ref = np.empty_like(z)
        assert np.isfinite(total) and total == pytest.approx(getattr(ref, loss)(d_ref, z, t, 1.0), rel=1e-6)
        np.testing.assert_allclose(twin.to_host(d), d_ref, atol=1e-7)


def test_optimizers_match_reference(twin):
    @given(n=st.integers(1, 300), dtype=dtypes, kind=st.sampled_from(["adam", "adamw", "sgd", "nesterov"]),
           data_seed=st.integers(0, 2**32 - 1))
    def body(n, dtype, kind, data_seed):
        rng = np.random.default_rng(data_seed)
        p0 = rng.normal(size=n).astype(dtype)
        grads = rng.normal(size=(3, n)).astype(dtype)
        p_ref, a_ref, b_ref = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
        p, a, b = twin.to_dev(p0.copy()), twin.to_dev(np.zeros_like(p0)), twin.to_dev(np.zeros_like(p0))
        for t, g in enumerate(grads, start=1):
            if kind in ("adam", "adamw"):
                args = (1e-2, 0.9, 0.999, 1e-8, 0.01, kind == "adamw", t)
                ref.adam_update(p_ref, g, a_ref, b_ref, *args)
                twin.k.adam_update(p, twin.to_dev(g), a, b, *args)
            else:
                args = (0.05, 0.9, kind == "nesterov", 0.01)
                ref.sgd_update(p_ref, g, a_ref, *args)
                twin.k.sgd_update(p, twin.to_dev(g), a, *args)
        if twin.exact_float:  # same float32 operations in the same order: bit-identical
            np.testing.assert_array_equal(twin.to_host(p), p_ref)
            np.testing.assert_array_equal(twin.to_host(a), a_ref)
        else:
            np.testing.assert_allclose(twin.to_host(p), p_ref, **tol(dtype))
            np.testing.assert_allclose(twin.to_host(a), a_ref, **tol(dtype))
    run(twin, body)


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_a_non_finite_guard_skips_the_update(twin, kind):
    """The update kernels read the step's loss sum (guard) and change nothing when it is not
    finite; a finite guard changes nothing about the update."""
    rng = np.random.default_rng(5)
    p0, g, m0, v0 = (rng.normal(size=50).astype(np.float32) for _ in range(4))
    v0 = np.abs(v0)
    results = {}
    for name, guard in (("none", None), ("finite", 123.5), ("nan", np.nan), ("inf", np.inf), ("-inf", -np.inf)):
        for module, to_dev, to_host in ((ref, np.asarray, np.asarray), (twin.k, twin.to_dev, twin.to_host)):
            p, m, v = to_dev(p0.copy()), to_dev(m0.copy()), to_dev(v0.copy())
            kw = {} if guard is None else dict(guard=to_dev(np.array([guard])))
            if kind == "adam":
                module.adam_update(p, to_dev(g), m, v, 1e-2, 0.9, 0.999, 1e-8, 0.01, False, 3, **kw)
            else:
                module.sgd_update(p, to_dev(g), m, 0.05, 0.9, True, 0.01, **kw)
            results[name, module is ref] = [to_host(a) for a in (p, m, v)]
    for is_ref in (True, False):
        for bad in ("nan", "inf", "-inf"):
            for a, a0 in zip(results[bad, is_ref], (p0, m0, v0)):
                np.testing.assert_array_equal(a, a0)  # untouched, bit for bit
        for a, b in zip(results["finite", is_ref], results["none", is_ref]):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(results["none", False][0], p0)  # the unguarded update did update
    with pytest.raises(ValueError, match="guard must be a float64 array"):
        twin.k.sgd_update(twin.to_dev(p0.copy()), twin.to_dev(g), twin.to_dev(m0.copy()), 0.1, 0.0, False, 0.0,
                          guard=twin.to_dev(np.zeros(1, np.float32)))


# (identity, relu) give the same dz terms in every twin whatever the precision of the
# activation's derivative (x 1 or x 0); float64 adds leaky_relu and sigmoid (one rounding each,
# no multiply-add a GPU compiler could fuse).
EXACT_DB_ACTS = {np.float32: ("identity", "relu"), np.float64: ("identity", "relu", "leaky_relu", "sigmoid")}


@pytest.mark.parametrize("B", [1, 65, 150])  # chunks of 64 rows: (1), (64, 1), (64, 64, 22)
def test_bias_gradient_over_many_row_chunks(twin, B):
    """Batches of several 64-row chunks (the Hypothesis cases above stay within one): db against
    the reference, and for the CUDA twin bit for bit against the CPU twin, whose chunks and
    summation order it shares."""
    import tinydae.kernels.cpu as kcpu

    rng = np.random.default_rng(B)
    for dtype in (np.float32, np.float64):
        for act in ACTS:
            y = np.empty((B, 33), dtype)  # two column tiles of 32, the second of one column
            ref.bias_act_forward(y, rng.normal(0, 2, (B, 33)).astype(dtype), np.zeros(33, dtype), act)
            dy = rng.normal(0, 1, (B, 33)).astype(dtype)
            db0 = rng.normal(0, 1, 33).astype(dtype)
            dz_ref, db_ref = np.empty_like(dy), db0.copy()
            ref.bias_act_backward(dz_ref, db_ref, dy, y, act)
            dz, db = twin.empty_like(dy), twin.to_dev(db0.copy())
            twin.k.bias_act_backward(dz, db, twin.to_dev(dy), twin.to_dev(y), act)
            t = tol(dtype)
            np.testing.assert_allclose(twin.to_host(dz), dz_ref, **t)
            np.testing.assert_allclose(twin.to_host(db), db_ref, rtol=t["rtol"] * 10, atol=t["atol"] * 10 * B)
            if twin.name == "cuda" and act in EXACT_DB_ACTS[dtype]:
                dz_cpu, db_cpu = np.empty_like(dy), db0.copy()
                kcpu.bias_act_backward(dz_cpu, db_cpu, dy, y, act)
                np.testing.assert_array_equal(twin.to_host(db), db_cpu)


def test_contiguity_and_shape_are_checked(twin):
    x = np.random.default_rng(0).random((4, 6)).astype(np.float32)
    strided = twin.to_dev(x)[:, ::2]
    with pytest.raises(ValueError, match="contiguous"):
        twin.k.corrupt(twin.empty_like(x)[:, ::2], strided, 2, 0.5, 0, 0, 0)
    with pytest.raises(ValueError, match="shape"):
        twin.k.sigmoid_bce_forward_backward(twin.empty_like(x), twin.to_dev(x), twin.to_dev(x[:3]), 1.0)
    with pytest.raises(ValueError, match="bias"):
        twin.k.bias_act_forward(twin.empty_like(x), twin.to_dev(x), twin.to_dev(np.ones(5, np.float32)), "relu")


@pytest.mark.cudasim
def test_cuda_launch_configuration_does_not_change_results():
    t = Twin("cuda")
    rng = np.random.default_rng(3)
    x = rng.uniform(0.1, 0.9, (6, 45)).astype(np.float32)
    z = rng.normal(0, 3, (6, 45)).astype(np.float32)
    b = rng.normal(size=45).astype(np.float32)
    big_y = rng.uniform(0.1, 3, (130, 20)).astype(np.float32)  # three row chunks, the last of 2 rows
    big_dy = rng.normal(size=(130, 20)).astype(np.float32)
    saved, saved_cols = dict(t.k.LAUNCH), t.k.BIAS_COLS
    results = []
    try:
        # bias_cols: the columns per block of the bias gradient (its row chunks are fixed)
        for threads, max_blocks, bias_cols in [(256, 4096, 32), (32, 2, 8), (64, 1, 16), (96, 3, 24)]:
            t.k.LAUNCH.update(threads=threads, max_blocks=max_blocks)
            t.k.BIAS_COLS = bias_cols
            out = []
            for mode in (1, 2, 3):
                c = t.empty_like(x)
                t.k.corrupt(c, t.to_dev(x), mode, 0.3, 11, 5, 0, 7)
                out.append(t.to_host(c))
            y = t.empty_like(z)
            t.k.bias_act_forward(y, t.to_dev(z), t.to_dev(b), "softplus")
            dz, db = t.empty_like(z), t.to_dev(np.zeros(45, np.float32))
            t.k.bias_act_backward(dz, db, t.to_dev(x), y, "softplus")
            big_dz, big_db = t.empty_like(big_dy), t.to_dev(np.ones(20, np.float32))
            t.k.bias_act_backward(big_dz, big_db, t.to_dev(big_dy), t.to_dev(big_y), "softplus")
            d = t.empty_like(z)
            total = t.k.sigmoid_bce_forward_backward(d, t.to_dev(z), t.to_dev(x), 0.5)
            on_device = t.to_dev(np.zeros(1))
            t.k.sigmoid_mse_forward_backward(t.empty_like(z), t.to_dev(z), t.to_dev(x), 0.5, total=on_device)
            p, m, v = t.to_dev(z.ravel().copy()), t.to_dev(np.zeros(270, np.float32)), t.to_dev(np.zeros(270, np.float32))
            t.k.adam_update(p, t.to_dev(x.ravel().copy()), m, v, 1e-2, 0.9, 0.999, 1e-8, 0.0, False, 1,
                            guard=on_device)
            ys, change = t.to_dev(z.copy()), t.to_dev(np.zeros(6))
            t.k.bias_sigmoid_change(ys, change, t.to_dev(b), t.to_dev(x))
            out += [t.to_host(y), t.to_host(dz), t.to_host(db), t.to_host(big_dz), t.to_host(big_db), t.to_host(d),
                    np.array([total]), t.to_host(on_device), t.to_host(p), t.to_host(ys), t.to_host(change)]
            results.append(out)
    finally:
        t.k.LAUNCH.update(saved)
        t.k.BIAS_COLS = saved_cols
    for other in results[1:]:
        for a, b_ in zip(results[0], other):
            np.testing.assert_array_equal(a, b_)  # bit-identical for every configuration


@pytest.mark.cudasim
def test_cuda_reductions_reuse_their_workspaces_and_reset_their_tickets():
    """The loss and bias-gradient reductions allocate their partials and tickets once per shape
    and leave every ticket at 0 (reset by the last block, no memset per launch), so a repeated
    launch gives the same result from the same arrays."""
    t = Twin("cuda")
    rng = np.random.default_rng(8)
    z, x = rng.normal(0, 3, (6, 40)).astype(np.float32), rng.random((6, 40)).astype(np.float32)
    y, dy = rng.random((70, 40)).astype(np.float32), rng.normal(size=(70, 40)).astype(np.float32)  # 2 chunks

    def reductions():
        ids = {key: [id(a) for a in arrays] for key, arrays in t.k._WORKSPACES.items() if key[0][0] in ("loss", "bias")}
        tickets = [arrays[1] for key, arrays in t.k._WORKSPACES.items() if key[0][0] in ("loss", "bias")]
        return ids, tickets

    runs = []
    for _ in range(2):
        total, d = t.to_dev(np.zeros(1)), t.empty_like(z)
        t.k.sigmoid_bce_forward_backward(d, t.to_dev(z), t.to_dev(x), 0.1, total=total)
        dz, db = t.empty_like(dy), t.to_dev(np.zeros(40, np.float32))
        t.k.bias_act_backward(dz, db, t.to_dev(dy), t.to_dev(y), "tanh")
        runs.append([t.to_host(total), t.to_host(d), t.to_host(dz), t.to_host(db)])
        ids, tickets = reductions()
        assert {key[0][0] for key in ids} == {"loss", "bias"}
        assert all((t.to_host(a) == 0).all() for a in tickets)
        if len(runs) == 2:
            assert ids == first_ids  # nothing allocated the second time
        first_ids = ids
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_cpu_parallel_paths_match_reference():
    """Large enough for every CPU kernel to take its parallel path (the Hypothesis cases above
    are small and run the serial copies)."""
    import tinydae.kernels.cpu as K

    assert K.PARALLEL_MIN_CHEAP <= 300 * 1000
    rng = np.random.default_rng(7)
    x = rng.uniform(0.05, 0.95, (300, 1000)).astype(np.float32)
    z = rng.normal(0, 3, (300, 1000)).astype(np.float32)
    b = rng.normal(size=1000).astype(np.float32)
    for mode in (1, 2, 3):
        a, c = np.empty_like(x), np.empty_like(x)
        ref.corrupt(a, x, mode, 0.3, 5, 9, 0, 3)
        K.corrupt(c, x, mode, 0.3, 5, 9, 0, 3)
        np.testing.assert_allclose(c, a, rtol=1e-6, atol=2e-6) if mode == 1 else np.testing.assert_array_equal(c, a)
    y_ref, y = np.empty_like(z), np.empty_like(z)
    ref.bias_act_forward(y_ref, z, b, "softplus")
    K.bias_act_forward(y, z, b, "softplus")
    np.testing.assert_allclose(y, y_ref, **tol(np.float32))
    dz_ref, dz, db_ref, db = np.empty_like(z), np.empty_like(z), np.zeros(1000, np.float32), np.zeros(1000, np.float32)
    ref.bias_act_backward(dz_ref, db_ref, x, y_ref, "softplus")
    K.bias_act_backward(dz, db, x, y_ref, "softplus")
    np.testing.assert_allclose(dz, dz_ref, **tol(np.float32))
    np.testing.assert_allclose(db, db_ref, rtol=1e-5, atol=1e-4)
    y_ref, y = np.empty_like(z), np.empty_like(z)
    ref.bias_act_forward(y_ref, z, b, "sigmoid")
    K.bias_act_forward(y, z, b, "sigmoid")
    np.testing.assert_array_equal(y, y_ref)  # the same float32 operations and NumPy exp
    y_ref, y, change_ref, change = z.copy(), z.copy(), np.empty(300), np.empty(300)
    ref.bias_sigmoid_change(y_ref, change_ref, b, x)
    K.bias_sigmoid_change(y, change, b, x)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_allclose(change, change_ref, rtol=1e-12)
    d_ref, d = np.empty_like(z), np.empty_like(z)
    assert K.sigmoid_bce_forward_backward(d, z, x, 0.5) == pytest.approx(
        ref.sigmoid_bce_forward_backward(d_ref, z, x, 0.5), rel=1e-6)
    np.testing.assert_allclose(d, d_ref, **tol(np.float32))
    p, g = z.ravel().copy(), x.ravel().copy()
    p_ref, m_ref, v_ref = p.copy(), np.zeros_like(p), np.zeros_like(p)
    m, v = np.zeros_like(p), np.zeros_like(p)
    ref.adam_update(p_ref, g, m_ref, v_ref, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, 1)
    K.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, 1)
    np.testing.assert_array_equal(p, p_ref)
    words_ref, words = np.empty(1 << 15, np.uint32), np.empty(1 << 15, np.uint32)
    ref.philox_uint32(words_ref, 3, 4, 5, 6)
    K.philox_uint32(words, 3, 4, 5, 6)
    np.testing.assert_array_equal(words, words_ref)


@pytest.mark.parametrize("path", [0, 1])  # the serial and the parallel copy
def test_cpu_rng_kernels_over_many_chunks_and_unaligned_offsets(path):
    """The Philox word and masking kernels work chunk by chunk (CHUNK elements per task, each
    chunk's loop over views from 0): several chunks, a partial last one and stream offsets that
    are not multiples of 4 must give the reference's words and masks exactly, on both copies."""
    import tinydae.kernels.cpu as K
    from tinydae.kernels.philox import seed_key

    k0, k1 = (np.uint32(v) for v in seed_key(11))
    n = 2 * K.CHUNK + 777
    for offset in (0, 3, 4 * K.CHUNK + 1, 10**9 + 2):
        want = np.empty(n, np.uint32)
        ref.philox_uint32(want, 11, 5, 2, offset)
        got = np.zeros(n, np.uint32)
        K._philox_uint32[path](got, k0, k1, np.int64(5), np.int64(2), np.int64(offset))
        np.testing.assert_array_equal(got, want)
        x = np.random.default_rng(offset % 97).uniform(0.05, 0.95, (3, n // 3)).astype(np.float32)
        for mode in (ref.CORRUPTION_MASKING, ref.CORRUPTION_SALT_PEPPER, ref.CORRUPTION_NONE):
            want_x = np.empty_like(x)
            ref.corrupt(want_x, x, mode, 0.3, 11, 5, 2, offset)
            got_x = np.full_like(x, np.nan)
            K._corrupt[path](got_x, x, mode, np.float32(0.3), np.float32(0), np.float32(1), k0, k1,
                             np.int64(5), np.int64(2), np.int64(offset))
            np.testing.assert_array_equal(got_x, want_x)


def test_op_modules_hold_each_ops_twins_and_run_without_numba():
    """kernels/ is organised by op: each op module holds the reference and the CPU and CUDA bodies,
    imports NumPy alone, and its CPU bodies run as plain Python (prange = range) with the results
    of the reference; a CUDA body refuses to run uncompiled, clearly."""
    import subprocess
    import sys

    code = """
import sys
sys.modules["numba"] = None  # any numba import fails
import numpy as np
from tinydae.kernels import bias_act, conv, loss, noise, optim
rng = np.random.default_rng(3)
x = rng.normal(size=(2, 5, 4, 3))
want, got = np.zeros((2 * 3 * 2, 27)), np.zeros((2 * 3 * 2, 27))
conv.im2col(want, x, 3, 3, 2, 1)
conv.im2col_cpu(got, x, 3, 3, 2, 1, 3, 2)
assert np.array_equal(want, got) and np.count_nonzero(want)
dx_want, dx_got = np.zeros_like(x), np.zeros_like(x)
conv.col2im(dx_want, want, 3, 3, 2, 1)
conv.col2im_cpu(dx_got, want, 3, 3, 2, 1, 3, 2)
assert np.array_equal(dx_want, dx_got) and np.count_nonzero(dx_want)
try:
    conv.im2col_cuda(got, x, 3, 3, 2, 1, 3, 2)
except RuntimeError as e:
    assert "only as compiled by kernels/cuda.py" in str(e), e
else:
    raise AssertionError("a CUDA body ran as plain Python")
for m in (bias_act, conv, loss, noise, optim):
    names = dir(m)
    assert any(n.endswith("_cpu") for n in names) and any(n.endswith("_cuda") for n in names), m
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.parametrize("backend", ["cpu", "cuda"])
def test_every_helper_a_body_calls_is_compiled_for_its_backend(backend):
    """A body that calls a helper the backend did not compile and register would run the plain
    Python function: numba's CPU compiler refuses it, but the CUDA simulator runs it silently
    and only the sm_90 build fails.  So: every function an op module's *_cpu / *_cuda body calls
    by a global name is one the backend registered (common.rebind's names)."""
    import types

    from tinydae.kernels import bias_act, conv, loss, noise, optim

    k = Twin(backend).k
    missing = []
    for module in (bias_act, conv, loss, noise, optim):
        for name, body in vars(module).items():
            if not (isinstance(body, types.FunctionType) and name.endswith(f"_{backend}")):
                continue
            for used in body.__code__.co_names:
                value = vars(module).get(used)
                if isinstance(value, types.FunctionType) and used not in k._NAMES:
                    missing.append(f"{module.__name__}.{name} calls {used}")
    assert not missing, missing
    assert "philox" in k._NAMES and ("prange" in k._NAMES if backend == "cpu" else "cuda" in k._NAMES)
