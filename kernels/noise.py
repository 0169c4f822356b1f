"""Random words, and corruption x~ = c(x), three twins.

Every random draw is element j of a Philox4x32-10 stream keyed by (seed, step, stream)
(kernels/philox.py): word j is word j & 3 of counter block j >> 2, so any slice of a stream can
be drawn by itself, and the twins draw exactly the reference's words whatever their launch.

CPU: per chunk of CHUNK elements, the chunk's Philox words first (a plain loop that LLVM
vectorises), then one branch-free loop per mode.  Gaussian noise takes the words from the CPU
kernel and Box-Muller from NumPy's SIMD float32 log/sqrt/cos/sin (kernels/cpu.py: ~10x faster
than scalar libm calls from numba, and bit-identical to the reference).  CUDA: one thread per
block of four stream elements.
"""
import math

import numpy as np

from .common import cuda, prange
from .philox import MASK32, philox_words_np
from .philox import philox4x32_10 as philox
from .scalar import uniform

CHUNK = 4096  # elements per parallel task in the CPU bodies
HALF = np.float32(0.5)

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


# ---- the CPU bodies ----


def fill_words_cpu(words, b0, nblocks, step, stream, k0, k1):
    """words[4k + q] = word q of Philox block b0 + k: a plain loop, so LLVM vectorises it."""
    for k in range(nblocks):
        b = b0 + k
        w0, w1, w2, w3 = philox(np.uint32(b & MASK32), np.uint32(b >> 32), np.uint32(step),
                                np.uint32(stream), k0, k1)
        words[4 * k] = w0
        words[4 * k + 1] = w1
        words[4 * k + 2] = w2
        words[4 * k + 3] = w3


def philox_uint32_cpu(out, k0, k1, step, stream, offset):
    n = out.size
    for c in prange((n + CHUNK - 1) // CHUNK):
        i0 = c * CHUNK
        i1 = min(i0 + CHUNK, n)
        b0 = (offset + i0) >> 2
        nblocks = ((offset + i1 - 1) >> 2) - b0 + 1
        words = np.empty(4 * nblocks, np.uint32)
        fill_words_cpu(words, b0, nblocks, step, stream, k0, k1)
        # element i uses words[i + base]; the loops run over views from 0, because a loop index
        # with a runtime start keeps numba's negative-index checks, which stop vectorisation
        w = words[offset - 4 * b0 + i0:]
        o = out[i0:i1]
        for j in range(o.size):
            o[j] = w[j]


def corrupt_cpu(out, x, mode, level, zero, one, k0, k1, step, stream, offset):
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
        fill_words_cpu(words, b0, nblocks, step, stream, k0, k1)
        # element i uses words[i + offset - 4 b0]; views from 0, as in philox_uint32_cpu
        w = words[offset - 4 * b0 + i0:]
        o = of[i0:i1]
        xs = xf[i0:i1]
        if mode == CORRUPTION_MASKING:
            for j in range(o.size):
                o[j] = zero if uniform(w[j]) < level else xs[j]
        elif mode == CORRUPTION_SALT_PEPPER:
            for j in range(o.size):
                u = uniform(w[j])
                o[j] = zero if u < half else (one if u < level else xs[j])
        else:
            for j in range(o.size):
                o[j] = xs[j]


# ---- the CUDA bodies: one thread per block of four stream elements ----


def philox_uint32_cuda(out, k0, k1, step, stream, offset):
    for k in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        j = offset + k
        block = j >> 2
        words = philox(np.uint32(block & MASK32), np.uint32(block >> 32), np.uint32(step),
                       np.uint32(stream), k0, k1)
        out[k] = words[j & 3]


def sincospif(x):
    """(sin(pi x), cos(pi x)) in float32: libdevice's sincospif on a GPU (kernels/cuda.py
    rebinds it); this plain version serves the simulator, whose libdevice functions are stubs."""
    return np.float32(math.sin(math.pi * x)), np.float32(math.cos(math.pi * x))


def box_muller_cuda(w1, w2):
    """scalar.box_muller, but cos and sin of 2 pi u2 as cospi and sinpi of 2 u2 (exact in
    float32): libdevice's cosf/sinf carry a Payne-Hanek slow path for huge arguments, with
    a 28-byte local array and f64 arithmetic; sincospif reduces its argument exactly and has
    neither.  Agrees with the reference's cos(fl(2 pi u2)) to a few float32 ulp."""
    u1 = (np.float32(w1 >> np.uint32(9)) * np.float32(2.0) + np.float32(1.0)) * np.float32(2.0**-24)
    u2 = (np.float32(w2 >> np.uint32(9)) * np.float32(2.0) + np.float32(1.0)) * np.float32(2.0**-24)
    r = math.sqrt(np.float32(-2.0) * math.log(u1))
    s, c = sincospif(u2 * np.float32(2.0))
    return r * c, r * s


def noisy_cuda(out, x, i, n, noise, level):
    if 0 <= i < n:
        out[i] = x[i] + level * noise


def masked_cuda(out, x, i, n, w, mode, p):
    if 0 <= i < n:
        if mode == CORRUPTION_MASKING:
            out[i] = 0 if uniform(w) < p else x[i]
        elif mode == CORRUPTION_SALT_PEPPER:
            u = uniform(w)
            out[i] = 0 if u < p * HALF else (1 if u < p else x[i])
        else:
            out[i] = x[i]


def corrupt_cuda(out, x, mode, level, k0, k1, step, stream, offset, first, nblocks):
    # The four words are named, never indexed by a loop variable: an indexed tuple would
    # live in local memory (ptxas: a 32-byte stack frame per thread).
    n = x.size
    p = np.float32(level)  # masks compare float32 uniforms with the float32 level, as the reference
    for bi in range(cuda.grid(1), nblocks, cuda.gridsize(1)):
        block = first + bi
        w0, w1, w2, w3 = philox(np.uint32(block & MASK32), np.uint32(block >> 32), np.uint32(step),
                                np.uint32(stream), k0, k1)
        i = block * 4 - offset  # the flat index of the block's first element
        if mode == CORRUPTION_GAUSSIAN:  # words (0, 1) feed elements 0, 1; (2, 3) feed 2, 3
            n0, n1 = box_muller_cuda(w0, w1)
            n2, n3 = box_muller_cuda(w2, w3)
            noisy_cuda(out, x, i, n, n0, level)
            noisy_cuda(out, x, i + 1, n, n1, level)
            noisy_cuda(out, x, i + 2, n, n2, level)
            noisy_cuda(out, x, i + 3, n, n3, level)
        else:
            masked_cuda(out, x, i, n, w0, mode, p)
            masked_cuda(out, x, i + 1, n, w1, mode, p)
            masked_cuda(out, x, i + 2, n, w2, mode, p)
            masked_cuda(out, x, i + 3, n, w3, mode, p)
