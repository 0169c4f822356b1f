"""CPU twins of kernels/reference.py: numba @njit(cache=True), parallel over rows or blocks.

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

from .common import (LOSS_BCE, LOSS_MSE, adam_scalars, check_columns, check_contiguous, check_im2col,
                            check_row_sums, check_same_shape, check_total, drop_stale_numba_cache,
                            check_uint32_vector, guard_allows, sgd_scalars)
from . import scalar
from .philox import MASK32, philox4x32_10, seed_key
from .reference import (CORRUPTION_GAUSSIAN, CORRUPTION_MASKING, CORRUPTION_NONE,
                               CORRUPTION_SALT_PEPPER, even_span, normals_from_words)
from .scalar import ACT_CODES, LEAKY_RELU, RELU, SIGMOID, SILU, SOFTPLUS, TANH
ROW_BLOCK = 64  # rows per parallel task in the bias-gradient reduction (fixed: sets the sum order)

# GNU OpenMP's workers spin after each parallel region and starve OpenBLAS's GEMM threads
# on small machines (measured on 2 cores: 1.5k vs 12.7k training examples/s), so prefer
# numba's non-spinning workqueue layer unless the user chose one.  It does not allow two
# Python threads to run these kernels at once; set NUMBA_THREADING_LAYER=omp for that.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

drop_stale_numba_cache("cpu", __name__)  # before any kernel below is compiled or loaded

# The shared per-element math, compiled for the CPU (see kernels/scalar.py).
_inline = njit(inline="always", cache=True)
philox = _inline(philox4x32_10)
_uniform = _inline(scalar.uniform)
_act = _inline(scalar.act)
_act_grad = _inline(scalar.act_grad)
_sgd_element = _inline(scalar.sgd_element)
_adam_element = _inline(scalar.adam_element)


# Every kernel is compiled twice, serial and parallel: a parallel launch costs about 95 us
# with the workqueue layer (measured), more than a small problem takes, so each wrapper
# picks by size.  The serial copy gets its own qualified name so the two never share
# numba's on-disk cache entries.
PARALLEL_MIN_CHEAP = 1 << 18   # elements, for memory-bound ops (bias+activation, optimizers)
PARALLEL_MIN_HEAVY = 1 << 14   # elements, for ops with transcendental functions per element


def kernel(func, **flags):
    """func -> (serial, parallel) numba dispatchers of the same source (flags: e.g. fastmath)."""
    import types

    serial = types.FunctionType(func.__code__, func.__globals__, func.__name__ + "_serial",
                                func.__defaults__, func.__closure__)
    serial.__qualname__ = func.__qualname__ + "_serial"
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


CHUNK = 4096  # elements per parallel task in the RNG kernels


@njit(inline="always", cache=True)
def _fill_words(words, b0, nblocks, step, stream, k0, k1):
    """words[4k + q] = word q of Philox block b0 + k: a plain loop, so LLVM vectorises it."""
    for k in range(nblocks):
        b = b0 + k
        w0, w1, w2, w3 = philox(np.uint32(b & MASK32), np.uint32(b >> 32), np.uint32(step),
                                np.uint32(stream), k0, k1)
        words[4 * k] = w0
        words[4 * k + 1] = w1
        words[4 * k + 2] = w2
        words[4 * k + 3] = w3


def _philox_uint32(out, k0, k1, step, stream, offset):
    n = out.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        i0 = c * CHUNK
        i1 = min(i0 + CHUNK, n)
        b0 = (offset + i0) >> 2
        nblocks = ((offset + i1 - 1) >> 2) - b0 + 1
        words = np.empty(4 * nblocks, np.uint32)
        _fill_words(words, b0, nblocks, step, stream, k0, k1)
        # element i uses words[i + base]; the loops run over views from 0, because a loop index
        # with a runtime start keeps numba's negative-index checks, which stop vectorisation
        w = words[offset - 4 * b0 + i0:]
        o = out[i0:i1]
        for j in range(o.size):
            o[j] = w[j]


_philox_uint32 = kernel(_philox_uint32)


def philox_uint32(out, seed, step, stream, offset=0):
    """Twin of reference.philox_uint32."""
    check_arrays(out=out)
    check_uint32_vector(out)
    k0, k1 = seed_key(seed)
    pick(_philox_uint32, out.size, PARALLEL_MIN_HEAVY)(out, np.uint32(k0), np.uint32(k1), np.int64(step),
                                                         np.int64(stream), np.int64(offset))











def _corrupt(out, x, mode, level, zero, one, k0, k1, step, stream, offset):
    # Masking modes.  Two phases per chunk: draw the chunk's Philox words (vectorised), then
    # one branch-free loop per mode over the elements.  Element i is stream element offset + i.
    n = x.size
    xf = x.reshape(-1)
    of = out.reshape(-1)
    half = level * np.float32(0.5)
    for c in prange((n + CHUNK - 1) // CHUNK):
        i0 = c * CHUNK
        i1 = min(i0 + CHUNK, n)
        b0 = (offset + i0) >> 2
        nblocks = ((offset + i1 - 1) >> 2) - b0 + 1
        words = np.empty(4 * nblocks, np.uint32)
        _fill_words(words, b0, nblocks, step, stream, k0, k1)
        # element i uses words[i + offset - 4 b0]; views from 0, as in _philox_uint32
        w = words[offset - 4 * b0 + i0:]
        o = of[i0:i1]
        xs = xf[i0:i1]
        if mode == CORRUPTION_MASKING:
            for j in range(o.size):
                o[j] = zero if _uniform(w[j]) < level else xs[j]
        elif mode == CORRUPTION_SALT_PEPPER:
            for j in range(o.size):
                u = _uniform(w[j])
                o[j] = zero if u < half else (one if u < level else xs[j])
        else:
            for j in range(o.size):
                o[j] = xs[j]


_corrupt = kernel(_corrupt)


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
        noise = normals_from_words(words)[offset - start: offset - start + x.size].astype(x.dtype, copy=False)
        np.multiply(noise, dt(level), out=noise)
        np.add(x.reshape(-1), noise, out=out.reshape(-1))
        return
    k0, k1 = seed_key(seed)
    pick(_corrupt, x.size, PARALLEL_MIN_HEAVY)(
        out, x, mode, np.float32(level), dt(0), dt(1), np.uint32(k0), np.uint32(k1), np.int64(step),
        np.int64(stream), np.int64(offset))


# ----------------------------------------------------------------------------------------
# Activations, bias + activation
# ----------------------------------------------------------------------------------------
















@njit(inline="always", cache=True)
def _forward_row(y, z, b, i, a):
    # One loop per activation: the inner loop is branch-free, so LLVM vectorises it.  Sigmoid
    # layers never come here: bias_act_forward sends them to _bias_sigmoid (NumPy's SIMD exp).
    H = z.shape[1]
    one = z.dtype.type(1)
    if a == RELU:
        for j in range(H):
            y[i, j] = _act(RELU, z[i, j] + b[j], 0.0, one)
    elif a == LEAKY_RELU:
        for j in range(H):
            y[i, j] = _act(LEAKY_RELU, z[i, j] + b[j], 0.0, one)
    elif a == TANH:
        for j in range(H):
            y[i, j] = _act(TANH, z[i, j] + b[j], 0.0, one)
    elif a == SOFTPLUS:
        for j in range(H):
            y[i, j] = _act(SOFTPLUS, z[i, j] + b[j], 0.0, one)
    elif a == SILU:
        for j in range(H):
            y[i, j] = _act(SILU, z[i, j] + b[j], 0.0, one)
    else:
        for j in range(H):
            y[i, j] = z[i, j] + b[j]


def _bias_act_forward(y, z, b, a):
    for i in prange(z.shape[0]):
        _forward_row(y, z, b, i, a)


_bias_act_forward = kernel(_bias_act_forward)


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


# Sigmoid layers in three passes, so that exp runs in NumPy's SIMD code: numba has no vector
# exp (no SVML in the llvmlite wheels) and its scalar libm calls took 1.7 ms for 1,024 x 784
# values on 2 cores, the three passes 0.75 ms (measured; bench/NOTES.md, attempt 9).


def _bias_split(y, e, z, b):
    # y = z + b, e = -|z + b|: the argument of exp, never positive, so exp cannot overflow
    for i in prange(z.shape[0]):
        for j in range(z.shape[1]):
            v = z[i, j] + b[j]
            y[i, j] = v
            e[i, j] = -abs(v)


_bias_split = kernel(_bias_split)


def _sigmoid_finish(y, change, e, prev, with_change):
    # y holds z + b, e holds exp(-|z + b|): sigmoid as the reference writes it, 1/(1+e) where
    # z + b >= 0 and e/(1+e) below; then, for the chain, change[i] = sum_j |y_ij - prev_ij|.
    one = y.dtype.type(1)
    B, D = y.shape
    for i in prange(B):
        for j in range(D):
            ee = e[i, j]
            y[i, j] = (one if y[i, j] >= 0 else ee) / (one + ee)
        if with_change:
            acc = 0.0
            for j in range(D):
                acc += abs(np.float64(y[i, j]) - np.float64(prev[i, j]))
            change[i] = acc


# reassoc lets LLVM vectorise the float64 change sum (0.59 -> 0.25 ms, measured); the
# sigmoid's own arithmetic (one add, one divide) has nothing to reassociate.
_sigmoid_finish = kernel(_sigmoid_finish, fastmath={"reassoc"})


def _bias_sigmoid(y, z, b, prev, change):
    """y = sigmoid(z + b), bit-identical to reference.sigmoid (same float32 operations, same
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


@njit(inline="always", cache=True)
def _backward_row(dz, acc, dy, y, i, a):
    H = dy.shape[1]
    if a == RELU:
        for j in range(H):
            g = dy[i, j] * _act_grad(RELU, y[i, j])
            dz[i, j] = g
            acc[j] += g
    elif a == LEAKY_RELU:
        for j in range(H):
            g = dy[i, j] * _act_grad(LEAKY_RELU, y[i, j])
            dz[i, j] = g
            acc[j] += g
    elif a == TANH:
        for j in range(H):
            g = dy[i, j] * _act_grad(TANH, y[i, j])
            dz[i, j] = g
            acc[j] += g
    elif a == SIGMOID:
        for j in range(H):
            g = dy[i, j] * _act_grad(SIGMOID, y[i, j])
            dz[i, j] = g
            acc[j] += g
    elif a == SOFTPLUS:
        for j in range(H):
            g = dy[i, j] * _act_grad(SOFTPLUS, y[i, j])
            dz[i, j] = g
            acc[j] += g
    elif a == SILU:  # y holds the pre-activation here (kernels/activations.py: reads "z")
        one = dy.dtype.type(1)
        for j in range(H):
            g = dy[i, j] * _act_grad(SILU, y[i, j], 0.0, one)
            dz[i, j] = g
            acc[j] += g
    else:
        for j in range(H):
            g = dy[i, j]
            dz[i, j] = g
            acc[j] += g


def _bias_act_backward(dz, db, dy, y, a):
    B, H = dy.shape
    nblocks = (B + ROW_BLOCK - 1) // ROW_BLOCK
    partial = np.zeros((nblocks, H), np.float64)  # per block of rows: fixed, whatever the threads
    for k in prange(nblocks):
        for i in range(k * ROW_BLOCK, min((k + 1) * ROW_BLOCK, B)):
            _backward_row(dz, partial[k], dy, y, i, a)
    for j in range(H):
        total = 0.0
        for k in range(nblocks):  # blocks in order: the sum does not depend on the thread count
            total += partial[k, j]
        db[j] += total


_bias_act_backward = kernel(_bias_act_backward)


def bias_act_backward(dz, db, dy, y, act):
    """Twin of reference.bias_act_backward."""
    check_arrays(dz=dz, db=db, dy=dy, y=y)
    check_same_shape(dz, dy, y)
    check_columns(db, dy, "db")
    pick(_bias_act_backward, dy.size, PARALLEL_MIN_CHEAP)(dz, db, dy, y, ACT_CODES[act])


# ----------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------


# Like the sigmoid layers: exp (and BCE's log) run in NumPy's SIMD code between numba passes,
# 3.5 -> 0.9 ms for 1M BCE elements on 2 cores (measured; bench/NOTES.md, attempt 10).


def _neg_abs(out, z):
    # out = -|z|: exp only ever sees a non-positive argument, so it never overflows
    for i in prange(z.shape[0]):
        for j in range(z.shape[1]):
            out[i, j] = -abs(z[i, j])


_neg_abs = kernel(_neg_abs)


def _loss_finish(dlogits, terms, e_all, logits, targets, log_u, scale, kind):
    # e_all holds exp(-|z|), log_u holds log(1 + e) (BCE only; terms may be log_u).  Per
    # element, in the data's precision as the reference (typed constants keep float32 data in
    # float32: 0.9 -> 0.5 ms per million elements, measured): s = 1/(1+e) or e/(1+e), the
    # gradient, and the loss term, summed afterwards by _row_sums.
    B, D = logits.shape
    zero, one, two = logits.dtype.type(0), logits.dtype.type(1), logits.dtype.type(2)
    for i in prange(B):
        for j in range(D):
            z = logits[i, j]
            t = targets[i, j]
            e = e_all[i, j]
            u = one + e
            s = (one if z >= zero else e) / u
            if kind == LOSS_BCE:
                # log1p(e) by Kahan: log(u) e / (u - 1) undoes the rounding of u = 1 + e
                log1p_e = e if u == one else log_u[i, j] * (e / (u - one))
                terms[i, j] = max(z, zero) - z * t + log1p_e  # finite for any z
                dlogits[i, j] = (s - t) * scale
            else:
                r = s - t
                terms[i, j] = r * r
                dlogits[i, j] = two * r * (e / (u * u)) * scale  # s(1-s) = e/(1+e)^2, no cancellation


_loss_finish = kernel(_loss_finish)


def _row_sums(terms):
    # The loss sum in float64.  reassoc lets LLVM vectorise it (a serial chain of dependent
    # adds otherwise: 0.6 ms per million terms); only the rounding order of the sum changes.
    partial = np.zeros(terms.shape[0], np.float64)
    for i in prange(terms.shape[0]):
        acc = 0.0
        for j in range(terms.shape[1]):
            acc += terms[i, j]
        partial[i] = acc
    return partial.sum()


_row_sums = kernel(_row_sums, fastmath={"reassoc"})


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


def _sgd(p, g, vel, lr, momentum, nesterov, wd):
    for i in prange(p.size):
        p[i], vel[i] = _sgd_element(p[i], g[i], vel[i], lr, momentum, nesterov, wd)


_sgd = kernel(_sgd)


def sgd_update(params, grads, velocity, lr, momentum, nesterov, weight_decay, guard=None):
    """Twin of reference.sgd_update (the guard is read on the host: it lives there)."""
    check_arrays(params=params, grads=grads, velocity=velocity)
    check_same_shape(params, grads, velocity)
    if not guard_allows(guard):
        return
    pick(_sgd, params.size, PARALLEL_MIN_CHEAP)(
        params, grads, velocity, *sgd_scalars(params.dtype, lr, momentum, nesterov, weight_decay))


def _adam(p, g, m, v, lr, b1, one_minus_b1, b2, one_minus_b2, eps, wd, lr_wd, decoupled, c1, c2):
    for i in prange(p.size):
        p[i], m[i], v[i] = _adam_element(p[i], g[i], m[i], v[i], lr, b1, one_minus_b1, b2, one_minus_b2,
                                         eps, wd, lr_wd, decoupled, c1, c2)


_adam = kernel(_adam)


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
                  "sgd", "adam")


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
# Convolution as a GEMM: im2col and col2im (NHWC; see kernels/reference.py)
# ----------------------------------------------------------------------------------------


def _im2col(cols, x, kh, kw, stride, pad, Ho, Wo):
    B, H, W, C = x.shape
    for r in prange(B * Ho * Wo):  # one row of cols (an output pixel's window) per iteration
        b, rest = r // (Ho * Wo), r % (Ho * Wo)
        h0, w0 = (rest // Wo) * stride - pad, (rest % Wo) * stride - pad
        q = 0
        for i in range(kh):
            h = h0 + i
            for j in range(kw):
                w = w0 + j
                inside = 0 <= h < H and 0 <= w < W
                for c in range(C):
                    cols[r, q] = x[b, h, w, c] if inside else 0
                    q += 1


_im2col = kernel(_im2col)


def im2col(cols, x, kh, kw, stride, pad):
    """Twin of reference.im2col (a copy: bit-identical)."""
    check_arrays(cols=cols, x=x)
    Ho, Wo = check_im2col(cols, x, kh, kw, stride, pad)
    pick(_im2col, cols.size, PARALLEL_MIN_HEAVY)(cols, x, kh, kw, stride, pad, Ho, Wo)  # index math per element


def _col2im(dx, dcols, kh, kw, stride, pad, Ho, Wo):
    B, H, W, C = dx.shape
    for r in prange(B * H):  # one image row of dx per iteration: each pixel gathers its entries
        b, h = r // H, r % H
        for w in range(W):
            out = dx[b, h, w]  # (C,): every channel of the pixel at once (contiguous, vectorised)
            out[:] = 0
            for i in range(kh):  # (i, j) order, as the reference adds them
                t = h + pad - i
                if t < 0 or t % stride != 0 or t // stride >= Ho:
                    continue
                row0 = (b * Ho + t // stride) * Wo
                for j in range(kw):
                    u = w + pad - j
                    if u < 0 or u % stride != 0 or u // stride >= Wo:
                        continue
                    src = dcols[row0 + u // stride, (i * kw + j) * C:(i * kw + j + 1) * C]
                    for c in range(C):
                        out[c] += src[c]


_col2im = kernel(_col2im)


def col2im(dx, dcols, kh, kw, stride, pad):
    """Twin of reference.col2im: a gather, each input pixel summing its entries in (i, j) order
    in the data dtype, so it is bit-identical to the reference (no atomics, no write races)."""
    check_arrays(dx=dx, dcols=dcols)
    Ho, Wo = check_im2col(dcols, dx, kh, kw, stride, pad)
    pick(_col2im, dx.size, PARALLEL_MIN_HEAVY)(dx, dcols, kh, kw, stride, pad, Ho, Wo)  # a gather per element
