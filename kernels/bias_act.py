"""A layer's bias + activation, forward and backward, and the sampling chain's last layer
(bias + sigmoid + how far each chain moved), three twins.

The activations are declared once, in kernels/activations.py (the reference pairs) and
kernels/scalar.py (act / act_grad, the per-element math the compiled bodies share).

CPU: one loop per activation inside each row (forward_row_cpu, backward_row_cpu), so the inner
loop is branch-free and LLVM vectorises it.  Sigmoid layers run in three passes so that exp runs
in NumPy's SIMD code (bias_split_cpu, np.exp, sigmoid_finish_cpu): numba has no vector exp (no
SVML in the llvmlite wheels); its scalar libm calls took 1.7 ms for 1,024 x 784 values on 2
cores, the three passes 0.75 ms (bench/NOTES.md, attempt 9).

The bias gradient is summed in float64 over fixed blocks of ROW_BLOCK rows, each in row order,
then the blocks in order, by both compiled twins: the sum does not depend on the thread count or
the grid.  On CUDA one work item is (column tile, chunk): BIAS_COLS threads, one per column of
the tile, each sum their column over the chunk's rows into a float64 partial; the last block to
finish a tile's items (a ticket per tile) adds the tile's partials in chunk order into db.
"""
import numpy as np

from .activations import LEAKY_SLOPE, RECORDS, sigmoid
from .common import cuda, float64, int32, prange
from .loss import LOSS_THREADS, block_sum_cuda
from .scalar import LEAKY_RELU, RELU, SIGMOID, SILU, SOFTPLUS, TANH, act, act_grad
from .scalar import sigmoid as sigmoid_element

ACTIVATIONS = {a.name: (a.forward, a.backward) for a in RECORDS}
ROW_BLOCK = 64  # rows per block of the bias-gradient sum (fixed: sets the sum order)
BIAS_COLS = 32  # CUDA: columns per block, one warp, so each row's loads coalesce.  An item's 32
#                 float64 partials are 256 bytes, two whole 128-byte cache lines (CuPy allocations
#                 are 512-byte aligned): no line holds two items' partials, so a tile's last block
#                 cannot find a line in its SM's L1 that was cached before the tile was complete.


# ---- forward ----


def bias_act_forward(y, z, b, act):
    """y = act(z + b), broadcasting b over rows.  y may be z (in place).

    y, z: (B, H); b: (H,); act: a key of ACTIVATIONS
    """
    y[...] = ACTIVATIONS[act][0](z + b)


def forward_row_cpu(y, z, b, i, a):
    # One loop per activation: the inner loop is branch-free, so LLVM vectorises it.  Sigmoid
    # layers never come here: kernels/cpu.py sends them to the three sigmoid passes below.
    H = z.shape[1]
    one = z.dtype.type(1)
    if a == RELU:
        for j in range(H):
            y[i, j] = act(RELU, z[i, j] + b[j], 0.0, one)
    elif a == LEAKY_RELU:
        for j in range(H):
            y[i, j] = act(LEAKY_RELU, z[i, j] + b[j], 0.0, one)
    elif a == TANH:
        for j in range(H):
            y[i, j] = act(TANH, z[i, j] + b[j], 0.0, one)
    elif a == SOFTPLUS:
        for j in range(H):
            y[i, j] = act(SOFTPLUS, z[i, j] + b[j], 0.0, one)
    elif a == SILU:
        for j in range(H):
            y[i, j] = act(SILU, z[i, j] + b[j], 0.0, one)
    else:
        for j in range(H):
            y[i, j] = z[i, j] + b[j]


def bias_act_forward_cpu(y, z, b, a):
    for i in prange(z.shape[0]):
        forward_row_cpu(y, z, b, i, a)


def bias_split_cpu(y, e, z, b):
    # y = z + b, e = -|z + b|: the argument of exp, never positive, so exp cannot overflow
    for i in prange(z.shape[0]):
        for j in range(z.shape[1]):
            v = z[i, j] + b[j]
            y[i, j] = v
            e[i, j] = -abs(v)


def sigmoid_finish_cpu(y, change, e, prev, with_change):
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


def bias_act_forward_cuda(y, z, b, a, H):
    zero, one, slope = z.dtype.type(0), z.dtype.type(1), z.dtype.type(LEAKY_SLOPE)  # data-dtype math
    for k in range(cuda.grid(1), z.size, cuda.gridsize(1)):
        y[k] = act(a, z[k] + b[k % H], zero, one, slope)


def bias_act_inplace_cuda(y, b, a, H):
    zero, one, slope = y.dtype.type(0), y.dtype.type(1), y.dtype.type(LEAKY_SLOPE)
    for k in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        y[k] = act(a, y[k] + b[k % H], zero, one, slope)


# ---- backward ----


def bias_act_backward(dz, db, dy, y, act):
    """dz = dy * act'(.) computed from y, what the activation's gradient reads: its output, or
    its pre-activation z + b for one that reads z (SiLU); db += sum over rows of dz.

    dz, dy, y: (B, H); db: (H,)
    """
    dz[...] = ACTIVATIONS[act][1](dy, y)
    db += dz.sum(axis=0, dtype=np.float64).astype(db.dtype)


def backward_row_cpu(dz, acc, dy, y, i, a):
    H = dy.shape[1]
    if a == RELU:
        for j in range(H):
            g = dy[i, j] * act_grad(RELU, y[i, j])
            dz[i, j] = g
            acc[j] += g
    elif a == LEAKY_RELU:
        for j in range(H):
            g = dy[i, j] * act_grad(LEAKY_RELU, y[i, j])
            dz[i, j] = g
            acc[j] += g
    elif a == TANH:
        for j in range(H):
            g = dy[i, j] * act_grad(TANH, y[i, j])
            dz[i, j] = g
            acc[j] += g
    elif a == SIGMOID:
        for j in range(H):
            g = dy[i, j] * act_grad(SIGMOID, y[i, j])
            dz[i, j] = g
            acc[j] += g
    elif a == SOFTPLUS:
        for j in range(H):
            g = dy[i, j] * act_grad(SOFTPLUS, y[i, j])
            dz[i, j] = g
            acc[j] += g
    elif a == SILU:  # y holds the pre-activation here (kernels/activations.py: reads "z")
        one = dy.dtype.type(1)
        for j in range(H):
            g = dy[i, j] * act_grad(SILU, y[i, j], 0.0, one)
            dz[i, j] = g
            acc[j] += g
    else:
        for j in range(H):
            g = dy[i, j]
            dz[i, j] = g
            acc[j] += g


def bias_act_backward_cpu(dz, db, dy, y, a):
    B, H = dy.shape
    nblocks = (B + ROW_BLOCK - 1) // ROW_BLOCK
    partial = np.zeros((nblocks, H), np.float64)  # per block of rows: fixed, whatever the threads
    for k in prange(nblocks):
        for i in range(k * ROW_BLOCK, min((k + 1) * ROW_BLOCK, B)):
            backward_row_cpu(dz, partial[k], dy, y, i, a)
    for j in range(H):
        total = 0.0
        for k in range(nblocks):  # blocks in order: the sum does not depend on the thread count
            total += partial[k, j]
        db[j] += total


def bias_act_backward_cuda(dz, db, dy, y, a, partial, ticket):
    # partial: (tiles * chunks * cols,) float64, item = tile * chunks + chunk at item * cols;
    # ticket: (tiles,) int32, 0 between launches (each tile's last block resets its own).
    last = cuda.shared.array(1, int32)
    zero, one, slope = dy.dtype.type(0), dy.dtype.type(1), dy.dtype.type(LEAKY_SLOPE)  # data-dtype math
    B, H = dy.shape
    cols, lane = cuda.blockDim.x, cuda.threadIdx.x
    chunks = (B + ROW_BLOCK - 1) // ROW_BLOCK
    tiles = (H + cols - 1) // cols
    for item in range(cuda.blockIdx.x, tiles * chunks, cuda.gridDim.x):  # uniform per block
        tile = item // chunks
        j = tile * cols + lane
        if j < H:
            acc = np.float64(0)  # not 0.0: the simulator would add float32 terms in float32
            first = (item - tile * chunks) * ROW_BLOCK
            for i in range(first, min(first + ROW_BLOCK, B)):
                g = dy[i, j] * act_grad(a, y[i, j], zero, one, slope)
                dz[i, j] = g
                acc += g
            partial[item * cols + lane] = acc
        cuda.threadfence()  # writer side: the partials are visible before the ticket is taken
        cuda.syncthreads()
        if lane == 0:
            last[0] = cuda.atomic.add(ticket, tile, 1) == chunks - 1
        cuda.syncthreads()
        if last[0]:
            cuda.threadfence()  # reader side: order the partial loads after the ticket
            if j < H:
                total = np.float64(0)
                for k in range(tile * chunks, (tile + 1) * chunks):  # chunk order
                    total += partial[k * cols + lane]
                db[j] += total
            if lane == 0:
                ticket[tile] = 0  # ready for the next launch, without a memset
        cuda.syncthreads()  # every thread has read `last` before the next item rewrites it


# ---- the sampling chain's last layer ----


def bias_sigmoid_change(y, change, b, prev):
    """The last layer of a sampling-chain step, in place: y = sigmoid(y + b), and how far
    each chain moved, in the same pass.

    y: (B, D) on entry the last layer's x @ W, on return the reconstruction sigmoid(x @ W + b);
    change: (B,) float64 output; b: (D,); prev: (B, D) the chain's state before this step
      change[i] = sum_j |y_ij - prev_ij|, the differences and the sum in float64
    """
    y[...] = sigmoid(y + b)
    change[...] = np.abs(y.astype(np.float64) - prev).sum(axis=1)


# CPU: bias_split_cpu, np.exp, sigmoid_finish_cpu(with_change=True) (above).


def bias_sigmoid_change_cuda(y, change, b, prev):
    # One block per row (like the loss): each thread sums its columns, then a fixed-order tree.
    buf = cuda.shared.array(LOSS_THREADS, float64)
    tid = cuda.threadIdx.x
    zero, one = y.dtype.type(0), y.dtype.type(1)  # the sigmoid in the data dtype
    B, D = y.shape
    for i in range(cuda.blockIdx.x, B, cuda.gridDim.x):
        acc = 0.0
        for j in range(tid, D, LOSS_THREADS):
            y[i, j] = sigmoid_element(y[i, j] + b[j], zero, one)
            acc += abs(np.float64(y[i, j]) - np.float64(prev[i, j]))  # the stored (rounded) value
        buf[tid] = acc
        block_sum_cuda(buf, tid)
        if tid == 0:
            change[i] = buf[0]
