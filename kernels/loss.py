"""Losses on logits: one pass gives the loss sum and the gradient, three twins.

Reductions accumulate in float64 and are returned as Python floats, or, given `total` (a (1,)
float64 array), written to total[0] with nothing read back (the CUDA twin then needs no host
sync).  Each element's loss and gradient are computed in the data dtype, as the reference does.

CPU: exp (and BCE's log) run in NumPy's SIMD code between numba passes (kernels/cpu.py's
_loss: neg_abs_cpu, np.exp, np.log, loss_finish_cpu, row_sums_cpu): 3.5 -> 0.9 ms for 1M BCE
elements on 2 cores (bench/NOTES.md, attempt 10).  CUDA: one launch, one block of LOSS_THREADS
threads per row summing in a fixed tree order, then the last block to finish adds the row
partials in row order (a ticket, no float atomics): the sum does not depend on the grid.
"""
import math

import numpy as np

from .activations import sigmoid
from .common import LOSS_BCE, check_total, cuda, float64, int32, prange

LOSS_THREADS = 128  # threads per row in the CUDA sum (fixed: sets its order); 32 in the simulator


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


# ---- CPU: three numba passes around NumPy's SIMD exp and log ----


def neg_abs_cpu(out, z):
    # out = -|z|: exp only ever sees a non-positive argument, so it never overflows
    for i in prange(z.shape[0]):
        for j in range(z.shape[1]):
            out[i, j] = -abs(z[i, j])


def loss_finish_cpu(dlogits, terms, e_all, logits, targets, log_u, scale, kind):
    # e_all holds exp(-|z|), log_u holds log(1 + e) (BCE only; terms may be log_u).  Per
    # element, in the data's precision as the reference (typed constants keep float32 data in
    # float32: 0.9 -> 0.5 ms per million elements, measured): s = 1/(1+e) or e/(1+e), the
    # gradient, and the loss term, summed afterwards by row_sums_cpu.
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


def row_sums_cpu(terms):
    # The loss sum in float64.  kernels/cpu.py compiles it with fastmath reassoc, which lets LLVM
    # vectorise it (a serial chain of dependent adds otherwise: 0.6 ms per million terms); only
    # the rounding order of the sum changes.
    partial = np.zeros(terms.shape[0], np.float64)
    for i in prange(terms.shape[0]):
        acc = 0.0
        for j in range(terms.shape[1]):
            acc += terms[i, j]
        partial[i] = acc
    return partial.sum()


# ---- CUDA: elementwise gradient + a deterministic float64 sum, in one launch ----


def block_sum_cuda(buf, tid):
    """Tree-sum buf[0:LOSS_THREADS] into buf[0] (fixed order)."""
    width = LOSS_THREADS // 2
    while width > 0:
        cuda.syncthreads()
        if tid < width:
            buf[tid] += buf[tid + width]
        width //= 2
    cuda.syncthreads()


def finish_cuda(partial, ticket, total, buf, last, tid):
    """The last block to finish adds the row partials in row order, into total[0].

    `last` is its own shared slot: the ticket must stay readable by every thread while
    thread 0 goes on to reuse buf.  The last block also puts the ticket back to 0, so the
    workspace serves the next launch without a memset.
    """
    cuda.threadfence()  # writer side: this block's partials are visible before it takes a ticket
    if tid == 0:
        last[0] = cuda.atomic.add(ticket, 0, 1) == cuda.gridDim.x - 1
    cuda.syncthreads()
    if last[0]:
        cuda.threadfence()  # reader side: order the partial loads after the ticket
        acc = 0.0
        for i in range(tid, partial.size, LOSS_THREADS):
            acc += partial[i]
        buf[tid] = acc
        block_sum_cuda(buf, tid)
        if tid == 0:
            total[0] = buf[0]
            ticket[0] = 0


def loss_rows_cuda(dlogits, logits, targets, scale, kind, partial, ticket, total):
    # Each element's loss and gradient in the data dtype, as the reference computes them; only
    # the sum is float64 (a float32 kernel converts and adds in float64, nothing else).
    buf = cuda.shared.array(LOSS_THREADS, float64)
    last = cuda.shared.array(1, int32)
    tid = cuda.threadIdx.x
    zero, one, two = logits.dtype.type(0), logits.dtype.type(1), logits.dtype.type(2)
    B, D = logits.shape
    for i in range(cuda.blockIdx.x, B, cuda.gridDim.x):
        acc = 0.0
        for j in range(tid, D, LOSS_THREADS):
            z = logits[i, j]
            t = targets[i, j]
            e = math.exp(-abs(z))  # one exp serves loss and sigmoid: never overflows
            s = one / (one + e) if z >= zero else e / (one + e)
            if kind == LOSS_BCE:
                acc += max(z, zero) - z * t + math.log1p(e)  # finite for any z
                dlogits[i, j] = (s - t) * scale
            else:
                r = s - t
                acc += r * r
                dlogits[i, j] = two * r * (e / ((one + e) * (one + e))) * scale  # s(1-s), no cancellation
        buf[tid] = acc
        block_sum_cuda(buf, tid)
        if tid == 0:
            partial[i] = buf[0]
    finish_cuda(partial, ticket, total, buf, last, tid)
