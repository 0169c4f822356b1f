"""The CUDA launch layer: declared kernel signatures, numba's kernel ABI, and two launchers.

numba-cuda is tinydae's CUDA *compiler*.  Who *launches* a compiled kernel is this small,
swappable layer (a move to another compiler changes only this file and cuda_build.py):

* ``cupy`` (the default on a GPU with a cubin assembler): each kernel variant is compiled once per machine to a
  cubin for the GPU's own architecture (kernels/cuda_build.py; cached on disk, so the
  driver never JIT-compiles PTX), loaded with ``cupy.RawModule`` and launched by CuPy
  with its arguments flattened into numba's kernel ABI.  A launch should cost a few
  microseconds of Python, against tens for numba's dispatcher on CuPy arrays (published
  figures; `python cli.py bench launch` measures both, on a GPU, which has not happened yet).
* ``numba``: numba-cuda's own dispatcher.  Always used under the simulator
  (NUMBA_ENABLE_CUDASIM=1), which is how CI proves the kernels' logic; selectable on a
  GPU with TINYDAE_CUDA_LAUNCHER=numba, to compare launchers or to fall back.

Every kernel declares its signatures up front (``@kernel("void(T[::1], int32)")``, T the
data dtype), so ``python cli.py build-cuda`` can compile every variant the backend can
launch without running anything, and a launch whose argument types match no declared
variant fails loudly, in the simulator too.

numba's kernel ABI (the order numba-cuda's own dispatcher packs, ``_prepare_args`` in 0.30.4;
the types checked against each kernel's PTX ``.entry`` by tests/test_cuda_build.py):
an array argument of n dimensions becomes 5 + 2n parameters, (meminfo, parent, nitems,
itemsize, data, shape[0..n), strides[0..n) in bytes), each 64-bit; a scalar is passed by
value in its own type (a bool as one byte).
"""
import os
import re

import numpy as np

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
LAUNCHER_NAMES = ("cupy", "numba")
DTYPES = ("float32", "float64")
SCALARS = {"int32": np.int32, "int64": np.int64, "uint32": np.uint32, "uint64": np.uint64,
           "float32": np.float32, "float64": np.float64, "boolean": np.bool_}
# Each flattened parameter's PTX type: what the ABI test compares with the .entry list.
PTX_PARAM = {"int32": "u32", "uint32": "u32", "int64": "u64", "uint64": "u64", "float32": "f32",
             "float64": "f64", "boolean": "u8"}
_ARG = re.compile(r"^(\w+)(\[(.*)\])?$")


def parse_signature(signature):
    """'void(float32[:, ::1], int32)' -> [('array', 'float32', 2), ('scalar', 'int32')]

    Only what the kernels use: C-contiguous arrays (``[::1]``, ``[:, ::1]``) and scalars.
    """
    m = re.fullmatch(r"\s*void\s*\((.*)\)\s*", signature)
    if not m:
        raise ValueError(f"kernel signatures return void: {signature!r}")
    params = []
    for part in re.split(r",(?![^\[]*\])", m.group(1)):
        arg = _ARG.match(part.replace(" ", ""))
        if not arg or arg.group(1) not in SCALARS:
            raise ValueError(f"unsupported kernel parameter {part.strip()!r} in {signature!r}")
        if arg.group(2) is None:
            params.append(("scalar", arg.group(1)))
            continue
        dims = arg.group(3).split(",")
        if dims[-1] != "::1" or any(d != ":" for d in dims[:-1]):
            raise ValueError(f"kernel arrays must be C-contiguous ([::1], [:, ::1]): {part.strip()!r}")
        params.append(("array", arg.group(1), len(dims)))
    return params


def ptx_param_types(params):
    """Parsed signature -> the PTX .param types of numba's kernel ABI, in order."""
    out = []
    for p in params:
        out += ["u64"] * (5 + 2 * p[2]) if p[0] == "array" else [PTX_PARAM[p[1]]]
    return out


def arg_key(args):
    """Runtime arguments -> the parsed-signature form they would need (for matching)."""
    key = []
    for a in args:
        if isinstance(a, (bool, np.bool_)):
            key.append(("scalar", "boolean"))
        elif isinstance(a, np.generic):
            key.append(("scalar", a.dtype.name))
        elif hasattr(a, "__cuda_array_interface__") or isinstance(a, np.ndarray):
            key.append(("array", a.dtype.name, a.ndim))
        else:  # a Python int or float would be typed by the launcher, differently by each
            raise TypeError(f"kernel arguments must be arrays or NumPy scalars, got {type(a).__name__}")
    return tuple(key)


def flatten(args):
    """Arguments -> numba's kernel ABI, as CuPy launches it: Python ints are passed as 64-bit
    values (pointers, sizes, shapes, strides), NumPy scalars in their own type."""
    flat = []
    for a in args:
        if isinstance(a, np.generic):
            flat.append(a)
        elif isinstance(a, bool):
            flat.append(np.bool_(a))
        else:
            ptr = a.data.ptr if hasattr(a.data, "ptr") else a.__cuda_array_interface__["data"][0]
            flat += [0, 0, a.size, a.itemsize, ptr, *a.shape, *a.strides]
    return flat


class Kernel:
    """A numba CUDA kernel with its declared signatures.

    signature: 'void(...)' with T standing for the data dtype (one variant per dtype in
    `dtypes`), or with no T (one variant).
    """

    def __init__(self, pyfunc, signature, dtypes=DTYPES):
        from numba import cuda

        self.name = pyfunc.__name__
        self.pyfunc = pyfunc
        self.dispatcher = cuda.jit(cache=True)(pyfunc)
        generic = re.search(r"\bT\b", signature) is not None
        self.variants = {}  # dtype (or None) -> concrete signature string
        for dt in (dtypes if generic else (None,)):
            self.variants[dt] = re.sub(r"\bT\b", dt, signature) if dt else signature
        self.parsed = {dt: tuple(parse_signature(s)) for dt, s in self.variants.items()}
        self._by_key = {p: dt for dt, p in self.parsed.items()}

    def variant(self, args):
        """-> the dtype key of the declared variant these arguments match (TypeError if none)."""
        key = arg_key(args)
        try:
            return self._by_key[key]
        except KeyError:
            raise TypeError(f"CUDA kernel {self.name} launched with {key}, which matches none of its "
                            f"declared signatures {list(self.variants.values())}") from None

    def __repr__(self):
        return f"Kernel({self.name}, {list(self.variants.values())})"


KERNELS = {}  # name -> Kernel, in definition order: what build-cuda compiles


def kernel(signature, dtypes=DTYPES):
    """Decorator: declare a CUDA kernel and its signatures (see Kernel)."""
    def wrap(pyfunc):
        k = Kernel(pyfunc, signature, dtypes)
        KERNELS[k.name] = k
        return k
    return wrap


# ----------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------


class NumbaLauncher:
    """numba-cuda's dispatcher, on CuPy's current stream (or the simulator's stream 0)."""

    name = "numba"

    def __init__(self):
        self._streams = {}  # CuPy stream pointer -> numba external stream (built once each)

    def _stream(self):
        if SIMULATOR:
            return 0
        import cupy
        from numba import cuda

        ptr = cupy.cuda.get_current_stream().ptr
        stream = self._streams.get(ptr)
        if stream is None:
            stream = self._streams[ptr] = cuda.external_stream(ptr)
        return stream

    def launch(self, k, blocks, threads, args):
        k.variant(args)  # the same declared-signature check as the CuPy launcher
        k.dispatcher[blocks, threads, self._stream()](*args)


class CupyLauncher:
    """Cubins from cuda_build, loaded by cupy.RawModule, launched by CuPy on its current stream."""

    name = "cupy"

    def __init__(self, cache_dir=None):
        self.cache_dir = cache_dir
        self._functions = {}  # (kernel, arg key, device) -> cupy RawKernel from a RawModule
        self._modules = []    # the RawModules, kept loaded for as long as their functions are used

    def _load(self, k, args):
        import cupy

        from . import cuda_build

        dtype = k.variant(args)
        arch = cuda_build.device_arch()
        built = cuda_build.cached_build(k, dtype, arch, self.cache_dir)
        module = cupy.RawModule(path=built["cubin_path"])  # a cubin: loaded as is, no JIT
        self._modules.append(module)
        return module.get_function(built["entry"])

    def launch(self, k, blocks, threads, args):
        import cupy

        key = (k.name, arg_key(args), cupy.cuda.runtime.getDevice())
        fn = self._functions.get(key)
        if fn is None:
            fn = self._functions[key] = self._load(k, args)
        fn((blocks,), (threads,), tuple(flatten(args)))


def default_launcher():
    """TINYDAE_CUDA_LAUNCHER if set; else numba under the simulator, cupy where a cubin
    assembler (ptxas or nvJitLink) is found, numba's dispatcher otherwise."""
    name = os.environ.get("TINYDAE_CUDA_LAUNCHER", "").strip()
    if name:
        return name
    if SIMULATOR:
        return "numba"
    from . import cuda_build

    return "cupy" if cuda_build.assemblers() else "numba"


def make_launcher(name=None):
    """'cupy' | 'numba' | None (default_launcher())."""
    name = name or default_launcher()
    if name not in LAUNCHER_NAMES:
        raise ValueError(f"TINYDAE_CUDA_LAUNCHER must be one of {', '.join(LAUNCHER_NAMES)}, got {name!r}")
    if SIMULATOR and name != "numba":
        raise ValueError("under NUMBA_ENABLE_CUDASIM=1 only the numba launcher can run kernels")
    return CupyLauncher() if name == "cupy" else NumbaLauncher()


def numpy_compat():
    """Let numba-cuda compile on NumPy >= 2.5, confined to one import.

    numba-cuda (0.21 to at least 0.30.4) registers an overload for ``np.row_stack`` when its
    array module is first imported, on the first compile of any kernel; NumPy 2.5 removed
    ``row_stack``, so that import raises AttributeError.  We import that module once, with a
    placeholder ``numpy.row_stack`` that exists only during the import (it receives numba's
    overload and is unreachable afterwards), then delete it: users never see the attribute.
    No-op where NumPy still has ``row_stack`` or numba-cuda is absent or laid out otherwise.
    """
    if hasattr(np, "row_stack"):
        return

    def _removed_in_numpy_2_5(*args, **kwargs):
        raise AttributeError("numpy.row_stack was removed in NumPy 2.5; use numpy.vstack")

    np.row_stack = _removed_in_numpy_2_5
    try:
        import numba.cuda.np.arrayobj  # noqa: F401  (numba-cuda >= 0.21)
    except ImportError:
        pass
    finally:
        del np.row_stack
