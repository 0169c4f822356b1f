"""NumPy reference for every fused op: the specification the fast twins are tested against.

Legend: B batch, D width of the layer (pixels for the loss), N flat length.
Conventions (shared with kernels/cpu.py and kernels/cuda.py, same signatures):
  * outputs first, then inputs, then scalars; outputs are written in place;
  * reductions (loss sums) accumulate in float64 and are returned as Python floats, or, given
    `total` (a (1,) float64 array), written to total[0] with nothing read back (the CUDA twin
    then needs no host sync);
  * optimizer updates take an optional `guard`, a (1,) float64 array holding the step's loss
    sum: when it is not finite the update is skipped (the CUDA twin decides on the device);
  * arrays are C-contiguous (the model only ever passes contiguous buffers).
"""
import numpy as np

from .activations import LEAKY_SLOPE, RECORDS, sigmoid  # noqa: F401  (the activations, declared once)
from .common import check_im2col, check_total, guard_allows
from .philox import philox_words_np

# ----------------------------------------------------------------------------------------
# Random numbers: uint32 words -> floats
# ----------------------------------------------------------------------------------------

TWO_M24 = np.float32(2.0**-24)


def uniform_from_words(words):
    """uint32 -> float32 in [0, 1): the top 24 bits times 2^-24 (exact in float32)."""
    return (words >> np.uint32(8)).astype(np.float32) * TWO_M24


def uniform_open_from_words(words):
    """uint32 -> float32 in (0, 1): (2 * top23 + 1) * 2^-24, so log() never sees 0."""
    return ((words >> np.uint32(9)).astype(np.float32) * np.float32(2) + np.float32(1)) * TWO_M24


def philox_uint32(out, seed, step, stream, offset=0):
    """out[k] = word (offset + k) of the Philox stream (seed, step, stream).  out: (N,) uint32"""
    out[...] = philox_words_np(out.size, seed, step, stream, offset)


def philox_uniform(n, seed, step, stream, offset=0):
    """Elements offset..offset+n-1 of a uniform [0, 1) stream. -> (n,) float32"""
    return uniform_from_words(philox_words_np(n, seed, step, stream, offset))


def normals_from_words(words):
    """uint32 words of stream elements 2p, 2p+1, ... (an even-aligned run of even length)
    -> float32 standard normals of the same elements, by Box-Muller.

    Elements 2p and 2p+1 share the open-interval uniforms (u1, u2) of words 2p, 2p+1:
    element 2p is r*cos(theta), element 2p+1 is r*sin(theta), r = sqrt(-2 log u1),
    theta = 2 pi u2.  Computed in float32, as the kernels do.
    """
    pairs = words.reshape(-1, 2)
    # In place, on contiguous halves: NumPy's SIMD float32 log/cos/sin need contiguous data,
    # and every large temporary costs page faults (measured: 1.4 ms instead of 0.2 for 400k).
    r = uniform_open_from_words(np.ascontiguousarray(pairs[:, 0]))
    theta = uniform_open_from_words(np.ascontiguousarray(pairs[:, 1]))
    np.log(r, out=r)
    np.multiply(np.float32(-2.0), r, out=r)
    np.sqrt(r, out=r)                                   # r = sqrt(-2 log u1)
    np.multiply(np.float32(2.0 * np.pi), theta, out=theta)
    z = np.empty((len(r), 2), np.float32)
    np.multiply(r, np.cos(theta), out=z[:, 0])
    np.multiply(r, np.sin(theta, out=theta), out=z[:, 1])
    return z.reshape(-1)


def even_span(n, offset):
    """The even-aligned run of stream elements covering offset .. offset+n-1: (start, stop)."""
    return offset - (offset & 1), offset + n + ((offset + n) & 1)


def philox_normal(n, seed, step, stream, offset=0):
    """Elements offset..offset+n-1 of a standard normal stream. -> (n,) float32"""
    if n == 0:
        return np.zeros(0, np.float32)
    start, stop = even_span(n, offset)
    z = normals_from_words(philox_words_np(stop - start, seed, step, stream, start))
    return z[offset - start: offset - start + n]


# ----------------------------------------------------------------------------------------
# Corruption: x~ = c(x), one op for every mode
# ----------------------------------------------------------------------------------------

CORRUPTION_NONE, CORRUPTION_GAUSSIAN, CORRUPTION_MASKING, CORRUPTION_SALT_PEPPER = 0, 1, 2, 3


def corrupt(out, x, mode, level, seed, step, stream, offset=0):
    """out = c(x), element j (flat index + offset) drawing word j of the Philox stream.

    out, x: (B, D) float; mode: CORRUPTION_*; level: sigma (gaussian) or p (others)
      gaussian     out = x + sigma * n,            n ~ N(0, 1)   (not clipped: Tweedie)
      masking      out = 0 if u < p else x          (zero a fraction p)
      salt_pepper  out = 0 if u < p/2, 1 if u < p, else x
    """
    n = x.size
    flat_x = x.reshape(-1)
    if mode == CORRUPTION_NONE:
        res = flat_x
    elif mode == CORRUPTION_GAUSSIAN:
        noise = philox_normal(n, seed, step, stream, offset).astype(x.dtype)
        res = flat_x + x.dtype.type(level) * noise
    else:
        u = philox_uniform(n, seed, step, stream, offset)
        p = np.float32(level)
        if mode == CORRUPTION_MASKING:
            res = np.where(u < p, x.dtype.type(0), flat_x)
        elif mode == CORRUPTION_SALT_PEPPER:
            res = np.where(u < p * np.float32(0.5), x.dtype.type(0),
                           np.where(u < p, x.dtype.type(1), flat_x))
        else:
            raise ValueError(f"unknown corruption mode {mode}")
    out.reshape(-1)[...] = res


# ----------------------------------------------------------------------------------------
# Activations: the records of kernels/activations.py, as (forward, backward) pairs
# ----------------------------------------------------------------------------------------

ACTIVATIONS = {a.name: (a.forward, a.backward) for a in RECORDS}


def bias_act_forward(y, z, b, act):
    """y = act(z + b), broadcasting b over rows.  y may be z (in place).

    y, z: (B, H); b: (H,); act: a key of ACTIVATIONS
    """
    y[...] = ACTIVATIONS[act][0](z + b)


def bias_act_backward(dz, db, dy, y, act):
    """dz = dy * act'(.) computed from y, what the activation's gradient reads: its output, or
    its pre-activation z + b for one that reads z (SiLU); db += sum over rows of dz.

    dz, dy, y: (B, H); db: (H,)
    """
    dz[...] = ACTIVATIONS[act][1](dy, y)
    db += dz.sum(axis=0, dtype=np.float64).astype(db.dtype)


def bias_sigmoid_change(y, change, b, prev):
    """The last layer of a sampling-chain step, in place: y = sigmoid(y + b), and how far
    each chain moved, in the same pass.

    y: (B, D) on entry the last layer's x @ W, on return the reconstruction sigmoid(x @ W + b);
    change: (B,) float64 output; b: (D,); prev: (B, D) the chain's state before this step
      change[i] = sum_j |y_ij - prev_ij|, the differences and the sum in float64
    """
    y[...] = sigmoid(y + b)
    change[...] = np.abs(y.astype(np.float64) - prev).sum(axis=1)


# ----------------------------------------------------------------------------------------
# Losses on logits: one pass gives the loss sum and the gradient
# ----------------------------------------------------------------------------------------


def _deliver(loss_sum, total):
    """A float64 loss sum -> returned as a Python float, or, given total ((1,) float64), stored
    in total[0] and None returned."""
    if total is None:
        return float(loss_sum)
    check_total(total)
    total[0] = loss_sum
    return None


def sigmoid_bce_forward_backward(dlogits, logits, targets, scale, total=None):
    """Binary cross-entropy of sigmoid(logits) against targets, and its gradient.

    dlogits, logits, targets: (B, D); scale: float (1/B for a batch mean); total: None or (1,) float64
    loss_ij  = max(z, 0) - z t + log1p(exp(-|z|))   (= -t log s - (1-t) log(1-s), s = sigmoid z)
    dlogits  = (sigmoid(z) - t) * scale
    -> sum of loss_ij over all elements, accumulated in float64 (in total[0] if given, else returned)
    """
    z, t = logits, targets
    # log1p(exp(-|z|)) never overflows: finite for |z| up to the float32 limit.
    loss = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
    dlogits[...] = (sigmoid(z) - t) * z.dtype.type(scale)
    return _deliver(np.sum(loss, dtype=np.float64), total)


def sigmoid_mse_forward_backward(dlogits, logits, targets, scale, total=None):
    """Squared error of sigmoid(logits) against targets (the paper's contrast), and gradient.

    dlogits, logits, targets: (B, D); scale: float; total: None or (1,) float64
    loss_ij = (s - t)^2, s = sigmoid(z);  dlogits = 2 (s - t) s (1 - s) * scale
    -> sum of loss_ij, accumulated in float64 (in total[0] if given, else returned)
    """
    e = np.exp(-np.abs(logits))
    s = np.where(logits >= 0, 1 / (1 + e), e / (1 + e))
    r = s - targets
    # sigmoid'(z) = s (1 - s) = e / (1 + e)^2, e = exp(-|z|): no cancellation in 1 - s near 1.
    dlogits[...] = 2 * r * (e / ((1 + e) * (1 + e))) * logits.dtype.type(scale)
    return _deliver(np.sum(r * r, dtype=np.float64), total)


# ----------------------------------------------------------------------------------------
# Optimizer updates: one call over the flat parameter / gradient / moment buffers
# ----------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------
# Convolution as a GEMM: im2col and its adjoint col2im, channels last (NHWC)
# ----------------------------------------------------------------------------------------
#
# A convolution of x (B, H, W, C) with a kh x kw x C x F kernel is cols @ W_flat, where row
# (b, ho, wo) of cols holds the window under output pixel (ho, wo), in (i, j, c) order:
#   cols[(b*Ho + ho)*Wo + wo, (i*kw + j)*C + c] = x[b, ho*s - p + i, wo*s - p + j, c]  (0 outside)
# Its backward to x is col2im, the adjoint: each input pixel sums the column entries that copied
# it.  col2im adds them in (i, j) order, in the data dtype, starting from 0: the CPU and CUDA
# twins gather in that same order, so the three agree bit for bit, whatever the launch.


def im2col(cols, x, kh, kw, stride, pad):
    """cols: (B*Ho*Wo, kh*kw*C) <- the windows of x: (B, H, W, C) (see above)."""
    Ho, Wo = check_im2col(cols, x, kh, kw, stride, pad)
    B, H, W, C = x.shape
    xp = np.zeros((B, H + 2 * pad, W + 2 * pad, C), x.dtype)
    xp[:, pad:pad + H, pad:pad + W] = x
    out = cols.reshape(B, Ho, Wo, kh, kw, C)
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, i, j, :] = xp[:, i:i + stride * (Ho - 1) + 1:stride, j:j + stride * (Wo - 1) + 1:stride]


def col2im(dx, dcols, kh, kw, stride, pad):
    """dx: (B, H, W, C) <- the adjoint of im2col applied to dcols: (B*Ho*Wo, kh*kw*C):
    dx[b, h, w, c] = sum over (i, j), in that order, of the entries of dcols that im2col copied
    from x[b, h, w, c]."""
    Ho, Wo = check_im2col(dcols, dx, kh, kw, stride, pad)
    B, H, W, C = dx.shape
    acc = np.zeros((B, H + 2 * pad, W + 2 * pad, C), dx.dtype)
    d = dcols.reshape(B, Ho, Wo, kh, kw, C)
    for i in range(kh):
        for j in range(kw):
            acc[:, i:i + stride * (Ho - 1) + 1:stride, j:j + stride * (Wo - 1) + 1:stride] += d[:, :, :, i, j, :]
    dx[...] = acc[:, pad:pad + H, pad:pad + W]
