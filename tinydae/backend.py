"""Backends: where arrays live and which kernels run on them.

A Backend bundles the array module ``xp`` (numpy or cupy), the kernel table (a module
with the ops of kernels/reference.py), host/device transfers and the one BLAS call that
needs more than ``xp.matmul`` (``gemm_acc``).  Layers and models only ever talk to a
Backend, never to numpy, cupy or numba directly.

Every device -> host read goes through ``Backend.to_host``, which counts it in HOST_READS:
on a GPU each one waits for the queued work, so tests count them per training step.

``get_backend("numpy")`` is the CPU with the NumPy reference kernels: the one backend that
imports neither numba nor CuPy, for embedding a trained model where only numpy and h5py are
installed (tests/test_embed_runtime.py).  It is not a third kind of device, so its Backend is
named "cpu" (code that asks ``backend.name == "cpu"`` means NumPy arrays on the host, which it
is) with kernel_set "reference".
"""
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from tinydae.errors import BackendUnavailable, ConfigError, DataError

BACKEND_NAMES = ("cpu", "cuda", "auto", "numpy")
HOST_READS = {"count": 0}  # calls of Backend.to_host since import, on every backend
KERNEL_CHOICES = ("fused", "reference")


@dataclass(frozen=True)
class Backend:
    name: str
    xp: ModuleType
    kernels: ModuleType
    device: str
    kernel_set: str = "fused"  # "fused" twins, or the NumPy "reference"
    # cuBLAS-style gemm(transa, transb, a, b, out=, alpha=, beta=) for gemm_acc; None: cupy.cublas.gemm
    # on CuPy arrays, NumPy's matmul on the host.  (Set by the CI emulation of the CuPy backend.)
    gemm: object = None

    def as_array(self, a, what="the batch", keep_host=False, dtype=None):
        """Any array -> a backend array with the same values and layout, without a copy
        where it can be shared: NumPy, PyTorch, CuPy, JAX ... (``__dlpack__``), the array
        interfaces, the buffer protocol, nested lists.

        NumPy backend: as_host_array (a GPU array raises DataError).  CuPy backend: an array
        on the current GPU is imported by DLPack or ``__cuda_array_interface__`` without a
        copy (one on another GPU raises DataError); anything in host memory is copied to the
        device, unless keep_host (then it comes back as a NumPy array, for callers that copy it
        to the device a batch at a time).  dtype: what host memory is cast to before it leaves
        the host (one upload of the final dtype, not two device arrays); device arrays and
        NumPy-backend arrays keep theirs (to_device casts them).
        """
        xp = self.xp
        if xp is np:
            return as_host_array(a, what, gpu_hint=" or use the cuda backend (--backend cuda)")
        if isinstance(a, xp.ndarray):
            return _same_gpu(xp, _numbers(a, what), what)
        if _dlpack_device_type(a) in DLPACK_CUDA:
            try:
                x = xp.from_dlpack(_resolve_views(a))
            except (BufferError, TypeError, ValueError, RuntimeError) as e:
                raise DataError(f"{what} cannot be shared through DLPack: {e}{_dlpack_hint(e)}") from None
            return _same_gpu(xp, _numbers(x, what), what)
        if hasattr(a, "__cuda_array_interface__"):
            return _same_gpu(xp, _numbers(xp.asarray(a), what), what)
        host = as_host_array(a, what, dtype=dtype)
        return host if keep_host else xp.asarray(host)  # host memory: one copy to the device

    def to_device(self, a, dtype=None, what="the batch"):
        """Any array (see as_array) -> backend array, C-contiguous, of `dtype` if given.
        Copies only where the dtype, the layout or the memory (host vs device) differ."""
        return self.xp.ascontiguousarray(self.as_array(a, what, dtype=dtype), dtype=dtype)

    def to_host(self, a):
        """Backend array -> numpy array.  Counted in HOST_READS (a host sync on a GPU), also
        where it copies nothing (NumPy arrays: the CPU, and the CUDA simulator's tests)."""
        HOST_READS["count"] += 1
        return np.asarray(a) if isinstance(a, (np.ndarray, np.generic)) else self.xp.asnumpy(a)

    def gemm_acc(self, a, b, out, accumulate=True):
        """out += a.T @ b (accumulate) or out = a.T @ b, in place.  a: (B, I), b: (B, O),
        out: (I, O), one dtype.

        NumPy: ``out += a.T @ b`` (a temporary, then the add), or the GEMM writing straight
        into out (``matmul(..., out=out)``: no temporary, no add, and out need not be zeroed
        first).  CuPy: one cuBLAS GEMM with beta = 1 or 0, into out itself; out may be C- or
        F-ordered (a tied decoder's dW is the transpose view of the encoder's), anything else
        takes the NumPy-style path.
        """
        gemm = self.gemm
        if (gemm is None and self.xp is np) or not (out.flags.c_contiguous or out.flags.f_contiguous):
            if accumulate:
                out += self.xp.matmul(a.T, b)
            else:
                self.xp.matmul(a.T, b, out=out)
            return
        if gemm is None:
            from cupy.cublas import gemm
        gemm("T", "N", a, b, out=out, alpha=1.0, beta=1.0 if accumulate else 0.0)

    def sync(self):
        """Wait for queued device work (a no-op on the CPU)."""
        if self.xp is not np:
            self.xp.cuda.get_current_stream().synchronize()

    def __repr__(self):
        return f"Backend({self.name}, {self.kernel_set} kernels, {self.device})"


# DLPack device types (dlpack.h): memory the CPU can read, and memory a CUDA GPU can read
DLPACK_HOST = (1, 3, 11)  # kDLCPU, kDLCUDAHost (pinned), kDLROCMHost
DLPACK_CUDA = (2, 13)     # kDLCUDA, kDLCUDAManaged


def _dlpack_device_type(a):
    """The DLPack device type of `a` (an int), or None when it does not speak DLPack."""
    if not hasattr(a, "__dlpack__"):
        return None
    try:
        return int(a.__dlpack_device__()[0])
    except Exception:  # no __dlpack_device__ (pre-2022 exporters): let from_dlpack decide
        return DLPACK_HOST[0]


def _dlpack_hint(error):
    """What to do when DLPack refused an array for its dtype (bfloat16, float8 ...: NumPy and
    CuPy have no such dtype); other refusals (requires_grad) carry their own advice."""
    text = str(error).lower()
    return "; convert it first, e.g. tensor.float()" if "dtype" in text or "bfloat16" in text else ""


def _resolve_views(a):
    """A PyTorch tensor with its lazy negation bit set (e.g. ``z.conj().imag``) exports its
    memory through DLPack without the negation: resolve it first, or the values arrive with
    the wrong sign.  (Its conjugation bit makes DLPack refuse, which is reported.)"""
    is_neg = getattr(a, "is_neg", None)
    if callable(is_neg) and is_neg():
        return a.resolve_neg()
    return a


def _same_gpu(xp, x, what):
    """A CuPy array must live on the current device: the kernels run there."""
    here = xp.cuda.Device().id
    if x.device.id != here:
        raise DataError(f"{what} is on GPU {x.device.id}, the model on GPU {here}; move it there "
                        f"first (e.g. tensor.to('cuda:{here}'))")
    return x


def _numbers(x, what):
    """Refuse arrays that are not numbers (strings, objects, complex): np.asarray('abc') is a
    0-d string array, which would otherwise fail far from the call with a cryptic message."""
    if x.dtype.kind not in "biuf":
        raise DataError(f"{what} must be an array of real numbers, got dtype {x.dtype}")
    return x


def as_host_array(a, what="the batch", dtype=None, gpu_hint=""):
    """Any array in host memory -> a NumPy array, sharing its memory where possible.

    NumPy arrays pass as they are (read-only and strided views included); objects with
    ``__dlpack__`` (PyTorch tensors, JAX arrays ...) through np.from_dlpack, a view; the rest
    (``__array_interface__``, ``__array__``, the buffer protocol, nested lists) through
    np.asarray.  Then `dtype` if given (a copy only when it differs).  Arrays on a GPU, arrays
    DLPack cannot share (a tensor that requires grad) and non-numbers raise DataError.
    """
    if isinstance(a, np.ndarray):
        x = a
    elif hasattr(a, "__dlpack__"):
        device = _dlpack_device_type(a)
        if device not in DLPACK_HOST:
            raise DataError(f"{what} is in device memory (DLPack device type {device}); move it to "
                            f"the CPU first (tensor.cpu(), cupy.asnumpy(a)){gpu_hint}")
        try:
            x = np.from_dlpack(_resolve_views(a))
        except (BufferError, TypeError, ValueError, RuntimeError) as e:
            # e.g. torch: "Can't export tensors that require gradient, use tensor.detach()"
            raise DataError(f"{what} cannot be shared through DLPack: {e}{_dlpack_hint(e)}") from None
    elif hasattr(a, "__cuda_array_interface__"):
        raise DataError(f"{what} is in GPU memory; move it to the CPU first (tensor.cpu(), "
                        f"cupy.asnumpy(a)){gpu_hint}")
    else:
        try:
            x = np.asarray(a)
        except (TypeError, ValueError, RuntimeError) as e:  # ragged lists, odd objects
            raise DataError(f"{what} is not an array of numbers ({type(a).__name__}: {e})") from None
    return np.asarray(_numbers(x, what), dtype=dtype)


def cpu_name():
    """The CPU's model name (from /proc/cpuinfo on Linux), else the machine type."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu(kernel_set):
    import os

    if kernel_set == "reference":
        import tinydae.kernels.reference as table
    else:
        try:  # numba itself first: its import also fails on a mismatched NumPy or llvmlite
            import numba  # noqa: F401
        except ImportError as e:  # an embedding install (pip install --no-deps) has no numba
            raise BackendUnavailable(
                f"the fused CPU kernels need numba, which cannot be imported ({e}): use "
                f"backend=\"numpy\" (--backend numpy) to run on NumPy alone, or install numba "
                f"(pip install numba) to train and use the fused kernels") from None
        import tinydae.kernels.cpu as table
    return Backend("cpu", np, table, f"{cpu_name()}, {os.cpu_count()} cores", kernel_set)


INSTALL_HINT = 'pip install -e ".[cuda12]" (or ".[cuda13]" for a CUDA 13 driver)'


def _cuda(kernel_set):
    """CuPy arrays + numba.cuda kernels, or BackendUnavailable naming what is missing."""
    import os

    if kernel_set == "reference":
        raise ConfigError("the reference kernels are NumPy code for the CPU; use --kernels fused "
                          "with --backend cuda")
    launcher = os.environ.get("TINYDAE_CUDA_LAUNCHER", "").strip()
    if launcher and launcher not in ("cupy", "numba"):
        raise ConfigError(f"TINYDAE_CUDA_LAUNCHER must be cupy or numba, got {launcher!r}")
    cupy, table = _cuda_probe()
    _self_check(table)  # known-answer launches before any real work: fall back, or GPUUnusable
    device = cupy.cuda.Device()
    name = cupy.cuda.runtime.getDeviceProperties(device.id)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    return Backend("cuda", cupy, table, f"{name} (CUDA device {device.id})", kernel_set)


def _cuda_probe():
    """-> (cupy, the CUDA kernels module) once CuPy, a device, numba-cuda and the kernels'
    declarations are found usable; else BackendUnavailable (nothing CUDA here) or GPUUnusable (a
    GPU, but something in the way), each with the underlying exception's text."""
    import os

    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        raise BackendUnavailable("--backend cuda is unavailable: NUMBA_ENABLE_CUDASIM=1 simulates "
                                 "kernels on the CPU, it cannot run CuPy; unset it")
    try:
        import cupy
    except ImportError:
        raise BackendUnavailable(f"--backend cuda needs CuPy, which is not installed: {INSTALL_HINT}") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, or a driver too old for this CuPy
        raise BackendUnavailable(f"--backend cuda found no usable GPU ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else 'no detail'}); use --backend cpu") from None
    if count < 1:
        raise BackendUnavailable("--backend cuda found no CUDA device; use --backend cpu")
    try:
        from numba import cuda
        usable, why = cuda.is_available(), "numba.cuda.is_available() is False"
    except Exception as e:  # e.g. numba-cuda < 0.30.4 beside numba >= 0.66: AttributeError NPDatetime
        usable, why = False, f"{type(e).__name__}: {_first_line(e)}"
    if not usable:
        raise GPUUnusable(f"--backend cuda: numba cannot reach the GPU ({why}); numba-cuda must be "
                          f"installed and match numba (numba >= 0.66 needs numba-cuda >= 0.30.4) and "
                          f"the driver: {INSTALL_HINT}")
    try:
        import tinydae.kernels.cuda as table
    except Exception as e:  # a compiler that fails while the kernels are declared
        raise GPUUnusable(f"--backend cuda: the CUDA kernels cannot be declared ({type(e).__name__}: "
                          f"{_first_line(e)})") from None
    return cupy, table


class GPUUnusable(BackendUnavailable):
    """A GPU is there, but tinydae cannot run on it (a compiler, launcher or self-check failed):
    --backend auto says so in a warning before it falls back to the CPU."""


class BackendWarning(UserWarning):
    """Something about the backend the user should know (a fallback); the CLI prints it as one
    ``warning:`` line."""


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else "no detail"


_CHECKED = set()  # the launchers whose self-check passed in this process


def _self_check(table):
    """The kernels' self-check before any real work (kernels/cuda.py: ensure_launcher): a
    launcher that fails falls back to numba's dispatcher with a warning; if that fails too,
    GPUUnusable with both reasons."""
    import warnings

    if table.LAUNCHER in _CHECKED:
        return
    try:
        notes = table.ensure_launcher()
    except ValueError as e:  # a bad TINYDAE_CUDA_SELFCHECK
        raise ConfigError(str(e)) from None
    except Exception as e:  # LaunchError: every launcher failed
        raise GPUUnusable(f"--backend cuda: the GPU failed its self-check ({e})") from None
    _CHECKED.add(table.LAUNCHER)
    for note in notes:
        warnings.warn(note, BackendWarning, stacklevel=3)


def get_backend(name="auto", kernels=None):
    """'cpu' -> NumPy; 'cuda' -> CuPy + numba-cuda kernels; 'auto' -> cuda if usable, else cpu;
    'numpy' -> the CPU with the reference kernels only (never imports numba or CuPy).

    kernels: 'fused' (numba twins, the default) or 'reference' (plain NumPy, CPU only:
    slower, for teaching, debugging and the numba-free 'numpy' backend).  None picks the
    backend's own: 'reference' for 'numpy', 'fused' for the others.  'numpy' with 'fused' is a
    ConfigError, not a quiet switch to numba: whoever asks for 'numpy' may have no numba.
    """
    if isinstance(name, Backend):
        return name
    if name not in BACKEND_NAMES:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if kernels is not None and kernels not in KERNEL_CHOICES:
        raise ConfigError(f"unknown kernel set {kernels!r}; choose one of {', '.join(KERNEL_CHOICES)}")
    if name == "numpy":
        if kernels == "fused":
            raise ConfigError("--backend numpy runs the NumPy reference kernels only; use --backend cpu "
                              "for the fused (numba) kernels")
        return _cpu("reference")
    kernels = kernels or "fused"
    if name == "cuda":
        return _cuda(kernels)
    if name == "auto" and kernels == "fused":
        try:
            return _cuda(kernels)
        except GPUUnusable as e:  # a GPU that does not work is news; no GPU at all is not
            import warnings

            warnings.warn(f"--backend auto runs on the CPU: {e}", BackendWarning, stacklevel=2)
        except BackendUnavailable:
            pass
    return _cpu(kernels)
