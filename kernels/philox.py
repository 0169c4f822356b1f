"""Philox4x32-10: the counter-based generator behind every random draw in tinydae.

Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3" (SC'11),
as implemented in Random123. A draw is a pure function of (counter, key): no state,
so any element of any stream can be computed independently, on any backend.

tinydae's layout (DESIGN.md, "Random numbers"):
  key     = (seed & 0xffffffff, seed >> 32)
  counter = (block & 0xffffffff, block >> 32, step, stream)
where element j of a stream uses word j % 4 of block j // 4.  One Philox call
therefore serves four consecutive elements.

Two versions of the same round function live here:
  philox4x32_10      scalar, numba-compilable (njit and cuda.jit device function)
  philox4x32_10_np   vectorised NumPy, used by the references (kernels/noise.py)
"""
import numpy as np

PHILOX_M0 = 0xD2511F53  # round multipliers
PHILOX_M1 = 0xCD9E8D57
PHILOX_W0 = 0x9E3779B9  # key schedule increments (golden ratio, sqrt(3) - 1)
PHILOX_W1 = 0xBB67AE85
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """One Philox4x32-10 block: four uint32 counter words, two key words -> four words.

    Written with explicit uint32/uint64 types so numba compiles it identically for
    the CPU and for CUDA (mixing signed and unsigned would silently go float64).
    """
    mask = np.uint64(MASK32)
    shift = np.uint64(32)
    c0 = np.uint32(c0)
    c1 = np.uint32(c1)
    c2 = np.uint32(c2)
    c3 = np.uint32(c3)
    k0 = np.uint32(k0)
    k1 = np.uint32(k1)
    for _ in range(PHILOX_ROUNDS):
        # 32x32 -> 64-bit products give the (hi, lo) halves the round needs.
        p0 = np.uint64(PHILOX_M0) * np.uint64(c0)
        p1 = np.uint64(PHILOX_M1) * np.uint64(c2)
        hi0 = np.uint32(p0 >> shift)
        lo0 = np.uint32(p0 & mask)
        hi1 = np.uint32(p1 >> shift)
        lo1 = np.uint32(p1 & mask)
        # numba widens uint32 ^ uint32 to uint64: cast back so every word stays uint32.
        c0, c1, c2, c3 = np.uint32(hi1 ^ c1 ^ k0), lo1, np.uint32(hi0 ^ c3 ^ k1), lo0
        # Bump the key with 64-bit arithmetic and mask: uint32 wrap-around, no warnings.
        k0 = np.uint32((np.uint64(k0) + np.uint64(PHILOX_W0)) & mask)
        k1 = np.uint32((np.uint64(k1) + np.uint64(PHILOX_W1)) & mask)
    return c0, c1, c2, c3


def philox4x32_10_np(counter, key):
    """Vectorised Philox4x32-10.

    counter: (4, N) uint32, key: (2,) uint32 -> (4, N) uint32
    """
    c = [np.asarray(w, dtype=np.uint64) for w in counter]
    k0 = np.uint64(int(key[0]) & MASK32)
    k1 = np.uint64(int(key[1]) & MASK32)
    mask = np.uint64(MASK32)
    shift = np.uint64(32)
    for _ in range(PHILOX_ROUNDS):
        p0 = np.uint64(PHILOX_M0) * c[0]
        p1 = np.uint64(PHILOX_M1) * c[2]
        c = [(p1 >> shift) ^ c[1] ^ k0, p1 & mask, (p0 >> shift) ^ c[3] ^ k1, p0 & mask]
        k0 = (k0 + np.uint64(PHILOX_W0)) & mask
        k1 = (k1 + np.uint64(PHILOX_W1)) & mask
    return np.stack(c).astype(np.uint32)


def seed_key(seed):
    """seed (int, 0 <= seed < 2**64) -> Philox key words (k0, k1)."""
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return seed & MASK32, (seed >> 32) & MASK32


def philox_words_np(n, seed, step, stream, offset=0):
    """Elements offset .. offset+n-1 of stream `stream` at `step`, as uint32.

    -> (n,) uint32
    """
    if not 0 <= int(step) <= MASK32:
        raise ValueError(f"step must be in [0, 2**32), got {step}")
    j = np.arange(offset, offset + n, dtype=np.uint64)
    first = offset >> 2
    nblocks = ((offset + n - 1) >> 2) - first + 1 if n else 0
    b = np.arange(first, first + nblocks, dtype=np.uint64)
    counter = np.stack([
        b & np.uint64(MASK32),
        b >> np.uint64(32),
        np.full(nblocks, int(step), np.uint64),
        np.full(nblocks, int(stream), np.uint64),
    ])
    words = philox4x32_10_np(counter, seed_key(seed))  # (4, nblocks)
    return words[(j & np.uint64(3)).astype(np.intp), ((j >> np.uint64(2)) - np.uint64(first)).astype(np.intp)]
