"""tinydae's hot paths, three twins per op with one signature each.

``reference`` (NumPy) is the specification; ``cpu`` (numba @njit) and ``cuda``
(numba @cuda.jit on CuPy arrays) are faster twins tested against it.
``philox`` holds the Philox4x32-10 generator every random draw comes from.
"""
