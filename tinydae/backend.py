"""Backends: where arrays live and which kernels run on them.

A Backend bundles the array module ``xp`` (numpy or cupy), the kernel table (a module
with the ops of kernels/reference.py), and host/device transfers.  Layers and models
only ever talk to a Backend, never to numpy, cupy or numba directly.
"""
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from tinydae.errors import BackendUnavailable, ConfigError

BACKEND_NAMES = ("cpu", "cuda", "auto")
KERNEL_CHOICES = ("fused", "reference")


@dataclass(frozen=True)
class Backend:
    name: str
    xp: ModuleType
    kernels: ModuleType
    device: str
    kernel_set: str = "fused"  # "fused" twins, or the NumPy "reference"

    def to_device(self, a, dtype=None):
        """Host array -> backend array (contiguous, of `dtype` if given)."""
        return self.xp.ascontiguousarray(self.xp.asarray(a, dtype=dtype))

    def to_host(self, a):
        """Backend array -> numpy array."""
        return a if isinstance(a, np.ndarray) else self.xp.asnumpy(a)

    def sync(self):
        """Wait for queued device work (a no-op on the CPU)."""

    def __repr__(self):
        return f"Backend({self.name}, {self.kernel_set} kernels, {self.device})"


def _cpu(kernel_set):
    import os
    import platform

    if kernel_set == "reference":
        import kernels.reference as table
    else:
        import kernels.cpu as table
    cpu = platform.processor() or platform.machine()
    return Backend("cpu", np, table, f"{cpu}, {os.cpu_count()} cores", kernel_set)


def cuda_unavailable_reason():
    """Why --backend cuda cannot run here, as one line."""
    return ("the CUDA backend is not implemented yet in this version of tinydae "
            "(it arrives with the fused-kernel work); use --backend cpu")


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
        raise BackendUnavailable(f"--backend cuda is unavailable: {cuda_unavailable_reason()}")
    return _cpu(kernels)
