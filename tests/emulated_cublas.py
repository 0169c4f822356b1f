"""A host (NumPy) stand-in for ``cupy.cublas.gemm`` as of CuPy 14.2.0, for tests without a GPU.

``Backend.gemm_acc`` hands its CuPy arrays to ``cupy.cublas.gemm("T", "N", a, b, out=out, ...)``.
What can go wrong there is not the arithmetic but the bookkeeping: cuBLAS only sees raw
pointers, read column-major with leading dimensions, so CuPy has to turn each row-major or
column-major array into a pointer, a transpose flag and a leading dimension, sometimes swap
the operands, and copy what it cannot describe.  This module keeps that bookkeeping:

* ``gemm`` is CuPy's ``cupy/cublas.py:gemm`` (tag v14.2.0) line for line, on NumPy arrays,
  with the same branches, the same copies and the same (m, n, k, lda, ldb, ldc) it derives;
* ``sgemm_colmajor`` plays cuBLAS: it gets 1-D views of raw memory (``_device_ptr``: what
  ``a.data.ptr`` points at, up to the end of the allocation), reads them column-major with the
  leading dimensions it is given and writes C back into that memory.

So a wrong flag or leading dimension gives a wrong answer (or an error) here as on a GPU.
Only float32 and float64 (sgemm and dgemm) are emulated.  ``gemm`` records what it passed to
cuBLAS in ``LAST_CALL`` (which branch, the flags and leading dimensions), for tests.
"""
import numpy as np
from numpy.lib.stride_tricks import as_strided

CUBLAS_OP_N, CUBLAS_OP_T, CUBLAS_OP_C = 0, 1, 2  # cublasOperation_t (CuPy does 1 - trans on them)
LAST_CALL = {}
_byte_bounds = getattr(np.lib, "array_utils", np).byte_bounds  # numpy 2 moved it


def sgemm_colmajor(transa, transb, m, n, k, alpha, A_flat, lda, B_flat, ldb, beta, C_flat, ldc):
    """cuBLAS's sgemm/dgemm on the host: C = alpha op(A) op(B) + beta C, in C_flat's memory.

    A_flat, B_flat, C_flat: 1-D arrays standing for device pointers (element 0 is what the
    pointer points at).  Column-major: element (i, j) of a matrix with leading dimension ld is
    flat[i + j * ld].  op(A) is m x k (A itself m x k for CUBLAS_OP_N, k x m otherwise), op(B)
    is k x n, C is m x n.  beta == 0 ignores C's old content (NaN included), as BLAS does.
    Leading dimensions below what BLAS allows raise ValueError (CUBLAS_STATUS_INVALID_VALUE);
    reading or writing past the end of a buffer raises IndexError (an illegal address on a GPU).
    """
    dtype = C_flat.dtype
    if dtype not in (np.float32, np.float64) or A_flat.dtype != dtype or B_flat.dtype != dtype:
        raise TypeError(f"only sgemm/dgemm are emulated, got {A_flat.dtype}, {B_flat.dtype}, {dtype}")
    if transa not in (CUBLAS_OP_N, CUBLAS_OP_T, CUBLAS_OP_C) or transb not in (CUBLAS_OP_N, CUBLAS_OP_T, CUBLAS_OP_C):
        raise ValueError(f"CUBLAS_STATUS_INVALID_VALUE: transa={transa}, transb={transb}")
    a_rows, a_cols = (m, k) if transa == CUBLAS_OP_N else (k, m)
    b_rows, b_cols = (k, n) if transb == CUBLAS_OP_N else (n, k)
    if min(m, n, k) < 0 or lda < max(1, a_rows) or ldb < max(1, b_rows) or ldc < max(1, m):
        raise ValueError(f"CUBLAS_STATUS_INVALID_VALUE: m={m} n={n} k={k} lda={lda} ldb={ldb} ldc={ldc}")
    if m == 0 or n == 0:
        return
    A = _colmajor(A_flat, a_rows, a_cols, lda, writeable=False)
    B = _colmajor(B_flat, b_rows, b_cols, ldb, writeable=False)
    C = _colmajor(C_flat, m, n, ldc, writeable=True)
    op_a = A if transa == CUBLAS_OP_N else A.T  # OP_C is OP_T for real numbers
    op_b = B if transb == CUBLAS_OP_N else B.T
    alpha, beta = dtype.type(alpha), dtype.type(beta)
    if alpha == 0 or k == 0:  # BLAS does not read A and B then
        product = np.zeros((m, n), dtype)
    else:
        product = alpha * (op_a @ op_b)
    C[...] = product if beta == 0 else product + beta * C


def _colmajor(flat, rows, cols, ld, writeable):
    """The rows x cols column-major matrix with leading dimension ld at flat[0], as a view."""
    if flat.ndim != 1 or flat.strides[0] != flat.itemsize:
        raise ValueError("a device pointer stands for contiguous memory: pass a 1-D contiguous view")
    if rows and cols and (cols - 1) * ld + rows > flat.size:
        raise IndexError(f"a {rows} x {cols} matrix with ld={ld} needs {(cols - 1) * ld + rows} elements, "
                         f"the buffer holds {flat.size}")
    return as_strided(flat, (rows, cols), (flat.itemsize, ld * flat.itemsize), writeable=writeable)


def _device_ptr(a):
    """What cuBLAS gets for ``a.data.ptr``: the memory from a's first element to the end of the
    allocation a lives in (its outermost base array), as a 1-D view of a's dtype."""
    base = a
    while isinstance(base.base, np.ndarray):
        base = base.base
    start = a.__array_interface__["data"][0]
    end = _byte_bounds(base)[1]
    return as_strided(a, ((end - start) // a.itemsize,), (a.itemsize,))


# CuPy's contiguity flags (cupy/_core/core.pyx _update_c/f_contiguity, internal.get_c_contiguity),
# which ``a._c_contiguous`` / ``a._f_contiguous`` hold.  For 2-D arrays they agree with NumPy's
# flags (the self-test checks it); kept here so the branches below ask what CuPy asks.
def _get_c_contiguity(shape, strides, itemsize):
    if len(strides) == 0 or (len(strides) == 1 and strides[0] == itemsize):
        return True
    prev, index, st = -1, 0, 0
    for i, sh in enumerate(shape):
        if sh == 0:
            return True
        if sh == 1:
            continue
        st = strides[i]
        if prev == -1 or strides[prev] != sh * st:
            index += 1
        prev = i
    return index == 0 or (index == 1 and st == itemsize)


def _c_contiguous(a):
    return a.size == 0 or _get_c_contiguity(a.shape, a.strides, a.itemsize)


def _f_contiguous(a):
    if a.size == 0:
        return True
    if _c_contiguous(a):  # C-ordered: also F-ordered when at most one dimension is not 1
        return sum(s != 1 for s in a.shape) <= 1
    return _get_c_contiguity(a.shape[::-1], a.strides[::-1], a.itemsize)


# ---- cupy/cublas.py (v14.2.0), on NumPy arrays ----

def _trans_to_cublas_op(trans):
    if trans == "N" or trans == CUBLAS_OP_N:
        trans = CUBLAS_OP_N
    elif trans == "T" or trans == CUBLAS_OP_T:
        trans = CUBLAS_OP_T
    elif trans == "H" or trans == CUBLAS_OP_C:
        trans = CUBLAS_OP_C
    else:
        raise TypeError(f"invalid trans (actual: {trans})")
    return trans


def _decide_ld_and_trans(a, trans):
    """A contiguous array as cuBLAS can take it without a copy: F-ordered (r, c) is itself,
    column-major with ld = r; C-ordered (r, c) is, read column-major, its transpose (c, r) with
    ld = c, so the transpose flag flips.  F wins when both hold.  ld None: not describable."""
    ld = None
    if trans in (CUBLAS_OP_N, CUBLAS_OP_T):
        if _f_contiguous(a):
            ld = a.shape[0]
        elif _c_contiguous(a):
            ld = a.shape[1]
            trans = 1 - trans
    return ld, trans


def _change_order_if_necessary(a, lda):
    if lda is None:  # copy to F order; the flag stays as the caller gave it
        lda = a.shape[0]
        if not _f_contiguous(a):
            a = a.copy(order="F")
    return a, lda


def gemm(transa, transb, a, b, out=None, alpha=1.0, beta=0.0):
    """out = alpha * op(a) @ op(b) + beta * out, the way cupy.cublas.gemm (14.2.0) does it."""
    assert a.ndim == b.ndim == 2
    assert a.dtype == b.dtype
    dtype = a.dtype.char
    if dtype not in "fd":  # cupy: 'f' sgemm, 'd' dgemm, 'F' cgemm, 'D' zgemm, else TypeError
        raise TypeError(f"only float32 and float64 are emulated (dtype {a.dtype})")
    func = sgemm_colmajor  # cublas.sgemm / cublas.dgemm

    transa = _trans_to_cublas_op(transa)
    transb = _trans_to_cublas_op(transb)
    if transa == CUBLAS_OP_N:
        m, k = a.shape
    else:
        k, m = a.shape
    if transb == CUBLAS_OP_N:
        n = b.shape[1]
        assert b.shape[0] == k
    else:
        n = b.shape[0]
        assert b.shape[1] == k
    if out is None:
        out = np.empty((m, n), dtype=dtype, order="F")
        beta = 0.0
    else:
        assert out.ndim == 2
        assert out.shape == (m, n)
        assert out.dtype == dtype

    # _get_scalar_ptr: alpha and beta become host scalars of a's dtype (pointer mode HOST;
    # CuPy arrays as alpha/beta, pointer mode DEVICE, are not emulated)
    alpha = np.array(alpha, dtype=a.dtype)
    beta = np.array(beta, dtype=a.dtype)

    lda, transa = _decide_ld_and_trans(a, transa)
    ldb, transb = _decide_ld_and_trans(b, transb)
    if not (lda is None or ldb is None):
        if _f_contiguous(out):
            # func(handle, transa, transb, m, n, k, alpha_ptr, a.data.ptr, lda, b.data.ptr, ldb,
            #      beta_ptr, out.data.ptr, m)
            _record("out F-ordered", transa, transb, m, n, k, lda, ldb, m)
            func(transa, transb, m, n, k, alpha, _device_ptr(a), lda, _device_ptr(b), ldb,
                 beta, _device_ptr(out), m)
            return out
        elif _c_contiguous(out):
            # Computes out.T = alpha * b.T @ a.T + beta * out.T
            # func(handle, 1 - transb, 1 - transa, n, m, k, alpha_ptr, b.data.ptr, ldb,
            #      a.data.ptr, lda, beta_ptr, out.data.ptr, n)
            _record("out C-ordered, operands swapped", 1 - transb, 1 - transa, n, m, k, ldb, lda, n)
            func(1 - transb, 1 - transa, n, m, k, alpha, _device_ptr(b), ldb, _device_ptr(a), lda,
                 beta, _device_ptr(out), n)
            return out

    # a or b not contiguous (or op 'H'), or out neither C- nor F-ordered: copy to F order
    a, lda = _change_order_if_necessary(a, lda)
    b, ldb = _change_order_if_necessary(b, ldb)
    c = out
    if not _f_contiguous(out):
        c = out.copy(order="F")
    # func(handle, transa, transb, m, n, k, alpha_ptr, a.data.ptr, lda, b.data.ptr, ldb,
    #      beta_ptr, c.data.ptr, m)
    _record("copies", transa, transb, m, n, k, lda, ldb, m)
    func(transa, transb, m, n, k, alpha, _device_ptr(a), lda, _device_ptr(b), ldb,
         beta, _device_ptr(c), m)
    if not _f_contiguous(out):
        np.copyto(out, c)  # _core.elementwise_copy(c, out)
    return out


def _record(branch, transa, transb, m, n, k, lda, ldb, ldc):
    LAST_CALL.clear()
    LAST_CALL.update(branch=branch, transa=transa, transb=transb, m=m, n=n, k=k, lda=lda, ldb=ldb, ldc=ldc)
