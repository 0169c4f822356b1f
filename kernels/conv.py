"""Convolution as a GEMM: im2col and its adjoint col2im, channels last (NHWC), three twins.

A convolution of x (B, H, W, C) with a kh x kw x C x F kernel is cols @ W_flat, where row
(b, ho, wo) of cols holds the window under output pixel (ho, wo), in (i, j, c) order:
  cols[(b*Ho + ho)*Wo + wo, (i*kw + j)*C + c] = x[b, ho*s - p + i, wo*s - p + j, c]  (0 outside)
Its backward to x is col2im, the adjoint: each input pixel sums the column entries that copied
it.  col2im adds them in (i, j) order, in the data dtype, starting from 0: the CPU and CUDA
twins gather in that same order, so the three agree bit for bit, whatever the launch (no
atomics, no write races).

Each op: the NumPy reference (the specification), the CPU body (compiled by kernels/cpu.py:
`prange` becomes numba's parallel loop) and the CUDA body (compiled by kernels/cuda.py, one
thread per element written).
"""
import numpy as np

from .common import check_im2col, cuda, prange


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


def im2col_cpu(cols, x, kh, kw, stride, pad, Ho, Wo):
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


def im2col_cuda(cols, x, kh, kw, stride, pad, Ho, Wo):
    B, H, W, C = x.shape
    K = cols.shape[1]
    for k in range(cuda.grid(1), cols.size, cuda.gridsize(1)):
        r, q = k // K, k % K
        b, rest = r // (Ho * Wo), r % (Ho * Wo)
        i, jc = q // (kw * C), q % (kw * C)
        h = (rest // Wo) * stride - pad + i
        w = (rest % Wo) * stride - pad + jc // C
        if 0 <= h < H and 0 <= w < W:
            cols[r, q] = x[b, h, w, jc % C]
        else:
            cols[r, q] = 0


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


def col2im_cpu(dx, dcols, kh, kw, stride, pad, Ho, Wo):
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


def col2im_cuda(dx, dcols, kh, kw, stride, pad, Ho, Wo):
    B, H, W, C = dx.shape
    zero = dx.dtype.type(0)
    for k in range(cuda.grid(1), dx.size, cuda.gridsize(1)):  # one thread per pixel channel
        c = k % C
        w = (k // C) % W
        h = (k // (C * W)) % H
        b = k // (C * W * H)
        acc = zero
        for i in range(kh):  # (i, j) order, as the reference adds them
            t = h + pad - i
            if t >= 0 and t % stride == 0 and t // stride < Ho:
                row0 = (b * Ho + t // stride) * Wo
                for j in range(kw):
                    u = w + pad - j
                    if u >= 0 and u % stride == 0 and u // stride < Wo:
                        acc += dcols[row0 + u // stride, (i * kw + j) * C + c]
        dx[b, h, w, c] = acc
