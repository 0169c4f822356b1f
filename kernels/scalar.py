"""Per-element math shared by the CPU and CUDA twins, written once (like kernels/philox.py).

kernels/cpu.py compiles the ones its bodies call with numba.njit(inline="always"),
kernels/cuda.py with numba.cuda.jit(device=True, inline="always"); box_muller is the scalar
specification of the CUDA twin's kernels/noise.py:box_muller_cuda and is compiled by neither.
Each function is self-contained (only math and numpy scalars, no calls to the others), so it
needs no rebinding (kernels/common.py: rebind), unlike the op modules' bodies.

Activations compute in the precision of the constants the caller passes (`zero`, `one`,
`slope` = 0, 1 and LEAKY_SLOPE): the kernels pass them in the data dtype
(`array.dtype.type(1)`), so float32 layers do float32 arithmetic, as NumPy does in the
reference, and a GPU does no float64 work for them (an untyped float literal such as 0.0 is
float64 in numba and would promote the whole expression).  The defaults (float64) are for
callers that want float64 intermediates rounded once when stored.  The RNG conversions stay in
float32, bit for bit as kernels/reference.py.
"""
import math

import numpy as np

from .activations import CODES as ACT_CODES  # identity 0, relu 1, leaky 2, ... (the records' order)
from .activations import LEAKY_SLOPE

IDENTITY, RELU, LEAKY_RELU, TANH, SIGMOID, SOFTPLUS, SILU = (ACT_CODES[a] for a in (
    "identity", "relu", "leaky_relu", "tanh", "sigmoid", "softplus", "silu"))


def uniform(w):
    """uint32 -> float32 in [0, 1): top 24 bits times 2^-24."""
    return np.float32(w >> np.uint32(8)) * np.float32(2.0**-24)


def box_muller(w1, w2):
    """Two uint32 words -> two standard normals (float32): (r cos(theta), r sin(theta)).

    Open-interval uniforms (2 * top23 + 1) * 2^-24 keep log() away from 0.
    """
    u1 = (np.float32(w1 >> np.uint32(9)) * np.float32(2.0) + np.float32(1.0)) * np.float32(2.0**-24)
    u2 = (np.float32(w2 >> np.uint32(9)) * np.float32(2.0) + np.float32(1.0)) * np.float32(2.0**-24)
    r = math.sqrt(np.float32(-2.0) * math.log(u1))
    theta = np.float32(2.0 * np.pi) * u2
    return np.float32(r * math.cos(theta)), np.float32(r * math.sin(theta))


def sigmoid(z, zero=0.0, one=1.0):
    e = math.exp(-abs(z))  # exp only sees -|z|: no overflow
    return one / (one + e) if z >= zero else e / (one + e)


def act(a, z, zero=0.0, one=1.0, slope=LEAKY_SLOPE):
    """Activation code a applied to z, in the precision of zero, one and slope."""
    if a == RELU:
        return max(z, zero)
    if a == LEAKY_RELU:
        return z if z > zero else z * slope
    if a == TANH:
        return math.tanh(z)
    if a == SIGMOID:
        e = math.exp(-abs(z))
        return one / (one + e) if z >= zero else e / (one + e)
    if a == SOFTPLUS:
        # softplus = max(z, 0) + log1p(e), log1p by Kahan: log(u) e / (u - 1) undoes the
        # rounding of u = 1 + e (1.5x faster than libm's log1p on the CPU, as accurate)
        e = math.exp(-abs(z))
        u = one + e
        return max(z, zero) + (e if u == one else math.log(u) * (e / (u - one)))
    if a == SILU:
        e = math.exp(-abs(z))
        return z * (one / (one + e) if z >= zero else e / (one + e))
    return z


def act_grad(a, y, zero=0.0, one=1.0, slope=LEAKY_SLOPE):
    """f'(z) written from what the activation's gradient reads (kernels/activations.py): the
    output y = f(z), or for SiLU the pre-activation z itself; in the precision of zero, one
    and slope."""
    if a == RELU:
        return one if y > zero else zero
    if a == LEAKY_RELU:
        return one if y > zero else slope
    if a == TANH:
        return one - y * y
    if a == SIGMOID:
        return y * (one - y)
    if a == SOFTPLUS:
        return -math.expm1(-y)  # sigmoid(z) = 1 - e^-y, exact for tiny y
    if a == SILU:  # y is z here: s (1 + z (1 - s)), s = sigmoid(z)
        e = math.exp(-abs(y))
        s = one / (one + e) if y >= zero else e / (one + e)
        return s * (one + y * (one - s))
    return one


def sgd_element(p, g, vel, lr, momentum, nesterov, wd):
    """One SGD step for one parameter -> (p, velocity); scalars in the parameter dtype."""
    g = g + wd * p
    vel = momentum * vel + g
    return p - lr * (g + momentum * vel if nesterov else vel), vel


def adam_element(p, g, m, v, lr, b1, one_minus_b1, b2, one_minus_b2, eps, wd, lr_wd, decoupled, c1, c2):
    """One Adam/AdamW step for one parameter -> (p, m, v); c1, c2 = 1 - beta^t."""
    if decoupled:
        p = p - lr_wd * p
    else:
        g = g + wd * p
    m = b1 * m + one_minus_b1 * g
    v = b2 * v + one_minus_b2 * g * g
    return p - lr * (m / c1) / (math.sqrt(v / c2) + eps), m, v
