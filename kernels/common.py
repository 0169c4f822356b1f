"""What the CPU and CUDA twins share: their wrappers' argument checks and scalar preparation,
numba's on-disk cache stamp (drop_stale_numba_cache), and how an op module's kernel bodies are
compiled (the placeholders prange / cuda and rebind; see the section at the end).

Scalars are cast to the arrays' dtype before they reach a kernel, so float32 arrays are
updated with float32 arithmetic, as NumPy does in the reference (a Python float would make
numba compute in float64 and round differently).
"""

import glob
import hashlib
import math
import os

LOSS_BCE, LOSS_MSE = 0, 1
OP_MODULES = ("noise.py", "bias_act.py", "loss.py", "optim.py", "conv.py")  # reference + twins' bodies
KERNEL_SOURCES = ("scalar.py", "philox.py", "common.py", "reference.py", "activations.py") + OP_MODULES


def drop_stale_numba_cache(module, importer=None, dispatchers=()):
    """numba's on-disk cache watches only the file that defines a kernel's body (its op module),
    but the kernels that kernels/cpu.py and kernels/cuda.py compile inline functions and
    constants from the other files, and take names from the backend module itself.
    Drop the module's cached kernels when those files change (best effort), in
    kernels/__pycache__ (where numba puts them for a writable checkout) and wherever numba's
    cache locator put the given dispatchers' (NUMBA_CACHE_DIR, or a user-wide folder for a
    read-only install): call it after the dispatchers are made and before their first call.

    importer: the module's import name (its __name__).  numba keys its cache by source file, not
    by module name, and a cached kernel refers to the module it was compiled under: one cached
    while the file was imported as `kernels.cpu` (from the checkout's root, or a tinydae from
    before the `tinydae.kernels` rename) crashed a later `tinydae.kernels.cpu` run with
    ModuleNotFoundError: No module named 'kernels'.  The name is part of the stamp, so such an
    entry is dropped and the kernels compiled again instead."""
    here = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256(f"imported as {importer}\n".encode())
    for name in KERNEL_SOURCES + (f"{module}.py",):  # the backend: its flags and the names it binds
        with open(os.path.join(here, name), "rb") as f:
            digest.update(f.read())
    folders = {os.path.join(here, "__pycache__")}
    for d in dispatchers:
        try:  # numba's cache locator (not public API: a missing attribute only skips the folder)
            folders.add(d._cache._cache_path)
        except AttributeError:
            pass
    for cache_dir in sorted(folders):
        stamp = os.path.join(cache_dir, f"{module}.sources-sha256")
        try:
            with open(stamp) as f:
                if f.read() == digest.hexdigest():
                    continue
        except OSError:
            pass
        try:
            for path in cache_files(module, cache_dir):
                os.remove(path)
            os.makedirs(cache_dir, exist_ok=True)
            with open(stamp, "w") as f:
                f.write(digest.hexdigest())
        except OSError:
            pass  # read-only: numba then caches elsewhere, or not at all


def cache_files(module, cache_dir):
    """The backend's numba cache files: its bodies are named <op>.<body>_<module>[_serial] (and
    <module>.<kernel> before kernels/ was organised by op)."""
    found = []
    for pattern in (f"*.*_{module}-*.nb[ic]", f"*.*_{module}_serial-*.nb[ic]", f"{module}.*.nb[ic]"):
        found += glob.glob(os.path.join(cache_dir, pattern))
    return sorted(set(found))


def check_contiguous(arrays, accepted, kind):
    """Kernels index flat memory: every array must be of the twin's kind and C-contiguous."""
    for name, a in arrays.items():
        if not accepted(a):
            raise TypeError(f"{name}: expected {kind}, got {type(a).__name__}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{name}: kernels need C-contiguous arrays; pass xp.ascontiguousarray({name})")


def check_same_shape(*arrays):
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"arrays must have one shape, got {sorted(shapes)}")


def check_columns(vector, matrix, name):
    if tuple(vector.shape) != (matrix.shape[1],):
        raise ValueError(f"{name} shape {tuple(vector.shape)} does not match {matrix.shape[1]} columns")


def check_row_sums(sums, matrix):
    if sums.dtype != "float64" or tuple(sums.shape) != (matrix.shape[0],):
        raise ValueError(f"row sums must be a float64 array of shape ({matrix.shape[0]},), "
                         f"got {sums.dtype} {tuple(sums.shape)}")


def check_total(total, name="total"):
    """A one-element float64 array: a loss sum written on the device, or an update's guard."""
    if total.dtype != "float64" or tuple(total.shape) != (1,):
        raise ValueError(f"{name} must be a float64 array of shape (1,), got {total.dtype} {tuple(total.shape)}")


def guard_allows(guard):
    """Host-side twin of the CUDA updates' guard: None, or a (1,) float64 array holding the
    step's loss sum; False when that sum is not finite (the update must then be skipped).
    The reference and CPU twins read it directly: their arrays already live on the host."""
    if guard is None:
        return True
    check_total(guard, "guard")
    return math.isfinite(guard[0])


def check_uint32_vector(out):
    if out.dtype != "uint32" or out.ndim != 1:
        raise ValueError(f"out must be a 1-D uint32 array, got {out.dtype} {tuple(out.shape)}")


def sgd_scalars(dtype, lr, momentum, nesterov, weight_decay):
    """-> (lr, momentum, nesterov, weight_decay) in `dtype` (nesterov stays bool)."""
    dt = dtype.type
    return dt(lr), dt(momentum), bool(nesterov), dt(weight_decay)


def adam_scalars(dtype, lr, beta1, beta2, eps, weight_decay, decoupled, t):
    """-> (lr, b1, 1-b1, b2, 1-b2, eps, wd, lr*wd, decoupled, 1-b1^t, 1-b2^t) in `dtype`."""
    dt = dtype.type
    return (dt(lr), dt(beta1), dt(1 - beta1), dt(beta2), dt(1 - beta2), dt(eps), dt(weight_decay),
            dt(lr * weight_decay), bool(decoupled), dt(1 - beta1**t), dt(1 - beta2**t))


def conv_output_size(n, k, stride, pad):
    """Output positions of a k-wide window sliding over n inputs (zero-padded by `pad` on each
    side) with `stride`: floor((n + 2 pad - k) / stride) + 1."""
    return (n + 2 * pad - k) // stride + 1


def check_im2col(cols, x, kh, kw, stride, pad):
    """im2col / col2im arguments: x (B, H, W, C) NHWC, cols (B*Ho*Wo, kh*kw*C), integer window,
    stride >= 1, 0 <= pad < window (a pad as wide as the window makes all-zero rows).
    -> (Ho, Wo)"""
    if x.ndim != 4 or cols.ndim != 2:
        raise ValueError(f"im2col takes x (B, H, W, C) and cols (rows, columns), got {x.shape} and {cols.shape}")
    if x.dtype != cols.dtype:
        raise ValueError(f"x and cols must have one dtype, got {x.dtype} and {cols.dtype}")
    for name, v in (("kh", kh), ("kw", kw), ("stride", stride)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v}")
    if int(pad) != pad or not 0 <= pad < min(kh, kw):
        raise ValueError(f"pad must be an integer in [0, {min(kh, kw)}), got {pad}")
    B, H, W, C = x.shape
    Ho, Wo = conv_output_size(H, kh, stride, pad), conv_output_size(W, kw, stride, pad)
    if Ho < 1 or Wo < 1:
        raise ValueError(f"a {kh}x{kw} window (pad {pad}) does not fit a {H}x{W} image")
    if tuple(cols.shape) != (B * Ho * Wo, kh * kw * C):
        raise ValueError(f"cols must have shape {(B * Ho * Wo, kh * kw * C)} for x {tuple(x.shape)}, "
                         f"{kh}x{kw} window, stride {stride}, pad {pad}; got {tuple(cols.shape)}")
    return Ho, Wo


# ----------------------------------------------------------------------------------------
# Op modules and their compilers
# ----------------------------------------------------------------------------------------
#
# kernels/ is organised by op (noise.py, bias_act.py, loss.py, optim.py, conv.py): each holds
# the op's NumPy reference and the bodies of its CPU and CUDA twins, side by side, importable
# with NumPy alone.  A body's few compiler names (prange, cuda, the shared per-element helpers
# of scalar.py) are plain Python placeholders in the op module; kernels/cpu.py and
# kernels/cuda.py compile a copy of the body whose globals map those names to numba's
# (rebind), and wrap it with the argument checks and the launch.


class _NotCompiled:
    """Placeholder for numba.cuda in an op module: a CUDA body runs only as compiled by
    kernels/cuda.py (which rebinds `cuda`), never as plain Python."""

    def __getattr__(self, name):
        raise RuntimeError(f"cuda.{name}: a CUDA body runs only as compiled by kernels/cuda.py")


prange = range          # a CPU body's parallel loop: numba.prange once kernels/cpu.py compiles it
cuda = _NotCompiled()   # numba.cuda once kernels/cuda.py compiles a CUDA body
float64, int32 = "float64", "int32"  # the types of a CUDA body's shared arrays: numba's, once compiled


def rebind(func, names, spaces, name=None, qualname=None):
    """A copy of the op module's function `func` whose globals are a snapshot of its module's,
    overridden by `names` (a backend's compiled helpers and numba's prange / cuda).

    spaces: the backend's {module name: globals dict}, made at a module's first rebind; every
    body of one module shares it, and a backend registers each helper it compiles later into
    every space (cpu.py: _inline, cuda.py: _add_name), before any kernel is compiled (numba
    compiles at first call).  Later changes to the module's own globals are not seen.
    numba names its on-disk cache entries after the source file and the qualname."""
    import sys
    import types

    space = spaces.get(func.__module__)
    if space is None:
        space = spaces[func.__module__] = {**vars(sys.modules[func.__module__]), **names}
    copy = types.FunctionType(func.__code__, space, name or func.__name__, func.__defaults__, func.__closure__)
    copy.__qualname__ = qualname or copy.__name__
    copy.__doc__ = func.__doc__
    return copy
