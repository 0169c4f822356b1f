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

from tinydae.kernels.reference import ACTIVATIONS  # noqa: F401  (the activation pairs)

HIDDEN_ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "softplus")


def flat_buffers(xp, layout, dtype):
    """One flat parameter buffer and one flat gradient buffer, and a named view of each
    tensor in both, so that an optimizer updates everything in one pass.

    layout: [(name, shape), ...] in buffer order -> (params, grads, {name: view}, {name: view})
    """
    sizes = [math.prod(shape) for _, shape in layout]
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
