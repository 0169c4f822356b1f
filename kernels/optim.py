"""Optimizer updates, one call over the flat parameter / gradient / moment buffers: SGD (with
(Nesterov) momentum) and Adam / AdamW, three twins.

The reference is the specification.  The CPU and CUDA bodies apply kernels/scalar.py's
sgd_element / adam_element per element (the same source compiled for each target, in the data
dtype: a float32 buffer is updated in float32).

The guard: an optional (1,) float64 array holding the step's loss sum; when it is not finite the
update is skipped.  The reference and CPU twins read it on the host (their arrays live there);
the CUDA bodies read its int64 bits on the device (finite iff the 11 exponent bits are not all
ones: an integer test, so float32 kernels stay free of float64 instructions), so a non-finite
loss skips the update without a host sync.
"""
import numpy as np

from .common import cuda, guard_allows, prange
from .scalar import adam_element, sgd_element


def sgd_update(params, grads, velocity, lr, momentum, nesterov, weight_decay, guard=None):
    """SGD with (Nesterov) momentum and L2 weight decay, in place.

    params, grads, velocity: (N,); guard: None or (1,) float64, the step's loss sum
      g = grad + wd * p;  v = momentum * v + g;  p -= lr * (g + momentum * v if nesterov else v)
    With momentum 0 this is plain SGD (v = g).  A non-finite guard[0] leaves everything as it was.
    """
    if not guard_allows(guard):
        return
    g = grads + weight_decay * params
    velocity[...] = momentum * velocity + g
    step = g + momentum * velocity if nesterov else velocity
    params -= (lr * step).astype(params.dtype)


def sgd_cpu(p, g, vel, lr, momentum, nesterov, wd):
    for i in prange(p.size):
        p[i], vel[i] = sgd_element(p[i], g[i], vel[i], lr, momentum, nesterov, wd)


def finite_cuda(bits):
    return ((bits >> 52) & 0x7FF) != 0x7FF  # the 11 exponent bits of a float64


def sgd_cuda(p, g, vel, lr, momentum, nesterov, wd, guard):
    if not finite_cuda(guard[0]):  # the step's loss is not finite: leave everything as it was
        return
    for k in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        p[k], vel[k] = sgd_element(p[k], g[k], vel[k], lr, momentum, nesterov, wd)


def adam_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, t, guard=None):
    """Adam (decoupled=False: L2 added to the gradient) or AdamW (decoupled=True), in place.

    params, grads, m, v: (N,); t: the step number, counted from 1; guard: as in sgd_update
      AdamW: p -= lr * wd * p           Adam: g = grad + wd * p
      m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
      p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    A non-finite guard[0] leaves everything as it was.
    """
    if not guard_allows(guard):
        return
    g = grads if decoupled else grads + weight_decay * params
    if decoupled:
        params -= (lr * weight_decay * params).astype(params.dtype)
    m[...] = beta1 * m + (1 - beta1) * g
    v[...] = beta2 * v + (1 - beta2) * g * g
    mhat = m / (1 - beta1**t)
    vhat = v / (1 - beta2**t)
    params -= (lr * mhat / (np.sqrt(vhat) + eps)).astype(params.dtype)


def adam_cpu(p, g, m, v, lr, b1, one_minus_b1, b2, one_minus_b2, eps, wd, lr_wd, decoupled, c1, c2):
    for i in prange(p.size):
        p[i], m[i], v[i] = adam_element(p[i], g[i], m[i], v[i], lr, b1, one_minus_b1, b2, one_minus_b2,
                                        eps, wd, lr_wd, decoupled, c1, c2)


def adam_cuda(p, g, m, v, lr, b1, one_minus_b1, b2, one_minus_b2, eps, wd, lr_wd, decoupled, c1, c2, guard):
    if not finite_cuda(guard[0]):  # the step's loss is not finite: leave everything as it was
        return
    for k in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        p[k], m[k], v[k] = adam_element(p[k], g[k], m[k], v[k], lr, b1, one_minus_b1, b2, one_minus_b2,
                                        eps, wd, lr_wd, decoupled, c1, c2)
