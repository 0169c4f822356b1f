"""CPU twins of kernels/reference.py: numba @njit(cache=True), parallel over rows or blocks.

The kernels' bodies live beside their references in the op modules (kernels/noise.py,
bias_act.py, loss.py, optim.py, conv.py); this module compiles them (common.rebind: their
`prange` becomes numba's, their per-element helpers the compiled ones) and wraps them.
Same signatures as the reference.  Each public function checks its arrays (C-contiguous,
matching shapes), turns string options into integer codes and scalars into the arrays'
dtype, then calls a jitted kernel.  Casting scalars to the array dtype first keeps the
arithmetic in float32 for float32 arrays, as NumPy does in the reference (a Python float
would make numba compute in float64 and round differently).

No fastmath, except `reassoc` on two float64 sums (the chain's per-row change, the loss total):
it only reorders their additions (so LLVM can vectorise them); every stored element is computed
as the reference computes it, and the tests compare the sigmoid and loss gradients bit for bit.
"""
import os

import numba
import numpy as np
from numba import njit, prange

from . import bias_act, conv, loss, noise, optim, scalar
from .common import (LOSS_BCE, LOSS_MSE, adam_scalars, check_columns, check_contiguous, check_im2col,
                     check_row_sums, check_same_shape, check_total, drop_stale_numba_cache,
                     check_uint32_vector, guard_allows, rebind, sgd_scalars)
from .noise import (CORRUPTION_GAUSSIAN, CORRUPTION_MASKING, CORRUPTION_NONE, CORRUPTION_SALT_PEPPER,
                    even_span, normals_from_words)
from .philox import philox4x32_10, seed_key
from .scalar import ACT_CODES

ROW_BLOCK = bias_act.ROW_BLOCK  # rows per parallel task in the bias-gradient sum (sets the sum order)
CHUNK = noise.CHUNK  # elements per parallel task in the RNG kernels

# GNU OpenMP's workers spin after each parallel region and starve OpenBLAS's GEMM threads
# on small machines (measured on 2 cores: 1.5k vs 12.7k training examples/s), so prefer
# numba's non-spinning workqueue layer unless the user chose one.  It does not allow two
# Python threads to run these kernels at once; set NUMBA_THREADING_LAYER=omp for that.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"


# The names an op module's CPU body uses that only numba gives meaning: numba's prange and the
# compiled per-element helpers (the shared math of kernels/scalar.py, and the op modules' own).
_NAMES = {"prange": prange}
_SPACES = {}  # op module -> the globals its compiled bodies share (common.rebind)


def _inline(func, name=None):
    """Compile an op module's helper for inlining into the CPU bodies that call it by `name`."""
    name = name or func.__name__
    assert name not in _NAMES, f"{name}: a second CPU helper of one name would replace the first everywhere"
    compiled = njit(inline="always")(rebind(func, _NAMES, _SPACES, name))  # inlined: never cached alone
    _NAMES[name] = compiled
    for space in _SPACES.values():
        space[name] = compiled
    return compiled


_inline(philox4x32_10, "philox")
for _helper in (scalar.uniform, scalar.act, scalar.act_grad, scalar.sgd_element, scalar.adam_element,
                noise.fill_words_cpu, bias_act.forward_row_cpu, bias_act.backward_row_cpu):
    _inline(_helper)


# Every kernel is compiled twice, serial and parallel: a parallel launch costs about 95 us
# with the workqueue layer (measured), more than a small problem takes, so each wrapper
# picks by size.  The serial copy gets its own qualified name so the two never share
# numba's on-disk cache entries.
PARALLEL_MIN_CHEAP = 1 << 18   # elements, for memory-bound ops (bias+activation, optimizers)
PARALLEL_MIN_HEAVY = 1 << 14   # elements, for ops with transcendental functions per element


def kernel(func, **flags):
    """An op module's CPU body -> (serial, parallel) numba dispatchers of its source (flags: e.g.
    fastmath)."""
    serial = rebind(func, _NAMES, _SPACES, func.__name__ + "_serial")
    func = rebind(func, _NAMES, _SPACES)
    # error_model="numpy": a float division by zero gives inf/nan as in the NumPy reference,
    # instead of numba's default Python check that raises.  That check is a branch per divide
    # which stops LLVM vectorising the serial loops (parfors already use this model): the
    # serial Adam over 200K parameters 820 -> 175 us, sigmoid 64K 111 -> 67 us (attempt 14).
    flags.setdefault("error_model", "numpy")
    return njit(cache=True, **flags)(serial), njit(cache=True, parallel=True, **flags)(func)


def pick(pair, n, threshold):
    return pair[1] if n >= threshold else pair[0]


def check_arrays(**arrays):
    check_contiguous(arrays, lambda a: isinstance(a, np.ndarray), "a numpy array")


# ----------------------------------------------------------------------------------------
# Random words and corruption
# ----------------------------------------------------------------------------------------


_philox_uint32 = kernel(noise.philox_uint32_cpu)


def philox_uint32(out, seed, step, stream, offset=0):
    """Twin of reference.philox_uint32."""
    check_arrays(out=out)
    check_uint32_vector(out)
    k0, k1 = seed_key(seed)
    pick(_philox_uint32, out.size, PARALLEL_MIN_HEAVY)(out, np.uint32(k0), np.uint32(k1), np.int64(step),
                                                         np.int64(stream), np.int64(offset))


_corrupt = kernel(noise.corrupt_cpu)


def corrupt(out, x, mode, level, seed, step, stream, offset=0):
    """Twin of reference.corrupt."""
    check_arrays(out=out, x=x)
    check_same_shape(out, x)
    if mode not in (CORRUPTION_NONE, CORRUPTION_GAUSSIAN, CORRUPTION_MASKING, CORRUPTION_SALT_PEPPER):
        raise ValueError(f"unknown corruption mode {mode}")
    dt = x.dtype.type
    if mode == CORRUPTION_GAUSSIAN:
        # Philox words from the numba kernel, Box-Muller by NumPy's SIMD float32 log/sqrt/cos/sin:
        # ~10x faster than scalar libm calls from numba (measured), and the very functions of
        # the reference, so the noise is bit-identical to it.
        if x.size == 0:
            return
        start, stop = even_span(x.size, offset)
        words = np.empty(stop - start, np.uint32)
        philox_uint32(words, seed, step, stream, start)
        normal = normals_from_words(words)[offset - start: offset - start + x.size].astype(x.dtype, copy=False)
        np.multiply(normal, dt(level), out=normal)
        np.add(x.reshape(-1), normal, out=out.reshape(-1))
        return
    k0, k1 = seed_key(seed)
    pick(_corrupt, x.size, PARALLEL_MIN_HEAVY)(
        out, x, mode, np.float32(level), dt(0), dt(1), np.uint32(k0), np.uint32(k1), np.int64(step),
        np.int64(stream), np.int64(offset))


# ----------------------------------------------------------------------------------------
# Activations, bias + activation
# ----------------------------------------------------------------------------------------


_bias_act_forward = kernel(bias_act.bias_act_forward_cpu)
_bias_split = kernel(bias_act.bias_split_cpu)
# reassoc lets LLVM vectorise the float64 change sum (0.59 -> 0.25 ms, measured); the
# sigmoid's own arithmetic (one add, one divide) has nothing to reassociate.
_sigmoid_finish = kernel(bias_act.sigmoid_finish_cpu, fastmath={"reassoc"})


def bias_act_forward(y, z, b, act):
    """Twin of reference.bias_act_forward (y may be z)."""
    check_arrays(y=y, z=z, b=b)
    check_same_shape(y, z)
    check_columns(b, z, "bias")
    if act == "sigmoid":
        _bias_sigmoid(y, z, b, y, np.empty(0))
        return
    # tanh, softplus and silu call libm per element (no vector exp/tanh in numba): heavy, not cheap
    heavy = act in ("tanh", "softplus", "silu")
    pick(_bias_act_forward, z.size, PARALLEL_MIN_HEAVY if heavy else PARALLEL_MIN_CHEAP)(y, z, b, ACT_CODES[act])


def _bias_sigmoid(y, z, b, prev, change):
    """Sigmoid layers in three passes, so that exp runs in NumPy's SIMD code (kernels/bias_act.py):
    y = sigmoid(z + b), bit-identical to reference.sigmoid (same float32 operations, same
    NumPy exp); change (B,) receives sum_j |y - prev| per row unless it is empty."""
    e = np.empty_like(z)
    pick(_bias_split, z.size, PARALLEL_MIN_CHEAP)(y, e, z, b)
    np.exp(e, out=e)
    pick(_sigmoid_finish, z.size, PARALLEL_MIN_CHEAP)(y, change, e, prev, change.size > 0)


def bias_sigmoid_change(y, change, b, prev):
    """Twin of reference.bias_sigmoid_change."""
    check_arrays(y=y, change=change, b=b, prev=prev)
    check_same_shape(y, prev)
    check_columns(b, y, "bias")
    check_row_sums(change, y)
    if y.size:
        _bias_sigmoid(y, y, b, prev, change)


_bias_act_backward = kernel(bias_act.bias_act_backward_cpu)


def bias_act_backward(dz, db, dy, y, act):
    """Twin of reference.bias_act_backward."""
    check_arrays(dz=dz, db=db, dy=dy, y=y)
    check_same_shape(dz, dy, y)
    check_columns(db, dy, "db")
    pick(_bias_act_backward, dy.size, PARALLEL_MIN_CHEAP)(dz, db, dy, y, ACT_CODES[act])


# ----------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------


_neg_abs = kernel(loss.neg_abs_cpu)
_loss_finish = kernel(loss.loss_finish_cpu)
_row_sums = kernel(loss.row_sums_cpu, fastmath={"reassoc"})  # see loss.row_sums_cpu


def _loss(kind, dlogits, logits, targets, scale, total):
    check_arrays(dlogits=dlogits, logits=logits, targets=targets)
    check_same_shape(dlogits, logits, targets)
    if logits.ndim != 2:
        raise ValueError(f"losses take (B, D) arrays, got shape {logits.shape}")
    if total is not None:
        check_arrays(total=total)
        check_total(total)
    n = logits.size
    # dlogits doubles as the scratch for e = exp(-|z|), unless it is logits itself
    e = np.empty_like(logits) if np.may_share_memory(dlogits, logits) else dlogits
    pick(_neg_abs, n, PARALLEL_MIN_CHEAP)(e, logits)
    np.exp(e, out=e)
    if kind == LOSS_BCE:
        log_u = np.add(e, e.dtype.type(1))
        np.log(log_u, out=log_u)  # in place: one temporary per step, not two
    else:
        log_u = e
    terms = log_u if kind == LOSS_BCE else np.empty_like(logits)  # BCE: each term over its log
    pick(_loss_finish, n, PARALLEL_MIN_HEAVY)(dlogits, terms, e, logits, targets, log_u,
                                              logits.dtype.type(scale), kind)
    loss_sum = float(pick(_row_sums, n, PARALLEL_MIN_CHEAP)(terms))
    if total is None:
        return loss_sum
    total[0] = loss_sum
    return None


def sigmoid_bce_forward_backward(dlogits, logits, targets, scale, total=None):
    """Twin of reference.sigmoid_bce_forward_backward."""
    return _loss(LOSS_BCE, dlogits, logits, targets, scale, total)


def sigmoid_mse_forward_backward(dlogits, logits, targets, scale, total=None):
    """Twin of reference.sigmoid_mse_forward_backward."""
    return _loss(LOSS_MSE, dlogits, logits, targets, scale, total)


# ----------------------------------------------------------------------------------------
# Optimizers
# ----------------------------------------------------------------------------------------


_sgd = kernel(optim.sgd_cpu)


def sgd_update(params, grads, velocity, lr, momentum, nesterov, weight_decay, guard=None):
    """Twin of reference.sgd_update (the guard is read on the host: it lives there)."""
    check_arrays(params=params, grads=grads, velocity=velocity)
    check_same_shape(params, grads, velocity)
    if not guard_allows(guard):
        return
    pick(_sgd, params.size, PARALLEL_MIN_CHEAP)(
        params, grads, velocity, *sgd_scalars(params.dtype, lr, momentum, nesterov, weight_decay))


_adam = kernel(optim.adam_cpu)


def adam_update(params, grads, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, t, guard=None):
    """Twin of reference.adam_update (the guard is read on the host: it lives there)."""
    check_arrays(params=params, grads=grads, m=m, v=v)
    check_same_shape(params, grads, m, v)
    if not guard_allows(guard):
        return
    pick(_adam, params.size, PARALLEL_MIN_CHEAP)(
        params, grads, m, v, *adam_scalars(params.dtype, lr, beta1, beta2, eps, weight_decay, decoupled, t))


CACHED_KERNELS = ("philox_uint32", "corrupt", "bias_act_forward", "bias_split", "sigmoid_finish",
                  "bias_act_backward", "neg_abs", "loss_finish", "row_sums",
                  "sgd", "adam", "im2col", "col2im")


def cache_status():
    """{kernel name: number of compiled signatures in numba's on-disk cache}, or None per
    kernel if numba's cache layout cannot be read (it is not public API)."""
    import pickle

    status = {}
    for name in CACHED_KERNELS:  # the inline helpers compile into these, never on their own
        try:
            count = 0
            for dispatcher in globals()["_" + name]:  # serial and parallel
                index = dispatcher._cache._cache_file._index_path
                if os.path.exists(index):
                    with open(index, "rb") as f:
                        pickle.load(f)  # the source stamp comes first
                        count += len(pickle.loads(f.read()))
            status[name] = count
        except Exception:
            status[name] = None
    return status


# ----------------------------------------------------------------------------------------
# Convolution as a GEMM: im2col and col2im (NHWC; see kernels/conv.py)
# ----------------------------------------------------------------------------------------


_im2col = kernel(conv.im2col_cpu)


def im2col(cols, x, kh, kw, stride, pad):
    """Twin of reference.im2col (a copy: bit-identical)."""
    check_arrays(cols=cols, x=x)
    Ho, Wo = check_im2col(cols, x, kh, kw, stride, pad)
    pick(_im2col, cols.size, PARALLEL_MIN_HEAVY)(cols, x, kh, kw, stride, pad, Ho, Wo)  # index math per element


_col2im = kernel(conv.col2im_cpu)


def col2im(dx, dcols, kh, kw, stride, pad):
    """Twin of reference.col2im: a gather, each input pixel summing its entries in (i, j) order
    in the data dtype, so it is bit-identical to the reference (no atomics, no write races)."""
    check_arrays(dx=dx, dcols=dcols)
    Ho, Wo = check_im2col(dcols, dx, kh, kw, stride, pad)
    pick(_col2im, dx.size, PARALLEL_MIN_HEAVY)(dx, dcols, kh, kw, stride, pad, Ho, Wo)  # a gather per element


# Every kernel is made (none compiled or loaded yet: numba does that at the first call): drop
# cached ones compiled from other sources, wherever numba keeps them.
drop_stale_numba_cache("cpu", __name__, [d for name in CACHED_KERNELS for d in globals()["_" + name]])
