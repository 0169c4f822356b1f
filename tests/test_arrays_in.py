"""Framework arrays in (issue 13, item 3): every public function that takes a batch accepts any
array speaking DLPack (``__dlpack__``) or the array interface, and gives what it gives for the
same values as a NumPy array.  On the CPU: NumPy arrays in odd layouts, minimal stand-ins that
expose one protocol only, and PyTorch tensors when torch is installed.  The GPU side (CuPy and
torch CUDA tensors, no copy) is in tests/test_gpu.py."""
import numpy as np
import pytest

import tinydae as td
from tinydae import metrics
from tinydae.science import features
from tinydae.backend import as_host_array, get_backend
from tinydae.classifier import Classifier, train_classifier
from tinydae.sampling import chain, improve, start_points
from tinydae.train import evaluate_reconstruction

N, D = 20, 12


class DLPackOnly:
    """An array that speaks DLPack and nothing else (no shape, no __array__, no len)."""

    def __init__(self, a, device=None):
        self._a = a
        self._device = device  # pretend to live elsewhere, e.g. (2, 0): CUDA device 0

    def __dlpack__(self, **kwargs):
        return self._a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._device or self._a.__dlpack_device__()


class InterfaceOnly:
    """An array that exposes only the NumPy array interface (a dict pointing at its memory)."""

    def __init__(self, a):
        self._a = a  # keeps the memory alive
        self.__array_interface__ = a.__array_interface__


def readonly(a):
    """A read-only view of a (NumPy's DLPack export of those needs NumPy >= 2.1)."""
    a = a.view()
    a.flags.writeable = False
    return a


def strided(a):
    """The same values as a non-contiguous view (every other column of a wider array)."""
    return np.repeat(a, 2, axis=1)[:, ::2]


def reversed_rows(a):
    """The same values as a view with a negative row stride."""
    return np.ascontiguousarray(a[::-1])[::-1]


def torch_tensor(a):
    torch = pytest.importorskip("torch")
    return torch.from_numpy(a.copy())


FORMS = {
    "readonly": readonly,
    "strided": strided,
    "negative-stride": reversed_rows,
    "float64": lambda a: a.astype(np.float64),
    "dlpack-only": DLPackOnly,
    "interface-only": InterfaceOnly,
    "torch": torch_tensor,
    "list": lambda a: a.tolist(),
}


# the forms that keep integer labels integers, one-dimensional
LABEL_FORMS = ("readonly", "negative-stride", "dlpack-only", "interface-only", "torch", "list")


@pytest.fixture(params=list(FORMS))
def form_name(request):
    return request.param


@pytest.fixture
def form(form_name):
    return FORMS[form_name]


@pytest.fixture
def label_form(form_name):
    return FORMS[form_name] if form_name in LABEL_FORMS else (lambda a: a)


@pytest.fixture(scope="module")
def x():
    """(N, D) float32 in (0.05, 0.95): never all zeros, exact in float64 and float32 alike."""
    return np.random.default_rng(13).uniform(0.05, 0.95, (N, D)).astype(np.float32)


@pytest.fixture(scope="module")
def labels():
    return np.arange(N) % 3


def dae():
    return td.DAE(D, hidden=16, seed=3)


def test_dae_forward_passes(x, form):
    m = dae()
    for method in ("reconstruct", "encode", "logits"):
        want = getattr(m, method)(x)
        got = getattr(m, method)(form(x))
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want, err_msg=method)


def test_dae_loss_and_grad(x, form):
    m = dae()
    x_in = np.clip(x + 0.1, 0, 1)
    want = m.loss_and_grad(x_in, x), m.grads.copy()
    got = m.loss_and_grad(form(x_in), form(x)), m.grads.copy()
    assert got[0] == want[0]
    np.testing.assert_array_equal(got[1], want[1])


def test_chain_and_improve(x, form):
    m = dae()
    kw = dict(corruption="gaussian:0.3", seed=5, batch_size=8)
    want = chain(m, x, 3, **kw)
    got = chain(m, form(x), 3, **kw)
    np.testing.assert_array_equal(got.samples, want.samples)
    np.testing.assert_array_equal(got.trajectory, want.trajectory)
    np.testing.assert_array_equal(improve(m, form(x), 2, **kw).samples, improve(m, x, 2, **kw).samples)


def test_sampler_starts_fitted_to_data(x, form):
    for kind in ("pca", "pixels"):
        np.testing.assert_array_equal(start_points(kind, 4, D, seed=2, data=form(x)),
                                      start_points(kind, 4, D, seed=2, data=x))


def test_fit_and_evaluate_reconstruction(x, form):
    def run(train, val):
        m = dae()
        state = td.fit(m, train, val, epochs=1, batch_size=8, seed=4, handle_sigint=False)
        return m.params.copy(), state.history[-1]["val_bce_denoise"]

    want = run(x, x[:6])
    got = run(form(x), form(x[:6]))
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1] == want[1]
    m, c = dae(), td.Corruption.parse("masking:0.25")
    assert evaluate_reconstruction(m, form(x), c, 1, batch_size=8) == evaluate_reconstruction(m, x, c, 1, batch_size=8)


def test_metrics(x, form):
    s = np.clip(x[::-1] + 0.02, 0, 1)  # another set of rows, not a copy of x
    assert np.array_equal(metrics.parzen_log_likelihood(form(s), form(x), 0.3),
                          metrics.parzen_log_likelihood(s, x, 0.3))
    assert metrics.precision_recall(form(x), form(s)) == metrics.precision_recall(x, s)
    np.testing.assert_array_equal(metrics.knn_radii(form(x)), metrics.knn_radii(x))
    np.testing.assert_array_equal(metrics.sq_distances(form(x), form(s)), metrics.sq_distances(x, s))
    g = metrics.make_gmm(D)
    np.testing.assert_array_equal(g.log_prob(form(x)), g.log_prob(x))


def test_features(x, form):
    s = np.clip(x[::-1] + 0.02, 0, 1)
    p = (x / x.sum(1, keepdims=True)).astype(np.float32)  # rows summing to 1: class probabilities
    for f, args in ((features.fid, (x, s)), (features.kid, (x, s)), (features.prdc, (x, s)),
                    (features.one_nn_accuracy, (x, s)), (features.novelty, (s, x[:10], x[10:])),
                    (features.inception_score, (p,)), (features.class_entropy, (p,)),
                    (features.gaussian_stats, (x,)), (features.nearest_distances, (s, x))):
        want, got = f(*args), f(*(form(a) for a in args))
        np.testing.assert_equal(got, want, err_msg=f.__name__)
    np.testing.assert_array_equal(features.box_blur(form(x), (3, 4)), features.box_blur(x, (3, 4)))


def test_classifier(x, labels, form, label_form):
    c = Classifier(D, hidden=(8,), classes=3, seed=1)
    for method in ("logits", "features", "probs", "predict"):
        np.testing.assert_array_equal(getattr(c, method)(form(x)), getattr(c, method)(x), err_msg=method)
    assert c.accuracy(form(x), label_form(labels)) == c.accuracy(x, labels)
    assert c.loss_and_grad(form(x), label_form(labels)) == c.loss_and_grad(x, labels)
    kw = dict(hidden=(8,), epochs=1, batch_size=8, seed=2)
    np.testing.assert_array_equal(train_classifier(form(x), label_form(labels), **kw).params,
                                  train_classifier(x, labels, **kw).params)
    report = features.check_feature_map(c, form(x), label_form(labels))
    assert report == features.check_feature_map(c, x, labels)


def test_feature_report(x, labels, form, label_form):
    c = Classifier(D, hidden=(8,), classes=3, seed=1)
    s = np.clip(x[::-1] + 0.02, 0, 1)
    want = features.feature_report(s, x, x, c, train=x, holdout_labels=labels)
    got = features.feature_report(form(s), form(x), form(x), c, train=form(x), holdout_labels=label_form(labels))
    assert got == want


# -- no copy where none is needed ------------------------------------------------------------


def test_float32_arrays_go_in_without_a_copy(x):
    backend = get_backend("cpu")
    base = x.copy()
    for a in (base, readonly(base), DLPackOnly(base), InterfaceOnly(base)):
        out = backend.to_device(a, np.float32)
        assert np.shares_memory(out, base), type(a).__name__
    # the model computes on the caller's memory; a read-only batch works (nothing writes to it)
    ro = readonly(base)
    assert np.shares_memory(dae().as_input(ro), ro)
    # and copies are made exactly where the dtype or the layout differ
    assert not np.shares_memory(backend.to_device(base.astype(np.float64), np.float32), base)
    s = strided(base)
    out = backend.to_device(s, np.float32)
    assert out.flags.c_contiguous and not np.shares_memory(out, s)


def test_torch_tensors_go_in_without_a_copy(x):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(x.copy())
    out = get_backend("cpu").to_device(t, np.float32)
    assert np.shares_memory(out, t.numpy())
    assert np.shares_memory(dae().as_input(t), t.numpy())
    assert np.shares_memory(as_host_array(t), t.numpy())
    # bool and int tensors are numbers too: converted as NumPy bool and int arrays are
    m = dae()
    bits = x > 0.5
    np.testing.assert_array_equal(m.reconstruct(torch.from_numpy(bits)), m.reconstruct(bits))
    np.testing.assert_array_equal(m.reconstruct(torch.from_numpy(bits.astype(np.int64))),
                                  m.reconstruct(bits.astype(np.int64)))


# -- mistakes ---------------------------------------------------------------------------------


def test_a_tensor_that_requires_grad_says_detach(x):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(x.copy()).requires_grad_()
    for call in (lambda: dae().reconstruct(t), lambda: chain(dae(), t, 1, corruption="none"),
                 lambda: td.fit(dae(), t, handle_sigint=False), lambda: metrics.knn_radii(t),
                 lambda: Classifier(D, hidden=(8,), classes=3).logits(t)):
        with pytest.raises(td.DataError, match="detach"):
            call()
    np.testing.assert_array_equal(dae().reconstruct(t.detach()), dae().reconstruct(x))  # the fix works


def test_a_tensor_with_the_negative_bit_arrives_with_its_sign(x):
    """Review finding: DLPack exports a tensor's memory without its lazy negation bit, so
    z.conj().imag came in with every sign flipped; it is resolved before the export."""
    torch = pytest.importorskip("torch")
    z = torch.complex(torch.zeros(x.shape), -torch.from_numpy(x.copy()))
    t = z.conj().imag  # values +x, stored as -x with the negative bit set
    assert t.is_neg()
    np.testing.assert_array_equal(td.backend.as_host_array(t), x)
    np.testing.assert_array_equal(dae().reconstruct(t), dae().reconstruct(x))


def test_a_dtype_numpy_lacks_says_convert(x):
    """bfloat16 has no NumPy dtype, so DLPack refuses it: the error says how to go on."""
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(x.copy()).to(torch.bfloat16)
    with pytest.raises(td.DataError, match=r"DLPack.*tensor\.float\(\)"):
        dae().reconstruct(t)
    assert dae().reconstruct(t.float()).shape == x.shape  # the fix works


@pytest.mark.parametrize("bad, message", [
    ("abc", "real numbers"),                               # a str, not a 0-d string array
    ([[0.5, 0.5], [0.5]], "not an array of numbers"),      # ragged
    ([[0.5, None] * (D // 2)], "real numbers"),            # objects
    (np.full((2, D), 0.5, np.complex64), "real numbers"),  # complex: the imaginary part would be lost
    (np.float32(0.5), r"shape \(B, 12\), got \(\)"),      # 0-d
    (np.full(D, 0.5, np.float32), r"shape \(B, 12\), got \(12,\)"),  # 1-d: one row without its batch axis
    (np.full((2, D + 1), 0.5, np.float32), r"shape \(B, 12\), got \(2, 13\)"),
    (DLPackOnly(np.full((2, D), 0.5, np.float32)), None),  # fine: the control
])
def test_bad_batches_give_data_errors(bad, message):
    m = dae()
    if message is None:
        assert m.reconstruct(bad).shape == (2, D)
        return
    with pytest.raises(td.DataError, match=message):
        m.reconstruct(bad)


def test_bad_rows_give_data_errors_in_host_functions(x):
    with pytest.raises(td.DataError, match="real numbers"):
        metrics.knn_radii("abc")
    with pytest.raises(td.DataError, match="training data must be a non-empty"):
        td.fit(dae(), x[0], handle_sigint=False)
    with pytest.raises(td.DataError, match="chain starting points must have shape"):
        chain(dae(), DLPackOnly(x[:, :5].copy()), 1, corruption="none")


def test_gpu_arrays_are_refused_on_the_cpu_with_a_way_out(x):
    on_gpu = DLPackOnly(x, device=(2, 0))  # what a CUDA tensor reports
    with pytest.raises(td.DataError, match=r"device memory.*\.cpu\(\).*--backend cuda"):
        dae().reconstruct(on_gpu)
    with pytest.raises(td.DataError, match=r"device memory.*\.cpu\(\)") as e:
        metrics.knn_radii(on_gpu)
    assert "--backend" not in str(e.value)  # host-only functions have no cuda backend to offer


def test_nan_and_inf_checks_still_fire(x):
    bad = x.copy()
    bad[3, 4] = np.nan
    for call, message in ((lambda a: td.fit(dae(), a, handle_sigint=False), "NaN or infinite"),
                          (lambda a: chain(dae(), a, 1, corruption="none"), "NaN or infinite"),
                          (lambda a: metrics.knn_radii(a), "NaN or infinite"),
                          (lambda a: Classifier(D, hidden=(8,), classes=3).logits(a), "NaN or infinite")):
        for a in (bad, DLPackOnly(bad), InterfaceOnly(bad)):
            with pytest.raises(td.DataError, match=message):
                call(a)
