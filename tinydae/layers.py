"""Layers: each a forward/backward pair.  Backprop is the local derivative times the
upstream gradient, *added* into the gradient buffers (zeroed once per step), except that a
weight's first use in backward may have its GEMM *write* dW (``write_dW``): then that slot
needs no zeroing and no temporary.

Legend: B batch, I input width, O output width.

The activations themselves (relu, leaky_relu, tanh, sigmoid, softplus, identity) are
forward/backward pairs in kernels/reference.py, re-exported here as ACTIVATIONS; their
backward is written from the output y alone, so a layer caches only what it produced.
"""
import math

import numpy as np

from tinydae.kernels.reference import ACTIVATIONS  # noqa: F401  (the activation pairs)

HIDDEN_ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "softplus")


def flat_buffers(xp, layout, dtype):
    """One flat parameter buffer and one flat gradient buffer, and a named view of each
    tensor in both, so that an optimizer updates everything in one pass.

    layout: [(name, shape), ...] in buffer order -> (params, grads, {name: view}, {name: view})
    """
    from tinydae.safety import check_memory

    sizes = [math.prod(shape) for _, shape in layout]
    # Every model's parameters come through here: its size is refused before it is allocated
    # (the two buffers, and the float64 draw of the largest weight at initialisation).
    check_memory(2 * sum(sizes) * np.dtype(dtype).itemsize + 8 * max(sizes, default=0),
                 f"a model of {sum(sizes):,} parameters", "use smaller widths (hidden=...)")
    params, grads = xp.zeros(sum(sizes), dtype), xp.zeros(sum(sizes), dtype)
    named_params, named_grads = {}, {}
    offset = 0
    for (name, shape), size in zip(layout, sizes):
        named_params[name] = params[offset:offset + size].reshape(shape)
        named_grads[name] = grads[offset:offset + size].reshape(shape)
        offset += size
    return params, grads, named_params, named_grads


def init_normal(named_params, layout, seed, he, step0=0, to_device=lambda w: w):
    """Zero biases; each weight (fan_in, fan_out) N(0, 1) from Philox stream STREAM_INIT (step
    = step0 + its index in layout) times sqrt(2 / fan_in) (He, where he(name)) or
    sqrt(2 / (fan_in + fan_out)) (Glorot).  to_device: host array -> what the view takes."""
    from tinydae.rng import STREAM_INIT, host_normal

    for index, (name, shape) in enumerate(layout):
        view = named_params[name]
        if name.endswith(".b"):
            view[...] = 0
            continue
        fan_in, fan_out = shape
        std = math.sqrt(2.0 / fan_in) if he(name) else math.sqrt(2.0 / (fan_in + fan_out))
        view[...] = to_device(host_normal(shape, seed, step0 + index, STREAM_INIT) * std)


class Linear:
    """y = act(x @ W + b), with the bias add and activation fused into one kernel.

    W: (I, O), b: (O,), and dW, db of the same shapes: views into the model's flat
    parameter and gradient buffers.  For tied weights W is the transpose view of
    another layer's W (and dW of its dW), so gradients from both uses simply add up.
    """

    def __init__(self, W, b, dW, db, activation, backend, write_dW=False):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}")
        self.W, self.b, self.dW, self.db = W, b, dW, db
        self.write_dW = write_dW  # backward writes dW instead of adding (its first use)
        self.activation = activation
        self.backend = backend
        self.kernels = backend.kernels
        self.xp = backend.xp

    def forward(self, x):
        """x: (B, I) -> y: (B, O), cache = (x, y)"""
        y = self.xp.matmul(x, self.W)
        self.kernels.bias_act_forward(y, y, self.b, self.activation)  # in place
        return y, (x, y)

    def backward(self, dy, cache, need_dx=True):
        """dy: (B, O) -> dx: (B, I) (None if not needed); adds into db, and into dW (or
        writes dW when write_dW)."""
        x, y = cache
        dz = self.xp.empty_like(dy)
        self.kernels.bias_act_backward(dz, self.db, dy, y, self.activation)  # dz, db += sum dz
        # dL/dW (+)= x^T dz, by the GEMM itself: no temporary, and no add when it writes
        self.backend.gemm_acc(x, dz, self.dW, accumulate=not self.write_dW)
        return self.xp.matmul(dz, self.W.T) if need_dx else None  # dL/dx = dz W^T

    def __repr__(self):
        return f"Linear({self.W.shape[0]}->{self.W.shape[1]}, {self.activation})"


# ----------------------------------------------------------------------------------------
# Convolutions, channels last (NHWC), as GEMMs over im2col columns (kernels: im2col, col2im)
# ----------------------------------------------------------------------------------------
#
# Legend: B batch, H x W x C an input image, Ho x Wo x F the output, K = kh*kw*C the length of
# one window.  The weight is a (K, F) matrix whose rows follow im2col's column order (i, j, c):
# a convolution is then  z = im2col(x) @ W  over B*Ho*Wo rows, and the existing fused
# bias+activation kernel runs on those rows, as in Linear.  A transposed convolution is the
# adjoint of that map: with the same W it is exactly the backward of Conv2d, so a decoder can
# tie its weights to its encoder's as the dense DAE does.


class Conv2d:
    """y = act(conv(x, W) + b): x (B, H, W, C) -> y (B, Ho, Wo, F), Ho = (H + 2p - kh) // s + 1.

    W: (kh*kw*C, F), b: (F,), and dW, db of the same shapes (views into the flat buffers);
    kh, kw: the window; stride s >= 1; pad p in [0, min(kh, kw)), zeros.
    """

    def __init__(self, W, b, dW, db, activation, backend, kh, kw, stride=1, pad=0, write_dW=False):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}")
        if W.shape[0] % (kh * kw):
            raise ValueError(f"W has {W.shape[0]} rows, not a multiple of the {kh}x{kw} window")
        self.W, self.b, self.dW, self.db = W, b, dW, db
        self.kh, self.kw, self.stride, self.pad = kh, kw, stride, pad
        self.channels = W.shape[0] // (kh * kw)
        self.activation, self.write_dW = activation, write_dW
        self.backend, self.kernels, self.xp = backend, backend.kernels, backend.xp

    def output_shape(self, shape):
        """(H, W, C) -> (Ho, Wo, F)"""
        from tinydae.kernels.common import conv_output_size

        H, W, _ = shape
        return (conv_output_size(H, self.kh, self.stride, self.pad),
                conv_output_size(W, self.kw, self.stride, self.pad), self.W.shape[1])

    def forward(self, x):
        """x: (B, H, W, C) -> y: (B, Ho, Wo, F), cache = (cols, y, x.shape)"""
        B = x.shape[0]
        Ho, Wo, F = self.output_shape(x.shape[1:])
        cols = self.xp.empty((B * Ho * Wo, self.W.shape[0]), x.dtype)
        self.kernels.im2col(cols, x, self.kh, self.kw, self.stride, self.pad)
        y = self.xp.matmul(cols, self.W)  # (B*Ho*Wo, F)
        self.kernels.bias_act_forward(y, y, self.b, self.activation)
        return y.reshape(B, Ho, Wo, F), (cols, y, x.shape)

    def backward(self, dy, cache, need_dx=True):
        """dy: (B, Ho, Wo, F) -> dx: (B, H, W, C) (None if not needed); adds into db and dW
        (or writes dW when write_dW)."""
        cols, y, x_shape = cache
        dz = self.xp.empty_like(y)
        self.kernels.bias_act_backward(dz, self.db, dy.reshape(y.shape), y, self.activation)
        self.backend.gemm_acc(cols, dz, self.dW, accumulate=not self.write_dW)  # dW (+)= cols^T dz
        if not need_dx:
            return None
        dcols = self.xp.matmul(dz, self.W.T)  # (B*Ho*Wo, K)
        dx = self.xp.empty(x_shape, dy.dtype)
        self.kernels.col2im(dx, dcols, self.kh, self.kw, self.stride, self.pad)
        return dx

    def __repr__(self):
        return (f"Conv2d({self.channels}->{self.W.shape[1]}, {self.kh}x{self.kw}, stride {self.stride}, "
                f"pad {self.pad}, {self.activation})")


class ConvTranspose2d:
    """The adjoint of a convolution, a learnable upsampling: x (B, Hi, Wi, F) -> y (B, H, W, C)
    with y = act(col2im(x @ W^T) + b), where (H, W) is the image size the matching Conv2d maps to
    (Hi, Wi) (given: with stride > 1 several sizes map to one).

    W: (kh*kw*C, F) as in Conv2d (the same matrix when tied), b: (C,).  Chosen over
    nearest-upsampling + Conv2d because it is exactly the transpose of the encoder's convolution:
    one weight serves both when tied, and the forward of one is the backward of the other (the
    same two kernels, im2col and col2im).  Its known weakness, checkerboard artifacts when the
    stride does not divide the window, is avoided by windows that are multiples of the stride
    (4x4 at stride 2).
    """

    def __init__(self, W, b, dW, db, activation, backend, kh, kw, stride, pad, out_hw, write_dW=False):
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}")
        self.W, self.b, self.dW, self.db = W, b, dW, db
        self.kh, self.kw, self.stride, self.pad = kh, kw, stride, pad
        self.out_hw = tuple(out_hw)
        self.channels = W.shape[0] // (kh * kw)
        self.activation, self.write_dW = activation, write_dW
        self.backend, self.kernels, self.xp = backend, backend.kernels, backend.xp

    def output_shape(self, shape):
        """(Hi, Wi, F) -> (H, W, C); the input must be what a stride-s convolution gives of (H, W)."""
        from tinydae.kernels.common import conv_output_size

        H, W = self.out_hw
        want = (conv_output_size(H, self.kh, self.stride, self.pad), conv_output_size(W, self.kw, self.stride, self.pad))
        if tuple(shape[:2]) != want or shape[2] != self.W.shape[1]:
            raise ValueError(f"ConvTranspose2d to {H}x{W} takes {want[0]}x{want[1]}x{self.W.shape[1]} inputs, "
                             f"got {'x'.join(map(str, shape))}")
        return H, W, self.channels

    def forward(self, x):
        """x: (B, Hi, Wi, F) -> y: (B, H, W, C), cache = (x rows, y rows)"""
        B, Hi, Wi, F = x.shape
        H, W, C = self.output_shape(x.shape[1:])
        rows = x.reshape(B * Hi * Wi, F)
        y = self.xp.empty((B, H, W, C), x.dtype)
        self.kernels.col2im(y, self.xp.matmul(rows, self.W.T), self.kh, self.kw, self.stride, self.pad)
        flat = y.reshape(B * H * W, C)
        self.kernels.bias_act_forward(flat, flat, self.b, self.activation)
        return y, (rows, flat, x.shape)

    def backward(self, dy, cache, need_dx=True):
        """dy: (B, H, W, C) -> dx: (B, Hi, Wi, F); adds into db and dW (or writes dW)."""
        rows, flat, x_shape = cache
        B, Hi, Wi, F = x_shape
        dz = self.xp.empty_like(flat)
        self.kernels.bias_act_backward(dz, self.db, dy.reshape(flat.shape), flat, self.activation)
        g = self.xp.empty((B * Hi * Wi, self.W.shape[0]), dy.dtype)  # im2col of dz: the adjoint's adjoint
        self.kernels.im2col(g, dz.reshape(dy.shape), self.kh, self.kw, self.stride, self.pad)
        self.backend.gemm_acc(g, rows, self.dW, accumulate=not self.write_dW)  # dW (+)= g^T x
        return self.xp.matmul(g, self.W).reshape(x_shape) if need_dx else None  # dx = g W

    def __repr__(self):
        return (f"ConvTranspose2d({self.W.shape[1]}->{self.channels}, {self.kh}x{self.kw}, stride {self.stride}, "
                f"pad {self.pad}, to {self.out_hw[0]}x{self.out_hw[1]}, {self.activation})")
