"""Self-test of tests/emulated_cublas.py, the NumPy model of cupy.cublas.gemm (CuPy 14.2.0)."""
import numpy as np
import pytest

from emulated_cublas import (CUBLAS_OP_N, CUBLAS_OP_T, LAST_CALL, _c_contiguous, _f_contiguous,
                             gemm, sgemm_colmajor)

TOL = {np.float32: 2e-6, np.float64: 1e-14}
SHAPES = [(5, 4, 3), (1, 4, 3), (5, 1, 3), (5, 4, 1), (1, 1, 3), (1, 4, 1), (5, 1, 1), (1, 1, 1)]  # (B, I, O)


def nonzero(rng, shape, dtype):
    """Random values of both signs, none of them near zero."""
    return (rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)).astype(dtype)


def make_out(rng, I, O, dtype, order, fill):
    """out (I, O): C-ordered, or F-ordered as the transpose view of a C-ordered (O, I) array."""
    out = np.zeros((I, O), dtype) if order == "C" else np.zeros((O, I), dtype).T
    out[...] = np.nan if fill == "nan" else nonzero(rng, (I, O), dtype)
    return out


def check(got, a, b, out0, beta, alpha=1.0):
    want = alpha * (a.astype(np.float64).T @ b.astype(np.float64)) + (beta * out0 if beta else 0)
    scale = abs(alpha) * (np.abs(a).T.astype(np.float64) @ np.abs(b)) + abs(beta) * np.abs(out0 if beta else 0)
    assert np.all(np.abs(got - want) <= TOL[a.dtype.type] * (scale + 1)), (got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("beta", [0.0, 1.0])
@pytest.mark.parametrize("B,I,O", SHAPES)
def test_gemm_acc_call(dtype, order, beta, B, I, O):
    """The call Backend.gemm_acc makes: out = a.T @ b (beta 0, NaN in out before) or out += a.T @ b."""
    rng = np.random.default_rng(B * 100 + I * 10 + O)
    a, b = nonzero(rng, (B, I), dtype), nonzero(rng, (B, O), dtype)
    out = make_out(rng, I, O, dtype, order, "nan" if beta == 0 else "values")
    out0, base = out.copy(), out.base
    assert gemm("T", "N", a, b, out=out, alpha=1.0, beta=beta) is out
    assert out.base is base and np.isfinite(out).all()  # written in place, no NaN left
    check(out, a, b, out0, beta)
    # contiguous operands: one cuBLAS call straight into out (F wins when out is both)
    assert LAST_CALL["branch"] == ("out F-ordered" if _f_contiguous(out) else "out C-ordered, operands swapped")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ["C", "F"])
def test_branch_details(dtype, order):
    """The flags and leading dimensions CuPy derives for a: (B, I), b: (B, O), both C-ordered."""
    rng = np.random.default_rng(1)
    B, I, O = 6, 4, 3
    a, b = nonzero(rng, (B, I), dtype), nonzero(rng, (B, O), dtype)
    out = make_out(rng, I, O, dtype, order, "values")
    gemm("T", "N", a, b, out=out, beta=0.0)
    if order == "F":  # a read column-major is a.T (ld I): 'T' flips to 'N'; b is b.T (ld O): 'N' -> 'T'
        want = dict(transa=CUBLAS_OP_N, transb=CUBLAS_OP_T, m=I, n=O, k=B, lda=I, ldb=O, ldc=I)
    else:  # out read column-major is out.T = b.T @ a: b first, flags flipped back, ldc = O
        want = dict(transa=CUBLAS_OP_N, transb=CUBLAS_OP_T, m=O, n=I, k=B, lda=O, ldb=I, ldc=O)
    assert {key: LAST_CALL[key] for key in want} == want


def test_branch_details_degenerate():
    """B = 1: a (1, I) and b (1, O) are both C- and F-ordered; CuPy takes them as F-ordered
    (ld 1, flags kept), and out (I, O) = (4, 1), also both, as F-ordered (ldc I)."""
    rng = np.random.default_rng(7)
    a, b = nonzero(rng, (1, 4), np.float32), nonzero(rng, (1, 1), np.float32)
    out = make_out(rng, 4, 1, np.float32, "C", "values")
    gemm("T", "N", a, b, out=out, beta=0.0)
    want = dict(branch="out F-ordered", transa=CUBLAS_OP_T, transb=CUBLAS_OP_N, m=4, n=1, k=1, lda=1, ldb=1, ldc=4)
    assert {key: LAST_CALL[key] for key in want} == want
    check(out, a, b, 0, 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("out_kind", ["C", "F", "strided"])
@pytest.mark.parametrize("beta", [0.0, 1.0])
def test_copies_for_non_contiguous(dtype, out_kind, beta):
    """Non-contiguous a (a column slice), b (every other row) or out: CuPy copies to F order
    and copies the result back into out."""
    rng = np.random.default_rng(2)
    B, I, O = 5, 4, 3
    a = nonzero(rng, (B, I + 2), dtype)[:, 1:I + 1]
    b = nonzero(rng, (2 * B, O), dtype)[::2]
    if out_kind == "strided":
        out = nonzero(rng, (I, 2 * O), dtype)[:, ::2]
    else:
        out = make_out(rng, I, O, dtype, out_kind, "values")
    if beta == 0:
        out[...] = np.nan
    out0 = out.copy()
    gemm("T", "N", a, b, out=out, alpha=-0.5, beta=beta)
    assert LAST_CALL["branch"] == "copies"
    check(out, a, b, out0, beta, alpha=-0.5)


def test_out_none():
    rng = np.random.default_rng(3)
    a, b = nonzero(rng, (5, 4), np.float32), nonzero(rng, (5, 3), np.float32)
    out = gemm("T", "N", a, b)
    assert out.flags.f_contiguous and out.dtype == np.float32
    check(out, a, b, 0, 0.0)


def test_views_at_an_offset():
    """Operands and out that start inside larger buffers: cuBLAS gets pointers past the start
    and must not touch the memory before or after out."""
    rng = np.random.default_rng(4)
    B, I, O = 5, 4, 3
    a = nonzero(rng, (B + 2, I), np.float64)[2:]  # C-ordered rows of a larger array
    b = nonzero(rng, (B + 1, O), np.float64)[1:]
    buf = np.full(I * O + 12, 42.0)
    out = buf[5:5 + I * O].reshape(O, I).T  # F-ordered
    gemm("T", "N", a, b, out=out, beta=0.0)
    check(out, a, b, 0, 0.0)
    assert (buf[:5] == 42.0).all() and (buf[5 + I * O:] == 42.0).all()


def colmajor_problem(rng, m, n, k, spare=0):
    """A (m x k), B (k x n), C (m x n) as column-major flat buffers with ld = rows,
    followed by `spare` extra elements each."""
    A, B, C = (nonzero(rng, shape, np.float64) for shape in [(m, k), (k, n), (m, n)])
    flat = [np.concatenate([M.ravel(order="F"), np.ones(spare)]) for M in (A, B, C)]
    return (A, B, C), flat


def test_sgemm_colmajor_model():
    rng = np.random.default_rng(5)
    m, n, k = 4, 3, 5
    (A, B, C), (Af, Bf, Cf) = colmajor_problem(rng, m, n, k)
    sgemm_colmajor(CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, 2.0, Af, m, Bf, k, 1.0, Cf, m)
    np.testing.assert_allclose(Cf.reshape(n, m).T, 2.0 * A @ B + C, rtol=1e-14)
    # op 'T': the memory of A.T (k x m, ld k) read transposed is A again
    C_t = nonzero(rng, m * n, np.float64)
    sgemm_colmajor(CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, 1.0, A.T.ravel(order="F"), k, Bf, k, 0.0, C_t, m)
    np.testing.assert_allclose(C_t.reshape(n, m).T, A @ B, rtol=1e-14)


def test_wrong_leading_dimension_is_caught():
    rng = np.random.default_rng(6)
    m, n, k = 4, 3, 5
    (A, B, C), (Af, Bf, Cf) = colmajor_problem(rng, m, n, k, spare=m * k)
    for lda, ldb, ldc in [(m - 1, k, m), (m, k - 1, m), (m, k, m - 1)]:  # below what BLAS allows
        with pytest.raises(ValueError, match="INVALID_VALUE"):
            sgemm_colmajor(CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, 1.0, Af, lda, Bf, ldb, 0.0, Cf.copy(), ldc)
    # allowed by BLAS but wrong for this memory: reads the wrong elements
    C_wrong = Cf.copy()
    sgemm_colmajor(CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, 1.0, Af, m + 1, Bf, k, 0.0, C_wrong, m)
    assert not np.allclose(C_wrong[:m * n].reshape(n, m).T, A @ B)
    # too large for the buffer: an illegal address on a GPU
    with pytest.raises(IndexError):
        sgemm_colmajor(CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, 1.0, Af, 3 * m, Bf, k, 0.0, Cf.copy(), m)


def test_contiguity_flags_match_numpy():
    """CuPy's 2-D contiguity rules, as ported, agree with NumPy's flags."""
    x = np.arange(120, dtype=np.float32)
    for shape in [(4, 5), (1, 5), (4, 1), (1, 1), (0, 3)]:
        for view in [x[:20].reshape(4, 5), x[:20].reshape(5, 4).T, x.reshape(6, 20)[::2, 1:6], x[::3][:20].reshape(4, 5)]:
            v = view[:shape[0], :shape[1]]
            assert (_c_contiguous(v), _f_contiguous(v)) == (v.flags.c_contiguous, v.flags.f_contiguous), (shape, v.strides)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("B,I,O", SHAPES)
def test_backend_gemm_acc_through_the_emulated_cublas(dtype, order, accumulate, B, I, O):
    """Backend.gemm_acc itself, as the CUDA backend calls cupy.cublas.gemm, with the emulation in
    its place (Backend.gemm): the same results as the host path, C- or F-ordered out (a tied
    decoder's dW is a transpose view), beta 0 over NaN and beta 1, every dimension down to 1."""
    import tinydae.kernels.reference as ref
    from tinydae.backend import Backend

    calls = []

    def counting_gemm(*args, **kw):
        calls.append(kw["beta"])
        return gemm(*args, **kw)

    backend = Backend("cupy-emulated", np, ref, "emulated cuBLAS", gemm=counting_gemm)
    rng = np.random.default_rng(B * 100 + I * 10 + O + 7)
    a, b = nonzero(rng, (B, I), dtype), nonzero(rng, (B, O), dtype)
    out = make_out(rng, I, O, dtype, order, "values" if accumulate else "nan")
    out0 = out.copy()
    backend.gemm_acc(a, b, out, accumulate=accumulate)
    assert calls == [1.0 if accumulate else 0.0]  # one cuBLAS call, the right beta
    check(out, a, b, out0, 1.0 if accumulate else 0.0)
    strided = np.zeros((I, 2 * O), dtype)[:, ::2]  # neither C- nor F-ordered (O > 1): the host path
    if O > 1:
        backend.gemm_acc(a, b, strided, accumulate=False)
        assert len(calls) == 1
        check(strided, a, b, strided * 0, 0.0)
