"""tinydae's hot paths, three twins per op with one signature each.

``reference`` (NumPy) is the specification; ``cpu`` (numba @njit) and ``cuda``
(numba @cuda.jit on CuPy arrays) are faster twins tested against it.
``philox`` holds the Philox4x32-10 generator every random draw comes from.
"""
import os

# tinydae orders all GPU work on CuPy's current stream, so numba need not synchronise on
# the stream of every CuPy argument (a host sync per argument per launch).  Numba reads
# this when it first loads, which is why it is set here, before kernels.cpu imports numba.
os.environ.setdefault("NUMBA_CUDA_ARRAY_INTERFACE_SYNC", "0")
