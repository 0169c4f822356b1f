"""CPU threads: how many numba's kernels and OpenBLAS's GEMMs use.

A training step alternates GEMMs (OpenBLAS threads) and fused kernels (numba threads), and
both pools default to one thread per core.  On an idle machine that is fastest.  When another
busy process shares the cores, a thread that waits for its siblings waits for a time slice the
other process holds, and every parallel region (dozens per step) pays for it: measured in
bench/NOTES.md ("Threads under load").  `set_threads(n)` sets both pools at run time;
`threads="auto"` picks n from the load average when the run starts.

OpenBLAS reads OPENBLAS_NUM_THREADS only when NumPy loads it, so a later change goes through
its own C call: found here with ctypes in the library NumPy loaded (NumPy's wheels ship
scipy-openblas, whose symbols carry a prefix and suffix).  Where no OpenBLAS is found (an MKL
or Accelerate NumPy), only numba's pool is set, and `set_threads` says so.
"""
import ctypes
import os

from tinydae.errors import ConfigError

_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_", "openblas_set_num_threads")


def cores():
    """Cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _openblas_setter():
    """The loaded OpenBLAS's set_num_threads, or None."""
    import numpy  # noqa: F401  (OpenBLAS is loaded with NumPy)

    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.argtypes, fn.restype = [ctypes.c_int], None
                return fn
    return None


def auto_threads():
    """Threads for a run that starts now: the cores that the 1-minute load average leaves
    free, at least 1.  The load average counts this process only once it runs, so at start-up
    it is the competing work."""
    n = cores()
    try:
        busy = os.getloadavg()[0]
    except OSError:
        return n
    return max(1, min(n, int(n - busy + 0.5)))


def parse_threads(value):
    """'auto', 'all' or a positive integer (str or int) -> int or 'auto'."""
    if value in (None, "all"):
        return cores()
    if value == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ConfigError(f"threads must be a positive integer, 'auto' or 'all', got {value!r}")
    return n


def set_threads(value, blas=None):
    """Use n threads for numba's kernels and OpenBLAS's GEMMs (capped at numba's pool size).

    value: an int, 'auto' (auto_threads()) or 'all' (every core); blas: the GEMMs' own count
    if it should differ (same forms) -> dict(threads, blas_threads, openblas) where openblas
    says whether the GEMM pool could be set.
    """
    import numba

    def resolve(v):
        n = parse_threads(v)
        return auto_threads() if n == "auto" else n

    n = min(resolve(value), numba.config.NUMBA_NUM_THREADS)
    m = n if blas is None else resolve(blas)
    numba.set_num_threads(n)
    setter = _openblas_setter()
    if setter is not None:
        setter(m)
    return dict(threads=n, blas_threads=m, openblas=setter is not None)
