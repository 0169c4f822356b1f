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


class LaunchError(RuntimeError):
    """A launcher could not load or launch a kernel; the message names the kernel, the variant
    and the underlying exception (the self-check in kernels/cuda.py reports it and falls back)."""


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


# The launch-time check, cheaply.  Reading ``a.dtype.name`` costs ~3 us per array on CuPy and
# arg_key's isinstance tests add up: an Adam launch spent ~51 us checking its 16 arguments.
# The launcher reads only what is cheap (a scalar's type; an array's dtype number, ndim and
# C-contiguity: the "fast key"), and Kernel.checked_variant memoizes, per fast key, the declared
# variant it matches: the full check runs once per distinct key, not once per launch.  The key
# is built in the same pass over the arguments as their flattening (key_and_flatten).
_SCALAR = frozenset({np.int32, np.int64, np.uint32, np.uint64, np.float32, np.float64, np.bool_, bool})


def _array_key(a):
    try:  # CuPy: C-level attributes (~40 ns each; ``a.flags`` would build an object)
        return a.dtype.num, a.ndim, a._c_contiguous
    except AttributeError:
        pass
    try:
        return a.dtype.num, a.ndim, a.flags.c_contiguous  # NumPy (the simulator)
    except AttributeError:
        arg_key([a])  # not an array at all (a Python float ...): its TypeError says so
        raise


def fast_key(args):
    """Arguments -> a hashable key that tells declared variants apart: a scalar's type, an
    array's (dtype number, ndim, C-contiguous)."""
    return tuple([t if (t := type(a)) in _SCALAR else _array_key(a) for a in args])


def key_and_flatten(args):
    """-> (fast_key(args), the flat values of numba's kernel ABI as CuPy launches them), in one pass.

    Flat values: an array becomes (meminfo 0, parent 0, nitems, itemsize, data pointer,
    shape..., strides...), each a Python int, which CuPy packs as 64 bits; a NumPy scalar
    stays itself (packed in its own type); a Python bool becomes np.bool_ (one byte).  Arrays
    are CuPy arrays, or objects with CuPy's attributes (``.data.ptr``, ``._c_contiguous``,
    ``.size``, ``.itemsize``, ``.shape``, ``.strides``; bench/cupy_standin.py)."""
    key, flat = [], []
    for a in args:
        t = type(a)
        if t in _SCALAR:
            key.append(t)
            flat.append(np.bool_(a) if t is bool else a)
            continue
        try:  # _array_key's CuPy path, inline: this runs for every array of every launch
            key.append((a.dtype.num, a.ndim, a._c_contiguous))
        except AttributeError:
            key.append(_array_key(a))
        flat += (0, 0, a.size, a.itemsize, a.data.ptr, *a.shape, *a.strides)
    return tuple(key), flat


def flatten(args):
    """Arguments -> numba's kernel ABI as CuPy launches it (see key_and_flatten)."""
    return key_and_flatten(args)[1]


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
        self._checked = {}  # fast_key -> variant dtype

    def variant(self, args):
        """-> the dtype key of the declared variant these arguments match (TypeError if none)."""
        key = arg_key(args)
        try:
            return self._by_key[key]
        except KeyError:
            raise TypeError(f"CUDA kernel {self.name} launched with {key}, which matches none of its "
                            f"declared signatures {list(self.variants.values())}") from None

    def checked_variant(self, args, key=None):
        """-> the declared variant (dtype key) these arguments match, checked in full (variant,
        and C-contiguous arrays, as the signatures declare) the first time their fast_key is
        seen, looked up after.  TypeError when they match no declared variant."""
        key = fast_key(args) if key is None else key
        dtype = self._checked.get(key, _UNSEEN)
        if dtype is _UNSEEN:
            dtype = self.variant(args)
            for i, a in enumerate(args):
                if type(a) not in _SCALAR and not _array_key(a)[2]:
                    raise TypeError(f"CUDA kernel {self.name}: argument {i} is not C-contiguous, as its "
                                    f"declared signature {self.variants[dtype]} needs")
            self._checked[key] = dtype
        return dtype

    def __repr__(self):
        return f"Kernel({self.name}, {list(self.variants.values())})"


_UNSEEN = object()
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
        k.checked_variant(args)  # the same declared-signature check as the CuPy launcher
        k.dispatcher[blocks, threads, self._stream()](*args)


def check_entry(k, dtype, info):
    """A built variant's PTX .entry parameter list must be what the declared signature
    flattens to (numba's kernel ABI), or every launch would pass misplaced arguments."""
    want = ptx_param_types(k.parsed[dtype])
    got = info.get("ptx_params")
    if got != want:
        raise LaunchError(f"{k.name} {dtype or 'any'}: the cubin's .entry takes {len(got or [])} parameters "
                          f"{_types(got)}, the declared signature {k.variants[dtype]} flattens to "
                          f"{len(want)} {_types(want)} ({info.get('json_path', 'built now')}); rebuild it")


def _types(types):
    return "(" + ",".join(types or []) + ")" if types is not None else "(unknown)"


class CupyLauncher:
    """Cubins from cuda_build, loaded by cupy.RawModule, launched by CuPy on its current stream.

    Where the cubins come from: the bundle in TINYDAE_CUDA_CUBINS (``build-cuda --out DIR``,
    possibly made on another machine), else the launch cache (built on first use).  Every load
    checks the entry's parameter list against the declared signature (check_entry)."""

    name = "cupy"

    def __init__(self, cache_dir=None, bundle=None):
        self.cache_dir = cache_dir
        self.bundle = bundle  # None: TINYDAE_CUDA_CUBINS when a variant is first loaded
        self._functions = {}  # (kernel, device, fast_key) -> RawKernel
        self._variants = {}   # (kernel, dtype, device) -> RawKernel: each cubin loaded once
        self._modules = []    # the RawModules, kept loaded for as long as their functions are used
        self._arch = {}       # device -> (major, minor)
        self._get_device = None  # cupy.cuda.runtime.getDevice, bound on first use
        self.loaded = {}      # (kernel name, dtype, arch) -> the cubin file it was loaded from

    def _device(self):
        if self._get_device is None:
            import cupy

            self._get_device = cupy.cuda.runtime.getDevice
        return self._get_device()

    def preload(self, kernels):
        """Load every declared variant of `kernels` on the current device (no launch): a bundle
        that lacks one, or holds one whose entry does not match, fails here (LaunchError)."""
        device = self._device()
        for k in kernels:
            for dtype in k.variants:
                self._variant(k, dtype, device)

    def _variant(self, k, dtype, device):
        fn = self._variants.get((k, dtype, device))
        if fn is None:
            fn = self._variants[(k, dtype, device)] = self._load(k, dtype, device)
        return fn

    def _device_arch(self, device):
        arch = self._arch.get(device)
        if arch is None:
            from . import cuda_build

            arch = self._arch[device] = cuda_build.device_arch()
        return arch

    def _built(self, k, dtype, arch):
        """-> the built variant's record (cuda_build.find_built): bundle first, else the cache."""
        from . import cuda_build

        return cuda_build.find_built(k, dtype, arch, cache=self.cache_dir, bundle=self.bundle)

    def _module_function(self, info):
        import cupy

        module = cupy.RawModule(path=info["cubin_path"])  # a cubin: loaded as is, no JIT
        self._modules.append(module)
        return module.get_function(info["entry"])

    def _load(self, k, dtype, device):
        from . import cuda_build

        arch = self._device_arch(device)
        try:
            info = self._built(k, dtype, arch)
            check_entry(k, dtype, info)
            fn = self._module_function(info)
            self.loaded[(k.name, dtype, cuda_build.arch_name(arch))] = info["cubin_path"]
            return fn
        except LaunchError:
            raise
        except Exception as e:  # BuildError, a missing file, CuPy's load error: say which and why
            raise LaunchError(f"the cupy launcher could not load {k.name} {dtype} for "
                              f"{cuda_build.arch_name(arch)}: {type(e).__name__}: {_first_line(e)}") from e

    def function(self, k, args, key=None):
        """-> the loaded RawKernel for these arguments (checked and loaded once per fast key)."""
        key = fast_key(args) if key is None else key
        device = self._device()
        fn = self._functions.get((k, device, key))
        if fn is None:
            fn = self._functions[(k, device, key)] = self._variant(k, k.checked_variant(args, key), device)
        return fn

    def launch(self, k, blocks, threads, args):
        key, flat = key_and_flatten(args)
        fn = self._functions.get((k, self._device(), key)) or self.function(k, args, key)
        fn((blocks,), (threads,), tuple(flat))


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else "(no message)"


def default_launcher():
    """TINYDAE_CUDA_LAUNCHER if set; else numba under the simulator, cupy where its cubins can
    be had (a bundle in TINYDAE_CUDA_CUBINS, or a cubin assembler: ptxas or nvJitLink), numba's
    dispatcher otherwise."""
    name = os.environ.get("TINYDAE_CUDA_LAUNCHER", "").strip()
    if name:
        return name
    if SIMULATOR:
        return "numba"
    from . import cuda_build

    return "cupy" if os.environ.get("TINYDAE_CUDA_CUBINS") or cuda_build.assemblers() else "numba"


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
