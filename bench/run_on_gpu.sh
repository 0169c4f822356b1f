#!/usr/bin/env bash
# Everything that needs a real GPU, in one call (for the device tool's machine, which has
# cupy, numba-cuda, h5py, click, pytest, hypothesis and torch but no network):
#   the GPU tests, the CUDA twins against the reference on CuPy arrays, and every benchmark.
# Run from the repository root; results and logs go to $OUT (default /tmp/tinydae-gpu).
set -u
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/tinydae-gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD  # no install needed (and none possible without a network)
python - <<'PY' 2>&1 | tee "$out/info.txt"
import cupy, numba
from numba import cuda
print("cupy", cupy.__version__, "numba", numba.__version__, "cuda available:", cuda.is_available())
print(cupy.cuda.runtime.getDeviceProperties(0)["name"])
PY
python cli.py info 2>&1 | tee -a "$out/info.txt"
# gpu-marked tests, and the cudasim-marked kernel tests, which use CuPy arrays on a real GPU
python -m pytest -m "gpu or cudasim" -q -rs 2>&1 | tee "$out/gpu-tests.txt"
python cli.py bench all --backend cuda 2>&1 | tee "$out/bench.txt"
python bench/report.py > "$out/report.md"
cp bench/results/*.json "$out/"
