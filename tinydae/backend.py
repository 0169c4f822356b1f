"""Backends: where arrays live and which kernels run on them.

A Backend bundles the array module ``xp`` (numpy or cupy), the kernel table (a module
with the ops of kernels/reference.py), host/device transfers and the one BLAS call that
needs more than ``xp.matmul`` (``gemm_acc``).  Layers and models only ever talk to a
Backend, never to numpy, cupy or numba directly.

Every device -> host read goes through ``Backend.to_host``, which counts it in HOST_READS:
on a GPU each one waits for the queued work, so tests count them per training step.
"""
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from tinydae.errors import BackendUnavailable, ConfigError

BACKEND_NAMES = ("cpu", "cuda", "auto")
HOST_READS = {"count": 0}  # calls of Backend.to_host since import, on every backend
KERNEL_CHOICES = ("fused", "reference")


@dataclass(frozen=True)
class Backend:
    name: str
    xp: ModuleType
    kernels: ModuleType
    device: str
    kernel_set: str = "fused"  # "fused" twins, or the NumPy "reference"

    def to_device(self, a, dtype=None):
        """Host (or device) array -> backend array, C-contiguous, of `dtype` if given."""
        return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))

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
        if self.xp is np or not (out.flags.c_contiguous or out.flags.f_contiguous):
            if accumulate:
                out += self.xp.matmul(a.T, b)
            else:
                self.xp.matmul(a.T, b, out=out)
            return
        from cupy import cublas

        cublas.gemm("T", "N", a, b, out=out, alpha=1.0, beta=1.0 if accumulate else 0.0)

    def sync(self):
        """Wait for queued device work (a no-op on the CPU)."""
        if self.xp is not np:
            self.xp.cuda.get_current_stream().synchronize()

    def __repr__(self):
        return f"Backend({self.name}, {self.kernel_set} kernels, {self.device})"


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
        usable = cuda.is_available()
    except Exception:
        usable = False
    if not usable:
        raise BackendUnavailable(f"--backend cuda: numba cannot reach the GPU (numba-cuda missing or "
                                 f"mismatched with the driver): {INSTALL_HINT}")
    import tinydae.kernels.cuda as table

    device = cupy.cuda.Device()
    name = cupy.cuda.runtime.getDeviceProperties(device.id)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    return Backend("cuda", cupy, table, f"{name} (CUDA device {device.id})", kernel_set)


def get_backend(name="auto", kernels="fused"):
    """'cpu' -> NumPy; 'cuda' -> CuPy + numba-cuda kernels; 'auto' -> cuda if usable, else cpu.

    kernels: 'fused' (numba twins, the default) or 'reference' (plain NumPy, CPU only:
    slower, for teaching and debugging).
    """
    if isinstance(name, Backend):
        return name
    if name not in BACKEND_NAMES:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if kernels not in KERNEL_CHOICES:
        raise ConfigError(f"unknown kernel set {kernels!r}; choose one of {', '.join(KERNEL_CHOICES)}")
    if name == "cuda":
        return _cuda(kernels)
    if name == "auto" and kernels == "fused":
        try:
            return _cuda(kernels)
        except BackendUnavailable:
            pass
    return _cpu(kernels)
