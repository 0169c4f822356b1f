#!/usr/bin/env bash
# tinydae on a real GPU, in steps: each is its own command and fits one device call.
#
#   bash bench/run_on_gpu.sh STEP [ARGS...]
#
#   preflight      versions (python, numpy, numba, numba-cuda, cupy, driver), the device and its
#                  compute capability; build-cuda for its arch into $OUT/cuda-build; a few kernels
#                  through each launcher (cupy, numba) on CuPy arrays against the CPU twin:
#                  PASS/FAIL each, non-zero exit if one fails (bench/gpu_preflight.py)
#   tests          pytest -m gpu, then the CUDA twin tests of tests/test_kernels.py on CuPy arrays
#                  (pytest -m cudasim tests/test_kernels.py), on the default cupy launcher
#   tests-numba    the same CUDA twin tests on numba's dispatcher (TINYDAE_CUDA_LAUNCHER=numba)
#   bench-kernels  python3 cli.py bench kernels --backend cuda [ARGS]
#   bench-launch   python3 cli.py bench launch --backend cuda [ARGS]
#   bench-train    python3 cli.py bench train --backend cuda [ARGS]
#   bench-chain    python3 cli.py bench chain --backend cuda [ARGS]
#   all            every step above in turn (longer than one device call); the failed ones are
#                  named at the end, and the exit status is non-zero if any failed
#
# For the GPU machine: Python 3.12, NumPy 2.5, cupy-cuda13x and numba-cuda preinstalled, no
# network, so nothing is installed: it runs from this copy of the repository (PYTHONPATH) with
# python3.  Everything goes to $OUT (default /tmp/tinydae-gpu), named with the device:
#   STEP-<device>.log               each step's whole output
#   preflight-<device>.json         versions, device, every check
#   cuda-build/                     build-cuda's cubins and manifest.json (the launch cache:
#                                   TINYDAE_CUDA_CACHE points here for every step)
#   cuda-<device>.json              bench/results/ after a bench step (copy it back there)
#   report-<device>.md              python3 bench/report.py after a bench step
# Each step is stopped after $STEP_TIMEOUT_S seconds (default 470, under 8 minutes).
set -euo pipefail

STEPS="preflight tests tests-numba bench-kernels bench-launch bench-train bench-chain"

usage() {
  sed -n '2,/^set -euo pipefail/p' "$SELF" | sed '$d; s/^# \{0,1\}//'
}

SELF=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
ROOT=$(dirname "$(dirname "$SELF")")
cd "$ROOT"

# -- the steps (run in a child bash: see run_step) ------------------------------------------

require_gpu() {
  python3 bench/gpu_preflight.py --require-gpu
}

collect_results() {  # after a bench step: its results file and the rendered tables, into $OUT
  local f
  for f in bench/results/cuda-*.json; do
    if [ -e "$f" ]; then cp "$f" "$OUT/"; fi
  done
  python3 bench/report.py > "$OUT/report-$TINYDAE_GPU_DEVICE.md"
  echo "results: $OUT/report-$TINYDAE_GPU_DEVICE.md and $OUT/cuda-*.json"
}

step_preflight() {
  python3 cli.py info
  python3 bench/gpu_preflight.py --out "$OUT" --build-out "$TINYDAE_CUDA_CACHE" "$@"
}

require_pytest() {
  python3 -c "import pytest, hypothesis" 2> /dev/null \
    || { echo "error: the tests need pytest and hypothesis, which this python3 lacks" >&2; return 2; }
}

# tests/test_kernels.py's "cuda" twin runs on CuPy arrays when a GPU is present (-m cudasim
# selects those tests there).  tests/test_cudasim.py is not run: it needs NUMBA_ENABLE_CUDASIM=1
# (NumPy arrays as device arrays), which cannot drive CuPy.  tests/test_cuda_build.py is not
# run either: CI runs it, and the preflight's build-cuda covers this machine's toolchain.
step_tests() {
  require_gpu
  require_pytest
  local rc=0
  echo "== pytest -m gpu"
  python3 -m pytest -m gpu -q -rs "$@" || rc=1
  echo "== CUDA twins on CuPy arrays, cupy launcher"
  TINYDAE_CUDA_LAUNCHER=cupy python3 -m pytest -m cudasim -q -rs tests/test_kernels.py "$@" || rc=1
  return "$rc"
}

step_tests_numba() {
  require_gpu
  require_pytest
  echo "== CUDA twins on CuPy arrays, numba launcher"
  TINYDAE_CUDA_LAUNCHER=numba python3 -m pytest -m cudasim -q -rs tests/test_kernels.py "$@"
}

bench_step() {  # bench_step NAME ARGS...
  local name=$1
  shift
  require_gpu
  python3 cli.py bench "$name" --backend cuda --save "$@"  # --save: bench/results/, collected below
  collect_results
}

step_bench_kernels() { bench_step kernels "$@"; }
step_bench_launch() { bench_step launch "$@"; }
step_bench_train() { bench_step train "$@"; }
step_bench_chain() { bench_step chain "$@"; }

# -- dispatch -------------------------------------------------------------------------------

if [ "${1:-}" = "--in-step" ]; then  # internal: run_step's child
  shift
  step=$1
  shift
  "step_${step//-/_}" "$@"
  exit
fi

step=${1:-}
case "$step" in
  -h | --help | help)
    usage
    exit 0
    ;;
  "")
    usage >&2
    echo "error: name a step: $STEPS all" >&2
    exit 2
    ;;
esac
shift
if [ "$step" != all ] && ! [[ " $STEPS " == *" $step "* ]]; then
  echo "error: unknown step '$step'; choose one of: $STEPS all" >&2
  exit 2
fi
if [ "$step" = all ] && [ $# -gt 0 ]; then
  echo "error: 'all' takes no arguments (pass them to a single step)" >&2
  exit 2
fi
command -v python3 > /dev/null || { echo "error: python3 is not on PATH" >&2; exit 2; }

export OUT=${OUT:-/tmp/tinydae-gpu}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}  # no install (and none possible offline)
export PYTHONUNBUFFERED=1  # the logs keep stdout and stderr in order
export TINYDAE_CUDA_CACHE=${TINYDAE_CUDA_CACHE:-$OUT/cuda-build}
unset NUMBA_ENABLE_CUDASIM  # the simulator would take the CUDA tests off the GPU
export STEP_TIMEOUT_S=${STEP_TIMEOUT_S:-470}
TINYDAE_GPU_DEVICE=$(python3 bench/gpu_preflight.py --device-slug 2> /dev/null || echo no-gpu)
export TINYDAE_GPU_DEVICE

run_step() {  # run_step STEP ARGS...: a child bash, under the time limit, its output also in the log
  local log="$OUT/$1-$TINYDAE_GPU_DEVICE.log"
  local limit=()
  if command -v timeout > /dev/null; then limit=(timeout --kill-after=15 "$STEP_TIMEOUT_S"); fi
  echo "== step $1 on $TINYDAE_GPU_DEVICE, $(date -u +%Y-%m-%dT%H:%M:%SZ); log $log"
  local rc=0
  ${limit[@]+"${limit[@]}"} bash "$SELF" --in-step "$@" 2>&1 | tee "$log" || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "error: step $1 ran past STEP_TIMEOUT_S=$STEP_TIMEOUT_S seconds and was stopped" | tee -a "$log" >&2
  fi
  echo "== step $1: exit $rc"
  return "$rc"
}

if [ "$step" != all ]; then
  run_step "$step" "$@"
  exit
fi
failed=()
for s in $STEPS; do
  run_step "$s" || failed+=("$s")
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "failed steps: ${failed[*]} (logs in $OUT)" >&2
  exit 1
fi
echo "every step passed (logs and results in $OUT)"
