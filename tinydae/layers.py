"""Layers, and the protocol every layer follows.  Backprop is the local derivative times the
upstream gradient, *added* into the gradient buffers, except that a weight's first use in
backward has its GEMM *write* dW (``write_dW``): that slot then needs no zeroing.

The protocol (how to add a layer: write these six methods and LAUNCHES, its fused-kernel
launches; Reshape below is the smallest example, Linear the next; a layer that can end a DAE
also offers pre_bias(x) and bias_row(), for the fused bias + sigmoid):

    layer = Conv2d(32, kernel=4, stride=2, pad=1, activation="relu")   # hyperparameters only
    layer.output_shape(in_shape)  -> out_shape         per example: (D,) rows or (H, W, C) images
    layer.params(in_shape)        -> [Param(name, shape, std, kind)]   its own parameters:
                                     kind "weight" (its GEMM writes or adds dW) or "bias"
                                     (the fused kernel adds db, so the slot is zeroed each step);
                                     std: the init rule, N(0, std^2), 0 for zeros
    layer.cost(in_shape)          -> (forward FLOPs, values a training step holds), per example
    layer.bind(P, G, backend, write_dW)   receives its views into the flat buffers, by full
                                     name "<layer name>.<param name>" (a tied layer reads another
                                     layer's weight there: ``tie`` names that layer)
    layer.forward(x)              -> (y, cache);   layer.backward(dy, cache, need_dx) -> dx
    layer.onnx(g, h, in_shape)    -> h: its ONNX nodes (tinydae/export.py); Linear also npz()

Parameters and gradients are views into one flat buffer each (Sequential allocates them), so
zeroing, the optimizer update and checkpoints stay one operation over one buffer.  Activations
(B, ...) are C-contiguous, images channels last (NHWC), so a reshape between dense and conv
parts is free.

Legend: B batch, I input width, O output width; H x W x C an image, Ho x Wo x F the output of a
convolution, K = kh*kw*C the length of one window.

The activations are declared once, in kernels/activations.py (relu, leaky_relu, tanh, sigmoid,
softplus, silu, identity): their (forward, backward) reference pairs are re-exported here as
ACTIVATIONS.  A backward written from the output y lets a layer cache only what it produced; for
one written from the pre-activation z (SiLU) the layer keeps z + b instead (_activate).
"""
import math
import threading
from typing import NamedTuple

import numpy as np

from tinydae.kernels.activations import BY_NAME, HIDDEN
from tinydae.kernels.reference import ACTIVATIONS  # noqa: F401  (the activation pairs)

HIDDEN_ACTIVATIONS = HIDDEN  # every activation but identity (kernels/activations.py)


class Param(NamedTuple):
    """A parameter a layer declares: its local name ("W", "b"), shape, init std (0: zeros) and
    kind ("weight" or "bias": the bias kernels add into their gradient, so it is zeroed)."""
    name: str
    shape: tuple
    std: float
    kind: str


def as_rows(a):
    """(B, ...) -> (B, N) rows, a view of a C-contiguous array; B may be 0 (reshape(B, -1) fails there)."""
    return a.reshape(a.shape[0], math.prod(a.shape[1:]))


def weight_std(activation, fan_in, fan_out):
    """He-normal sqrt(2 / fan_in) before a (leaky) relu, Glorot-normal sqrt(2 / (fan_in +
    fan_out)) otherwise (and for the logits layer, whose activation is identity)."""
    if BY_NAME[activation].he:
        return math.sqrt(2.0 / fan_in)
    return math.sqrt(2.0 / (fan_in + fan_out))


def _check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}")
    return activation


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
                 f"a model of {sum(sizes):,} parameters", "use a smaller architecture (fewer or narrower layers)")
    params, grads = xp.zeros(sum(sizes), dtype), xp.zeros(sum(sizes), dtype)
    named_params, named_grads = {}, {}
    offset = 0
    for (name, shape), size in zip(layout, sizes):
        named_params[name] = params[offset:offset + size].reshape(shape)
        named_grads[name] = grads[offset:offset + size].reshape(shape)
        offset += size
    return params, grads, named_params, named_grads


# ----------------------------------------------------------------------------------------
# Reshape and Linear
# ----------------------------------------------------------------------------------------


class Reshape:
    """x (B, *in_shape) -> y (B, *shape), a view (activations are C-contiguous): between dense
    rows and NHWC images, either way.  No parameters."""

    # fused-kernel launches: forward, backward, backward without dx (a view: no kernel)
    LAUNCHES = (0, 0, 0)

    def __init__(self, shape):
        self.shape = tuple(int(s) for s in shape)

    def output_shape(self, in_shape):
        if math.prod(in_shape) != math.prod(self.shape):
            raise ValueError(f"cannot reshape {in_shape} ({math.prod(in_shape)} values) to {self.shape}")
        return self.shape

    def params(self, in_shape):
        return []

    def cost(self, in_shape):
        return 0, 0

    def bind(self, P, G, backend, write_dW=False):
        pass

    def forward(self, x):
        return x.reshape(x.shape[0], *self.shape), x.shape

    def backward(self, dy, cache, need_dx=True):
        return dy.reshape(cache) if need_dx else None

    def onnx(self, g, h, in_shape):
        """ONNX keeps images NCHW: rows -> (B, H, W, C) -> NCHW, or NCHW -> rows channels last
        (g: export.onnx_graph's node, const, params, activate, to_rows)"""
        if len(self.shape) == 3:
            shape = g.const(f"image{self.name}", [-1, *self.shape], np.int64)
            return g.node("Transpose", [g.node("Reshape", [h, shape])], perm=[0, 3, 1, 2])
        return g.to_rows(h, self.shape[0]) if len(in_shape) == 3 else h

    def __repr__(self):
        return f"Reshape({'x'.join(map(str, self.shape))})"


class Linear:
    """y = act(x @ W + b), with the bias add and activation fused into one kernel.

    width O; x (B, *in_shape) is read as rows (B, I), I = prod(in_shape).  W: (I, O), b: (O,),
    dW, db the same shapes (views into the flat buffers).  tie="enc0": W is the transpose view
    of that layer's W (and dW of its dW), so gradients from both uses simply add up.
    """

    # fused-kernel launches: forward, backward, backward without dx (bias+activation forward; its backward (the GEMMs are BLAS))
    LAUNCHES = (1, 1, 1)

    def __init__(self, width, activation="identity", tie=None):
        self.width, self.activation, self.tie = int(width), _check_activation(activation), tie
        self.name = None  # set by Sequential

    def output_shape(self, in_shape):
        return (self.width,)

    def params(self, in_shape):
        I = math.prod(in_shape)
        W = [] if self.tie else [Param("W", (I, self.width), weight_std(self.activation, I, self.width), "weight")]
        return W + [Param("b", (self.width,), 0.0, "bias")]

    def cost(self, in_shape):
        """forward FLOPs; values held: the output (cached) and dz, dx in backward"""
        I = math.prod(in_shape)
        return 2 * I * self.width, 2 * self.width + I

    def bind(self, P, G, backend, write_dW=False):
        self.W, self.dW = _tied_weight(self, P, G, (math.prod(self.in_shape), self.width))
        self.b, self.db = P[f"{self.name}.b"], G[f"{self.name}.b"]
        self.write_dW = write_dW  # backward writes dW instead of adding (its first use)
        self.backend, self.kernels, self.xp = backend, backend.kernels, backend.xp

    def forward(self, x):
        """x: (B, *in_shape) -> y: (B, O), cache = (x rows, y (z + b for SiLU), x.shape)"""
        rows = as_rows(x)
        y, read = _activate(self, self.xp.matmul(rows, self.W), self.b)  # in place, unless SiLU
        return y, (rows, read, x.shape)

    def pre_bias(self, x):
        """x: (B, *in_shape) -> x @ W: (B, O), before the bias (for the fused sigmoid of the
        last layer, see DAE.reconstruct); bias_row() is the bias to add to each row."""
        return self.xp.matmul(as_rows(x), self.W)

    def bias_row(self):
        return self.b

    def backward(self, dy, cache, need_dx=True):
        """dy: (B, O) -> dx: (B, *in_shape) (None if not needed); adds into db, and into dW (or
        writes dW when write_dW)."""
        x, y, x_shape = cache
        dz = self.xp.empty_like(dy)
        self.kernels.bias_act_backward(dz, self.db, dy, y, self.activation)  # dz, db += sum dz
        # dL/dW (+)= x^T dz, by the GEMM itself: no temporary, and no add when it writes
        self.backend.gemm_acc(x, dz, self.dW, accumulate=not self.write_dW)
        return self.xp.matmul(dz, self.W.T).reshape(x_shape) if need_dx else None  # dL/dx = dz W^T

    def onnx(self, g, h, in_shape):
        """Gemm: h @ W + b, or h @ W^T + b (transB) for a tied layer reading its encoder's W"""
        W, b = f"{self.tie or self.name}.W", f"{self.name}.b"
        g.const(W, g.params[W])
        g.const(b, g.params[b])
        return g.activate(g.node("Gemm", [h, W, b], transB=int(bool(self.tie))), self.activation)

    def npz(self):
        """The npz description's entry (tinydae/export.py): parameter names, shape, activation"""
        fan_in, fan_out = self.W.shape  # the effective weight, a transpose view if tied
        return dict(W=f"{self.tie or self.name}.W", transposed=bool(self.tie), b=f"{self.name}.b",
                    fan_in=int(fan_in), fan_out=int(fan_out), activation=self.activation)

    def __repr__(self):
        if hasattr(self, "W"):
            return f"Linear({self.W.shape[0]}->{self.W.shape[1]}, {self.activation})"
        return f"Linear(->{self.width}, {self.activation}{', tied to ' + self.tie if self.tie else ''})"


# ----------------------------------------------------------------------------------------
# Convolutions, channels last (NHWC), as GEMMs over im2col columns (kernels: im2col, col2im)
# ----------------------------------------------------------------------------------------
#
# The weight is a (K, F) matrix whose rows follow im2col's column order (i, j, c): a
# convolution is then  z = im2col(x) @ W  over B*Ho*Wo rows, and the existing fused
# bias+activation kernel runs on those rows, as in Linear.  A transposed convolution is the
# adjoint of that map: with the same W it is exactly the backward of Conv2d, so a decoder can
# tie its weights to its encoder's as the dense DAE does.


def _scratch(layer, key, shape, dtype, zeros=False):
    """A temporary that never leaves the call that fills it, kept by the layer for its next call in
    the same thread: a fresh 6 MB array each step costs its page faults again (the (B*49, 512)
    product of the conv:32,64 decoder took 2.5 ms per call inside the step, 0.7 ms in isolation,
    at batch 64; bench/NOTES.md attempt 22).  zeros: zero-filled when allocated (a buffer only
    ever read)."""
    # per thread: NumPy releases the GIL in matmul, so two threads using one model would share it
    ws = layer.__dict__.setdefault("_workspace", {})
    key = (threading.get_ident(), key)
    a = ws.get(key)
    if a is None or a.shape != tuple(shape) or a.dtype != dtype:
        a = ws[key] = (layer.xp.zeros if zeros else layer.xp.empty)(shape, dtype)
    return a


def _activate(layer, rows, b):
    """rows (B, N), z in place -> (y = act(z + b), what backward reads): the bias and the
    activation in one fused kernel, in place, for an activation whose gradient reads its output;
    for one that reads z + b (SiLU) that sum stays in rows and y is a new array (two launches)."""
    if BY_NAME[layer.activation].reads == "y":
        layer.kernels.bias_act_forward(rows, rows, b, layer.activation)
        return rows, rows
    layer.kernels.bias_act_forward(rows, rows, b, "identity")
    zeros = _scratch(layer, "zeros", (rows.shape[1],), rows.dtype, zeros=True)  # never written
    y = layer.xp.empty_like(rows)
    layer.kernels.bias_act_forward(y, rows, zeros, layer.activation)
    return y, rows


def _bias_act(layer, y):
    """y: (B, ..., C) -> (act(y + b) as a (B, ..., C) array, what backward reads as (B, H*W*C)
    rows), the bias per channel.  The fused kernel runs on the image rows (B, H*W*C) with the
    bias repeated over the pixels: on (B*H*W, C) rows a narrow C costs a loop per pixel (C = 1,
    the decoder's last layer: 2 ms instead of 0.014 ms for its bias gradient at batch 64,
    measured)."""
    rows = as_rows(y)
    out, read = _activate(layer, rows, layer.xp.tile(layer.b, rows.shape[1] // layer.b.size))
    return out.reshape(y.shape), read


def _bias_act_backward(layer, dz, dy, y):
    """dz = dy * act'(.) from y (what _activate kept) and db += its sum over examples and pixels,
    all (B, H*W*C) rows: the kernel sums over the examples per (pixel, channel) in float64,
    folded here per channel."""
    db_row = _scratch(layer, "db_row", (dy.shape[1],), layer.db.dtype)
    db_row[...] = 0
    layer.kernels.bias_act_backward(dz, db_row, dy, y, layer.activation)
    layer.db += db_row.reshape(-1, layer.db.size).sum(axis=0)


def _onnx_conv(layer, g, h, op, **attrs):
    """Conv / ConvTranspose: both read the weight as (F, C, kh, kw), our (kh*kw*C, F) matrix
    permuted once, so a convolution and the transposed one tied to it share one initializer."""
    W, b = f"{layer.tie or layer.name}.W", f"{layer.name}.b"
    k = g.params[W].reshape(layer.kh, layer.kw, -1, g.params[W].shape[1])
    g.const(W, np.ascontiguousarray(k.transpose(3, 2, 0, 1)))
    g.const(b, g.params[b])
    attrs.update(kernel_shape=[layer.kh, layer.kw], strides=[layer.stride] * 2, pads=[layer.pad] * 4)
    return g.activate(g.node(op, [h, W, b], **attrs), layer.activation)


def _tied_weight(layer, P, G, want):
    """The views (W, dW) a layer uses: its own, or (tie=) another layer's, checked against the
    shape `want` it needs."""
    owner = layer.tie or layer.name
    W, dW = P[f"{owner}.W"], G[f"{owner}.W"]
    if isinstance(layer, Linear) and layer.tie:
        W, dW = W.T, dW.T
    if tuple(W.shape) != tuple(want):
        raise ValueError(f"{layer.name} is tied to {owner}, whose weight is {tuple(W.shape)}; it needs {tuple(want)}")
    return W, dW


def _window(kernel):
    """kernel: k or (kh, kw) -> (kh, kw)"""
    return (int(kernel), int(kernel)) if np.ndim(kernel) == 0 else tuple(int(k) for k in kernel)


def _check_window(channels, kh, kw, stride, pad):
    if channels < 1 or kh < 1 or kw < 1 or stride < 1 or not 0 <= pad < min(kh, kw):
        raise ValueError(f"a convolution needs channels, window and stride >= 1 and 0 <= pad < window, got "
                         f"channels {channels}, window {kh}x{kw}, stride {stride}, pad {pad}")


class Conv2d:
    """y = act(conv(x, W) + b): x (B, H, W, C) -> y (B, Ho, Wo, F), Ho = (H + 2p - kh) // s + 1.

    filters F; kernel k (a k x k window) or (kh, kw); stride s >= 1; pad p in [0, min(kh, kw)), zeros.
    W: (kh*kw*C, F), b: (F,), and dW, db of the same shapes (views into the flat buffers).
    """

    # fused-kernel launches: forward, backward, backward without dx (im2col, bias+activation; bias backward, col2im (not without dx))
    LAUNCHES = (2, 2, 1)

    def __init__(self, filters, kernel=3, stride=1, pad=0, activation="identity"):
        self.filters, (self.kh, self.kw) = int(filters), _window(kernel)
        self.stride, self.pad = int(stride), int(pad)
        _check_window(self.filters, self.kh, self.kw, self.stride, self.pad)
        self.activation, self.tie, self.name = _check_activation(activation), None, None

    def output_shape(self, in_shape):
        """(H, W, C) -> (Ho, Wo, F)"""
        from tinydae.kernels.common import conv_output_size

        if len(in_shape) != 3:
            raise ValueError(f"Conv2d takes images (H, W, C), got {in_shape}: put a Reshape before it")
        H, W, C = in_shape
        Ho, Wo = conv_output_size(H, self.kh, self.stride, self.pad), conv_output_size(W, self.kw, self.stride, self.pad)
        if Ho < 1 or Wo < 1:
            raise ValueError(f"a {self.kh}x{self.kw} window (pad {self.pad}) does not fit a {H}x{W} image")
        return Ho, Wo, self.filters

    def params(self, in_shape):
        K, F = self.kh * self.kw * in_shape[2], self.filters
        # fan_in: the K terms of one output; fan_out: the outputs one input value reaches
        std = weight_std(self.activation, K, F * self.kh * self.kw / self.stride**2)
        return [Param("W", (K, F), std, "weight"), Param("b", (F,), 0.0, "bias")]

    def cost(self, in_shape):
        """forward FLOPs; values held: the columns and output (cached), dz, dcols and dx"""
        Ho, Wo, F = self.output_shape(in_shape)
        K = self.kh * self.kw * in_shape[2]
        return 2 * Ho * Wo * K * F, 2 * Ho * Wo * (K + F) + math.prod(in_shape)

    def bind(self, P, G, backend, write_dW=False):
        self.W, self.dW = _tied_weight(self, P, G, (self.kh * self.kw * self.in_shape[2], self.filters))
        self.b, self.db = P[f"{self.name}.b"], G[f"{self.name}.b"]
        self.channels = self.in_shape[2]
        self.write_dW = write_dW
        self.backend, self.kernels, self.xp = backend, backend.kernels, backend.xp

    def forward(self, x):
        """x: (B, H, W, C) -> y: (B, Ho, Wo, F), cache = (cols, y as (B, Ho*Wo*F) rows, x.shape)"""
        B = x.shape[0]
        Ho, Wo, F = self.output_shape(x.shape[1:])
        cols = self.xp.empty((B * Ho * Wo, self.W.shape[0]), x.dtype)
        self.kernels.im2col(cols, x, self.kh, self.kw, self.stride, self.pad)
        y, read = _bias_act(self, self.xp.matmul(cols, self.W).reshape(B, Ho, Wo, F))  # (B*Ho*Wo, F) GEMM rows
        return y, (cols, read, x.shape)

    def backward(self, dy, cache, need_dx=True):
        """dy: (B, Ho, Wo, F) -> dx: (B, H, W, C) (None if not needed); adds into db and dW
        (or writes dW when write_dW)."""
        cols, y, x_shape = cache
        dz = _scratch(self, "dz", y.shape, y.dtype)  # (B, Ho*Wo*F)
        _bias_act_backward(self, dz, dy.reshape(y.shape), y)
        dz = dz.reshape(cols.shape[0], self.filters)  # (B*Ho*Wo, F)
        self.backend.gemm_acc(cols, dz, self.dW, accumulate=not self.write_dW)  # dW (+)= cols^T dz
        if not need_dx:
            return None
        dcols = self.xp.matmul(dz, self.W.T, out=_scratch(self, "dcols", cols.shape, cols.dtype))  # (B*Ho*Wo, K)
        dx = self.xp.empty(x_shape, dy.dtype)
        self.kernels.col2im(dx, dcols, self.kh, self.kw, self.stride, self.pad)
        return dx

    def onnx(self, g, h, in_shape):
        return _onnx_conv(self, g, h, "Conv")

    def __repr__(self):
        return (f"Conv2d({getattr(self, 'channels', '?')}->{self.filters}, {self.kh}x{self.kw}, stride {self.stride}, "
                f"pad {self.pad}, {self.activation})")


class ConvTranspose2d:
    """The adjoint of a convolution, a learnable upsampling: x (B, Hi, Wi, F) -> y (B, H, W, C)
    with y = act(col2im(x @ W^T) + b), where (H, W) = out_hw is the image size the matching
    Conv2d maps to (Hi, Wi) (given: with stride > 1 several sizes map to one).

    channels C; W: (kh*kw*C, F) as in Conv2d (the same matrix when tie= names that Conv2d),
    b: (C,).  Chosen over nearest-upsampling + Conv2d because it is exactly the transpose of the
    encoder's convolution: one weight serves both when tied, and the forward of one is the
    backward of the other (the same two kernels, im2col and col2im).  Its known weakness,
    checkerboard artifacts when the stride does not divide the window, is avoided by windows
    that are multiples of the stride (4x4 at stride 2).
    """

    # fused-kernel launches: forward, backward, backward without dx (col2im, bias+activation; bias backward, im2col)
    LAUNCHES = (2, 2, 2)

    def __init__(self, channels, kernel, stride, pad, out_hw, activation="identity", tie=None):
        self.out_channels, (self.kh, self.kw) = int(channels), _window(kernel)
        self.stride, self.pad, self.out_hw = int(stride), int(pad), tuple(int(s) for s in out_hw)
        _check_window(self.out_channels, self.kh, self.kw, self.stride, self.pad)
        self.activation, self.tie, self.name = _check_activation(activation), tie, None

    def output_shape(self, in_shape):
        """(Hi, Wi, F) -> (H, W, C); the input must be what a stride-s convolution gives of (H, W)."""
        from tinydae.kernels.common import conv_output_size

        H, W = self.out_hw
        want = (conv_output_size(H, self.kh, self.stride, self.pad), conv_output_size(W, self.kw, self.stride, self.pad))
        F = self.W.shape[1] if hasattr(self, "W") else in_shape[-1]  # bound: its weight says
        if len(in_shape) != 3 or tuple(in_shape) != (*want, F):
            raise ValueError(f"ConvTranspose2d to {H}x{W} takes {want[0]}x{want[1]}x{F} inputs, "
                             f"got {'x'.join(map(str, in_shape))}")
        return H, W, self.out_channels

    def params(self, in_shape):
        K, F = self.kh * self.kw * self.out_channels, in_shape[2]
        # fan_in: the terms one output sums (F channels, ~kh*kw/s^2 window positions); fan_out: K
        std = weight_std(self.activation, F * self.kh * self.kw / self.stride**2, K)
        return ([] if self.tie else [Param("W", (K, F), std, "weight")]) + \
            [Param("b", (self.out_channels,), 0.0, "bias")]

    def cost(self, in_shape):
        """forward FLOPs; values held: x @ W^T and the output, dz, its columns and dx"""
        H, W, C = self.output_shape(in_shape)
        K, rows = self.kh * self.kw * C, in_shape[0] * in_shape[1]
        return 2 * rows * K * in_shape[2], 2 * rows * K + 2 * H * W * C + math.prod(in_shape)

    def bind(self, P, G, backend, write_dW=False):
        self.W, self.dW = _tied_weight(self, P, G, (self.kh * self.kw * self.out_channels, self.in_shape[2]))
        self.b, self.db = P[f"{self.name}.b"], G[f"{self.name}.b"]
        self.channels = self.out_channels
        self.write_dW = write_dW
        self.backend, self.kernels, self.xp = backend, backend.kernels, backend.xp

    def _columns(self, x):
        """x: (B, Hi, Wi, F) -> col2im(x @ W^T): (B, H, W, C), before the bias"""
        B = x.shape[0]
        H, W, C = self.output_shape(x.shape[1:])
        y = self.xp.empty((B, H, W, C), x.dtype)
        rows = x.reshape(-1, x.shape[3])
        product = _scratch(self, "product", (rows.shape[0], self.W.shape[0]), x.dtype)
        self.kernels.col2im(y, self.xp.matmul(rows, self.W.T, out=product), self.kh, self.kw, self.stride, self.pad)
        return y

    def forward(self, x):
        """x: (B, Hi, Wi, F) -> y: (B, H, W, C), cache = (x rows, y as (B, H*W*C) rows, x.shape)"""
        y, read = _bias_act(self, self._columns(x))
        return y, (x.reshape(-1, x.shape[3]), read, x.shape)

    def pre_bias(self, x):
        """x: (B, Hi, Wi, F) -> (B, H*W*C) rows before the bias; bias_row(): (H*W*C,), the
        per-channel bias repeated over the pixels (NHWC), so the fused row kernels apply."""
        return as_rows(self._columns(x))

    def bias_row(self):
        return self.xp.tile(self.b, self.out_hw[0] * self.out_hw[1])

    def backward(self, dy, cache, need_dx=True):
        """dy: (B, H, W, C) -> dx: (B, Hi, Wi, F); adds into db and dW (or writes dW)."""
        rows, flat, x_shape = cache
        dz = _scratch(self, "dz", flat.shape, flat.dtype)  # (B, H*W*C)
        _bias_act_backward(self, dz, dy.reshape(flat.shape), flat)
        g = _scratch(self, "g", (rows.shape[0], self.W.shape[0]), dy.dtype)  # im2col of dz: the adjoint's adjoint
        self.kernels.im2col(g, dz.reshape(x_shape[0], *self.out_hw, self.out_channels), self.kh, self.kw,
                            self.stride, self.pad)
        self.backend.gemm_acc(g, rows, self.dW, accumulate=not self.write_dW)  # dW (+)= g^T x
        return self.xp.matmul(g, self.W).reshape(x_shape) if need_dx else None  # dx = g W

    def onnx(self, g, h, in_shape):
        # the output size is the matching convolution's input: output_padding says which
        extra = [o - ((n - 1) * self.stride - 2 * self.pad + k)
                 for o, n, k in zip(self.out_hw, in_shape[:2], (self.kh, self.kw))]
        return _onnx_conv(self, g, h, "ConvTranspose", output_padding=extra)

    def __repr__(self):
        return (f"ConvTranspose2d(->{self.out_channels}, {self.kh}x{self.kw}, stride {self.stride}, "
                f"pad {self.pad}, to {self.out_hw[0]}x{self.out_hw[1]}, {self.activation}"
                f"{', tied to ' + self.tie if self.tie else ''})")


def launches(layer):
    """A layer's fused-kernel launches: (forward, backward, backward without dx); an activation
    whose gradient reads z (SiLU) adds one to the forward (_activate)."""
    fwd, bwd, bwd_no_dx = layer.LAUNCHES
    extra = int(getattr(layer, "activation", "identity") != "identity" and BY_NAME[layer.activation].reads == "z")
    return fwd + extra, bwd, bwd_no_dx


# ----------------------------------------------------------------------------------------
# Sequential: named layers in order, their parameters views into one flat buffer each
# ----------------------------------------------------------------------------------------


def declared(entries):
    """The parameters that wired layers declare, without allocating anything.
    entries: [(name, layer, its input shape), ...] in buffer order
    -> (layout [(full name, shape), ...], {full name: Param})"""
    layout, params = [], {}
    for name, layer, shape in entries:
        for p in layer.params(shape):
            full = f"{name}.{p.name}"
            if full in params:
                raise ValueError(f"parameter {full!r} declared twice: layer names must differ")
            layout.append((full, tuple(p.shape)))
            params[full] = p
    return layout, params


def entries_cost(entries):
    """(forward FLOPs, values a training step holds) per example, summed over wired layers."""
    costs = [layer.cost(shape) for _, layer, shape in entries]
    return sum(c[0] for c in costs), sum(c[1] for c in costs)


def plan(named_layers, in_shape):
    """Shapes and parameters of a stack, without allocating anything (for size checks).

    named_layers: [(name, layer), ...]; in_shape: one example's shape
    -> (shapes, layout, params): shapes[i] the input of layer i (shapes[-1] the output),
       layout [(full name, shape), ...] in buffer order, params {full name: Param}
    """
    shapes = [tuple(in_shape)]
    for _, layer in named_layers:
        shapes.append(tuple(layer.output_shape(shapes[-1])))
    layout, params = declared([(name, layer, shape) for (name, layer), shape in zip(named_layers, shapes)])
    return shapes, layout, params


class FlatNet:
    """What every network over one flat parameter buffer shares (Sequential, unet.UNet): needs
    layout, param_specs, named_params, accumulated, grads and backend."""

    def init_params(self, seed, to_device, step0=0):
        """Each Param N(0, std^2) from Philox stream STREAM_INIT, step = step0 + its index in the
        layout (zeros where std is 0).  to_device: host float64 array -> what the views take."""
        from tinydae.rng import STREAM_INIT, host_normal

        for index, (name, shape) in enumerate(self.layout):
            std = self.param_specs[name].std
            if std == 0:
                self.named_params[name][...] = 0
            else:
                self.named_params[name][...] = to_device(host_normal(shape, seed, step0 + index, STREAM_INIT) * std)

    def clear_accumulated(self):
        """Zero what backward accumulates into before a backward pass.  On the CPU that is the
        biases only (every dW is written by its first GEMM; zeroing a whole 3.6M-value buffer
        cost ~1 ms of a 12 ms batch-64 step); on a GPU one memset of the whole buffer is cheaper
        than a launch per bias."""
        if self.backend.xp is np:
            for g in self.accumulated:
                g[...] = 0
        else:
            self.grads[...] = 0


class Sequential(FlatNet):
    """Layers applied in order; parameters and gradients views into one flat buffer each.

    named_layers: [(name, layer), ...] (names prefix the parameters: "enc0.W"); in_shape: one
    example's shape, e.g. (784,) or (28, 28, 1); backend, dtype: where and how the buffers live.
    """

    def __init__(self, named_layers, in_shape, backend, dtype):
        self.names = [name for name, _ in named_layers]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"layer names must differ, got {self.names}")
        self.layers = [layer for _, layer in named_layers]
        self.shapes, self.layout, self.param_specs = plan(named_layers, in_shape)
        self.params, self.grads, self.named_params, self.named_grads = flat_buffers(backend.xp, self.layout, dtype)
        self.backend = backend
        # Backward runs from the last layer, so a weight's first use there writes its dW and a
        # later use (a tied encoder) adds: zeroing then clears only the biases, which the bias
        # kernels accumulate.
        written = set()
        for name, layer, shape in reversed(list(zip(self.names, self.layers, self.shapes))):
            layer.name, layer.in_shape = name, shape
            weight = f"{getattr(layer, 'tie', None) or name}.W"
            layer.bind(self.named_params, self.named_grads, backend, write_dW=weight not in written)
            written.add(weight)
        self.accumulated = [self.named_grads[n] for n, p in self.param_specs.items() if p.kind == "bias"]
        # the first layer that has parameters: no layer before it needs dx
        self.first_trained = next((i for i, layer in enumerate(self.layers) if layer.params(self.shapes[i])), 0)
        # the last layer that is not a reshape gives the output (logits_parts); a DAE's encoder ends
        # with the last layer named enc* (code)
        self._last = max(i for i, layer in enumerate(self.layers) if not isinstance(layer, Reshape))
        self._code = max((i for i, name in enumerate(self.names) if name.startswith("enc")), default=-1) + 1

    def forward(self, x, layers=None):
        """Training forward through layers[:n] (all by default): the output and the caches."""
        caches = []
        for layer in self.layers[:layers]:
            x, cache = layer.forward(x)
            caches.append(cache)
        return x, caches

    def infer(self, x, layers=None):
        """Inference forward through layers[:n]: keeps nothing, so each activation can be freed."""
        for layer in self.layers[:layers]:
            x = layer.forward(x)[0]
        return x

    @property
    def backward_order(self):
        """The names of the layers backward runs, in its order (a parameter's gradient is final
        once its layer's backward is done: distributed.bucket_plan starts reductions then)."""
        return [self.names[i] for i in reversed(range(self.first_trained, len(self.layers)))]

    def backward(self, dy, caches, done=None):
        """dy: the gradient of the output -> nothing (no dx for the data); fills the gradients.
        done: called with each layer's name once its backward has been queued (or None)."""
        for i in reversed(range(self.first_trained, len(self.layers))):
            dy = self.layers[i].backward(dy, caches[i], need_dx=i > self.first_trained)
            if done is not None:
                done(self.names[i])

    def logits_parts(self, x):
        """x -> (the output before the last layer's bias, as rows (B, N); that bias as an (N,) row),
        so one fused kernel can add the bias and apply the sigmoid (DAE.reconstruct)."""
        last = self.layers[self._last]
        return last.pre_bias(self.infer(x, self._last)), last.bias_row()

    def code(self, x):
        """x -> the output of the layers up to the last one named enc*, as rows (B, N)."""
        return as_rows(self.infer(x, self._code))

    def cost(self):
        """(forward FLOPs, values a training step holds) per example, summed over the layers."""
        return entries_cost(zip(self.names, self.layers, self.shapes))


def stack_cost(named_layers, in_shape):
    """Sequential.cost without building the stack (no allocation): for size checks."""
    shapes = plan(named_layers, in_shape)[0]
    return entries_cost((name, layer, shape) for (name, layer), shape in zip(named_layers, shapes))


def standalone(layer, in_shape, backend="cpu", dtype="float64", name="layer"):
    """One layer bound to buffers of its own (a one-layer Sequential, kept as layer.net): for
    tests, and for trying a layer by itself.  -> the layer, its parameters set by init rule."""
    from tinydae.backend import get_backend

    backend = get_backend(backend) if isinstance(backend, str) else backend
    layer.net = Sequential([(name, layer)], in_shape, backend, np.dtype(dtype))
    layer.net.init_params(0, lambda w: backend.to_device(w.astype(dtype)))
    return layer
