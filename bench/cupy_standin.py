"""The CuPy launcher without a GPU: device arrays stood in by NumPy memory, launches emulated.

CuPy cannot allocate or launch without a GPU, yet most of what can go wrong in a first launch
is host-side: the arguments' check, their flattening into numba's kernel ABI, how CuPy packs
each flat value, whether that matches the cubin's .entry, and whether a kernel that reads
those values back finds its arrays.  This module stands in for exactly the GPU parts:

* ``DeviceArray``: a NumPy array with the attributes the launcher reads from a CuPy array
  (``.data.ptr``, ``._c_contiguous``, ``__cuda_array_interface__``), so the real
  ``CupyLauncher.launch`` (its memo key, check and flattening) runs on it unchanged.
* ``EmulatedCupyLauncher``: the real CupyLauncher, with only the cubin load replaced.  Each
  launch's flat values are packed by CuPy's own scalar packer (``cupy._core._scalar.CScalar``,
  importable without a GPU), the packed types compared with the variant's PTX ``.entry`` list
  from a ``build-cuda`` bundle, the kernel's arguments rebuilt from the packed bytes alone
  (data pointer, shape, strides: a wrong offset points at the wrong memory) and the kernel run
  by numba's CUDA simulator on them (NUMBA_ENABLE_CUDASIM=1).
* ``NoLaunch``: the real CupyLauncher with a loaded function that does nothing, to time the
  launcher's own host cost (bench/bench_launch_host.py).

What this cannot show: that the driver accepts the cubin, the kernels' speed, and anything the
simulator does differently from a GPU (it runs threads one after another in Python).
"""
import ctypes

import numpy as np

from tinydae.kernels import cuda_launch


class _Pointer:
    __slots__ = ("ptr",)

    def __init__(self, ptr):
        self.ptr = ptr


class DeviceArray(np.ndarray):
    """NumPy memory with the CuPy attributes the launcher reads (see the module docstring)."""

    def __array_finalize__(self, obj):
        # Computed once per array, as CuPy keeps them: reading them then costs what it costs on CuPy.
        self._c_contiguous = self.flags.c_contiguous
        self._data = _Pointer(self.__array_interface__["data"][0])

    @property
    def data(self):
        return self._data

    @property
    def __cuda_array_interface__(self):
        return {"data": (self._data.ptr, False), "shape": self.shape, "typestr": self.dtype.str,
                "strides": None if self._c_contiguous else self.strides, "version": 3}


def to_device(a, dtype=None):
    """Host array -> a DeviceArray copy, C-contiguous (what cupy.asarray would make)."""
    return np.array(a, dtype=dtype, order="C", copy=True).view(DeviceArray)


def as_device(a):
    """A NumPy array (a workspace the kernels module made with NumPy) -> a DeviceArray view of
    the same memory; DeviceArrays and scalars pass as they are."""
    return a.view(DeviceArray) if type(a) is np.ndarray else a


class NoLaunch(cuda_launch.CupyLauncher):
    """The CuPy launcher whose loaded kernels do nothing: what remains is its own host cost
    (the device query is a Python stand-in here for cupy.cuda.runtime.getDevice, a C call)."""

    def __init__(self):
        super().__init__()
        self._get_device = lambda: 0

    def _load(self, k, dtype, device):
        return lambda grid, block, args: None


# PTX parameter type -> (kind, bytes) the packed value must have: u32 is any 4-byte integer
# (int32 and uint32 both), u64 any 8-byte integer (pointers, sizes, shapes, strides, int64).
_PTX_PACKING = {"u8": ("b", 1), "u32": ("iu", 4), "u64": ("iu", 8), "f32": ("f", 4), "f64": ("f", 8)}


def pack(value):
    """One flat value as CuPy 14 packs a kernel argument that is not an array
    (cupy/cuda/function.pyx: _pointer -> _scalar.CScalar) -> (dtype, the packed bytes).

    Without CuPy installed, a NumPy model of CScalar stands in (a Python int is an int64, or a
    uint64 past int64's range; a NumPy scalar keeps its dtype): weaker, since it is ours."""
    try:
        from cupy._core._scalar import CScalar
    except ImportError:
        if type(value) is int:
            descr = np.dtype(np.int64 if value < 2**63 else np.uint64)
        elif isinstance(value, np.generic):
            descr = value.dtype
        else:
            raise TypeError(f"Unsupported type {type(value)}") from None
        return descr, np.array(value, descr).tobytes()
    c = CScalar(value)
    return c.descr, ctypes.string_at(c.ptr, c.descr.itemsize)


def _unpack(descr, raw):
    return np.frombuffer(raw, dtype=descr)[0]


class EmulatedCupyLauncher(cuda_launch.CupyLauncher):
    """The real CupyLauncher (memo key, check, flattening), launching into numba's simulator.

    bundle: a ``build-cuda`` folder; its records give each variant's PTX .entry parameters (and
    the launcher's own check_entry compares them with the declared signature, as on a GPU).
    gemm calls are not kernels: see tests/emulated_cublas.py.  launches counts the launches.
    """

    def __init__(self, bundle=None):
        super().__init__(bundle=bundle)
        self.launches = 0
        self._get_device = lambda: 0

    def _device_arch(self, device):
        return (9, 0)

    def _module_function(self, info):
        from tinydae.kernels import cuda_launch as cl

        k = cl.KERNELS[info["name"]]
        dtype = info["dtype"]
        params = info["ptx_params"]

        def run(grid, block, flat):
            if len(flat) != len(params):
                raise TypeError(f"{k.name}: {len(flat)} flat values for {len(params)} .entry parameters")
            packed = []
            for i, (value, ptx) in enumerate(zip(flat, params)):
                descr, raw = pack(value)
                kinds, size = _PTX_PACKING[ptx]
                if descr.kind not in kinds or descr.itemsize != size:
                    raise TypeError(f"{k.name} parameter {i}: CuPy packs {value!r} as {descr} "
                                    f"({descr.itemsize} bytes), the .entry declares .{ptx}")
                packed.append(_unpack(descr, raw))
            args = _rebuild(k.parsed[dtype], packed)
            (blocks,), (threads,) = grid, block
            k.dispatcher[blocks, threads, 0](*args)
            self.launches += 1
        return run

    def launch(self, k, blocks, threads, args):
        super().launch(k, blocks, threads, tuple(as_device(a) for a in args))


def _rebuild(params, packed):
    """The kernel's arguments from the packed values alone, as the kernel will read them:
    an array from (meminfo, parent, nitems, itemsize, data, shape..., strides...)."""
    args, i = [], 0
    for p in params:
        if p[0] == "scalar":
            args.append(cuda_launch.SCALARS[p[1]](packed[i]))
            i += 1
            continue
        _, dtype, ndim = p
        nitems, itemsize, ptr = (int(v) for v in packed[i + 2:i + 5])
        shape = tuple(int(v) for v in packed[i + 5:i + 5 + ndim])
        strides = tuple(int(v) for v in packed[i + 5 + ndim:i + 5 + 2 * ndim])
        i += 5 + 2 * ndim
        dt = np.dtype(dtype)
        if itemsize != dt.itemsize or nitems != int(np.prod(shape)):
            raise TypeError(f"array parameter: itemsize {itemsize}, nitems {nitems} for shape {shape} of {dt}")
        holder = type("Memory", (), {})()
        holder.__array_interface__ = {"data": (ptr, False), "shape": shape, "strides": strides,
                                      "typestr": dt.str, "version": 3}
        args.append(np.asarray(holder))
    return args
