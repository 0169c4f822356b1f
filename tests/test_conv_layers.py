"""Conv2d and ConvTranspose2d (NHWC, im2col + GEMM + the fused bias+activation): the forward
against a direct convolution loop, every gradient against central differences in float64, the
transposed convolution as the exact adjoint of the convolution (so tying works), and the fused
CPU kernels against the NumPy reference; strides 1 and 2, padding 0 and 1, odd sizes, batch 1."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradcheck_helpers import numeric_grad, rel_error
from tinydae.backend import get_backend
from tinydae.kernels.common import conv_output_size
from tinydae.layers import ACTIVATIONS, Conv2d, ConvTranspose2d, Sequential, standalone

SMOOTH = ("identity", "tanh", "sigmoid", "softplus")


def direct_conv(x, W, b, kh, kw, stride, pad):
    """The definition, loop by loop: z[b, ho, wo, f] = sum_{i,j,c} x[b, ho s - p + i, wo s - p + j, c] W[(i,j,c), f] + b[f]."""
    B, H, Wd, C = x.shape
    F = W.shape[1]
    Ho, Wo = conv_output_size(H, kh, stride, pad), conv_output_size(Wd, kw, stride, pad)
    w4 = W.reshape(kh, kw, C, F)
    z = np.zeros((B, Ho, Wo, F)) + b
    for ho, wo, i, j in np.ndindex(Ho, Wo, kh, kw):
        h, w = ho * stride - pad + i, wo * stride - pad + j
        if 0 <= h < H and 0 <= w < Wd:
            z[:, ho, wo, :] += x[:, h, w, :] @ w4[i, j]
    return z


def conv(backend, act, kh, kw, stride, pad, C, F, seed, dtype=np.float64, size=(8, 8)):
    """A Conv2d with buffers of its own, W and b drawn N(0, 0.5^2); size: the images' (H, W)."""
    rng = np.random.default_rng(seed)
    layer = standalone(Conv2d(F, (kh, kw), stride, pad, act), (*size, C), backend, dtype)
    layer.W[...] = rng.normal(0, 0.5, (kh * kw * C, F))
    layer.b[...] = rng.normal(0, 0.5, F)
    return layer


def conv_and_transpose(backend, act, kh, kw, stride, pad, C, F, size, seed):
    """A Conv2d on (size, C) images and the ConvTranspose2d tied to it (one W), in one stack;
    W, and the convolution's bias, drawn N(0, 0.5^2)."""
    net = Sequential([("c", Conv2d(F, (kh, kw), stride, pad, act)),
                      ("t", ConvTranspose2d(C, (kh, kw), stride, pad, size, act, tie="c"))],
                     (*size, C), backend, np.float64)
    rng = np.random.default_rng(seed)
    net.named_params["c.W"][...] = rng.normal(0, 0.5, net.named_params["c.W"].shape)
    net.named_params["c.b"][...] = rng.normal(0, 0.5, F)
    return net.layers


def check_gradients(layer, x, y, cache, rng):
    """dx, dW, db of loss = sum(dy * layer(x)) against central differences (float64)."""
    dy = rng.normal(size=y.shape)
    dx = layer.backward(dy, cache)

    def loss():
        return float(np.sum(dy * layer.forward(x)[0]))

    for analytic, var in ((dx, x), (layer.dW, layer.W), (layer.db, layer.b)):
        assert rel_error(analytic, numeric_grad(loss, var), floor=1e-4) < 1e-6


@st.composite
def shapes(draw):
    kh = draw(st.integers(1, 3))
    kw = draw(st.integers(1, 3))
    pad = draw(st.integers(0, min(kh, kw) - 1))
    stride = draw(st.integers(1, 2))
    H, W = draw(st.integers(max(1, kh - 2 * pad), 6)), draw(st.integers(max(1, kw - 2 * pad), 6))
    return dict(B=draw(st.integers(1, 2)), H=H, W=W, C=draw(st.integers(1, 3)), F=draw(st.integers(1, 3)),
                kh=kh, kw=kw, stride=stride, pad=pad, act=draw(st.sampled_from(SMOOTH)),
                seed=draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=30, deadline=None)
@given(shapes())
def test_conv2d_forward_and_gradients(s):
    backend = get_backend("cpu", kernels="reference")
    layer = conv(backend, s["act"], s["kh"], s["kw"], s["stride"], s["pad"], s["C"], s["F"], s["seed"],
                 size=(s["H"], s["W"]))
    rng = np.random.default_rng(s["seed"] + 1)
    x = rng.normal(size=(s["B"], s["H"], s["W"], s["C"]))
    y, cache = layer.forward(x)
    want = ACTIVATIONS[s["act"]][0](direct_conv(x, layer.W, layer.b, s["kh"], s["kw"], s["stride"], s["pad"]))
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    check_gradients(layer, x, y, cache, rng)


@settings(max_examples=30, deadline=None)
@given(shapes())
def test_conv_transpose_is_the_adjoint_and_its_gradients_check(s):
    backend = get_backend("cpu", kernels="reference")
    c, t = conv_and_transpose(backend, "identity", s["kh"], s["kw"], s["stride"], s["pad"], s["C"], s["F"],
                              (s["H"], s["W"]), s["seed"])
    c.b[...] = 0
    rng = np.random.default_rng(s["seed"] + 2)
    x = rng.normal(size=(s["B"], s["H"], s["W"], s["C"]))
    Ho, Wo, F = c.output_shape(x.shape[1:])
    u = rng.normal(size=(s["B"], Ho, Wo, F))
    # <conv(x), u> == <x, conv_transpose(u)>: the same W, the exact adjoint
    lhs, rhs = np.sum(c.forward(x)[0] * u), np.sum(x * t.forward(u)[0])
    assert abs(lhs - rhs) <= 1e-10 * (1 + abs(lhs))
    # its own gradients, with an activation and a bias
    t.activation = s["act"]
    t.b[...] = rng.normal(size=s["C"])
    y, cache = t.forward(u)
    check_gradients(t, u, y, cache, rng)


@pytest.mark.parametrize("stride,pad,size", [(1, 0, 7), (1, 1, 6), (2, 1, 7), (2, 0, 8)])
def test_fused_cpu_kernels_equal_the_reference_in_float32(stride, pad, size):
    outs = []
    for kernels in ("reference", "fused"):
        backend = get_backend("cpu", kernels=kernels)
        layer = conv(backend, "relu", 3, 3, stride, pad, 2, 4, seed=5, dtype=np.float32, size=(size, size))
        x = np.random.default_rng(6).uniform(-1, 1, (1, size, size, 2)).astype(np.float32)
        y, cache = layer.forward(x)
        dx = layer.backward(np.ones_like(y), cache)
        outs.append((y, dx, layer.dW.copy(), layer.db.copy()))
    for got, want in zip(outs[1], outs[0]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.abs(outs[0][1]).max() > 0  # not all zeros


def test_a_transposed_convolution_refuses_inputs_of_the_wrong_size():
    backend = get_backend("cpu", kernels="reference")
    t = standalone(ConvTranspose2d(1, 4, 2, 1, (28, 28)), (14, 14, 3), backend)
    assert t.output_shape((14, 14, 3)) == (28, 28, 1)
    with pytest.raises(ValueError, match="ConvTranspose2d to 28x28 takes 14x14x3 inputs, got 13x13x3"):
        t.forward(np.ones((1, 13, 13, 3)))


def against_torch(torch, layer, x, act, torch_op):
    """layer's forward and gradients (x, W, b) against torch_op(x_nchw, w_(F, C, kh, kw), b) under
    the same activation and upstream gradient, float64."""
    k, C, F = layer.kh, layer.channels, layer.W.shape[1]
    y, cache = layer.forward(x)
    dy = np.random.default_rng(13).normal(size=y.shape)
    dx = layer.backward(dy, cache)
    torch_act = {"tanh": torch.tanh, "softplus": torch.nn.functional.softplus, "sigmoid": torch.sigmoid,
                 "identity": lambda z: z}[act]
    nhwc = (0, 2, 3, 1)
    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    tw = torch.tensor(layer.W.reshape(k, k, C, F).transpose(3, 2, 0, 1).copy(), requires_grad=True)
    tb = torch.tensor(layer.b.copy(), requires_grad=True)
    ty = torch_act(torch_op(tx, tw, tb))
    ty.backward(torch.tensor(dy.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(y, ty.detach().numpy().transpose(nhwc), rtol=1e-12, atol=1e-12)
    for ours, theirs in ((dx, tx.grad.numpy().transpose(nhwc)), (layer.db, tb.grad.numpy()),
                         (layer.dW, tw.grad.numpy().transpose(2, 3, 1, 0).reshape(k * k * C, F))):
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    return y


@pytest.mark.parametrize("stride,pad,size,act", [(1, 0, 7, "tanh"), (1, 1, 6, "softplus"), (2, 1, 7, "sigmoid"),
                                                 (2, 1, 8, "identity")])
def test_conv_layers_agree_with_pytorch_autograd(stride, pad, size, act):
    """The same convolution and transposed convolution in PyTorch (NCHW: the weights permuted),
    forward and every gradient, float64; skipped where torch is not installed."""
    torch = pytest.importorskip("torch", reason="torch is not installed: the PyTorch cross-check is skipped")
    F_ = torch.nn.functional
    backend = get_backend("cpu", kernels="reference")
    k, C, F = 3, 2, 4
    layer, t = conv_and_transpose(backend, act, k, k, stride, pad, C, F, (size, size), seed=11)
    x = np.random.default_rng(12).normal(size=(2, size, size, C))
    y = against_torch(torch, layer, x, act, lambda tx, tw, tb: F_.conv2d(tx, tw, tb, stride=stride, padding=pad))
    # the transposed convolution with the same weight, back to (size, size, C)
    t.b[...] = layer.b[:C]
    extra = size - ((conv_output_size(size, k, stride, pad) - 1) * stride - 2 * pad + k)  # output_padding
    u = np.random.default_rng(14).normal(size=y.shape)
    against_torch(torch, t, u, act, lambda tu, tw, tb: F_.conv_transpose2d(tu, tw, tb, stride=stride, padding=pad,
                                                                            output_padding=extra))
