#!/usr/bin/env bash
# tinydae on a real GPU, in steps: each is its own command and fits one device call.
#
#   bash bench/run_on_gpu.sh STEP [ARGS...]
#
#   smoke          THE FIRST CALL: everything below that is short, in one command that ends within
#                  8 minutes by itself (each stage has a time budget; the budgets add up to 420 s).
#                  In order: versions (python, numpy, numba, numba-cuda, cuda-bindings, cupy, driver,
#                  device, CUDA_HOME, ptxas); the carried wheels in .whl/ installed into
#                  /tmp/tinydae-site when the machine's numba-cuda is older than 0.30.4; the carried
#                  bundle .cuda-bundle/ (cli.py build-cuda --arch sm_90 --out .cuda-bundle,
#                  made without a GPU) loaded, or a build here; the preflight on both launchers;
#                  train on cuda and on cpu with one seed, losses and parameters compared; sample and
#                  improve on cuda from that checkpoint; pytest -x tests/test_gpu.py; a short
#                  bench launch.  Writes at most 6 files to $OUT: smoke-<device>.log,
#                  smoke-<device>.json (each stage: exit, seconds, budget), preflight-<device>.json,
#                  bench-launch-<device>.json.  Caches and runs go to /tmp, outside $OUT.
#   preflight      versions (python, numpy, numba, numba-cuda, cupy, driver), the device and its
#                  compute capability; build-cuda for its arch (into $TINYDAE_CUDA_CACHE/bundle-ARCH);
#                  a few kernels through each launcher (cupy, numba) on CuPy arrays against the CPU
#                  twin: PASS/FAIL each, non-zero exit if one fails (bench/gpu_preflight.py)
#   tests          pytest -m gpu, then the CUDA twin tests of tests/test_kernels.py on CuPy arrays
#                  (pytest -m cudasim tests/test_kernels.py), on the default cupy launcher
#   tests-numba    the same CUDA twin tests on numba's dispatcher (TINYDAE_CUDA_LAUNCHER=numba)
#   bench-kernels  python3 cli.py bench kernels --backend cuda [ARGS]
#   bench-launch   python3 cli.py bench launch --backend cuda [ARGS]
#   bench-train    python3 cli.py bench train --backend cuda [ARGS]
#   bench-chain    python3 cli.py bench chain --backend cuda [ARGS]
#   all            every step above but smoke in turn (much longer than one device call: later
#                  calls run single steps); the failed ones are named at the end, and the exit
#                  status is non-zero if any failed
#
# For the GPU machine: Python 3.12, NumPy 2.5, cupy-cuda13x and numba-cuda preinstalled, no
# network: nothing is downloaded; it runs from this copy of the repository (PYTHONPATH) with
# python3, and only carried wheels are installed (pip install --no-index, into /tmp).  Output
# goes to $OUT (default /tmp/tinydae-gpu), named with the device:
#   STEP-<device>.log               each step's whole output
#   preflight-<device>.json         versions, device, every check
#   cuda-<device>.json              bench/results/ after a bench step (copy it back there)
#   report-<device>.md              python3 bench/report.py after a bench step
# The launch cache (TINYDAE_CUDA_CACHE) defaults to /tmp/tinydae-gpu-cache, outside $OUT: the
# device tool brings back at most 8 files per command.
# Each step is stopped after $STEP_TIMEOUT_S seconds (default 470, under 8 minutes).
set -euo pipefail

STEPS="smoke preflight tests tests-numba bench-kernels bench-launch bench-train bench-chain"
ALL_STEPS="preflight tests tests-numba bench-kernels bench-launch bench-train bench-chain"  # all: not smoke

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
  local arch
  arch=$(python3 -c "from tinydae.kernels import cuda_build as b; print(b.arch_name(b.device_arch()))" 2> /dev/null || echo sm_unknown)
  python3 bench/gpu_preflight.py --out "$OUT" --build-out "$TINYDAE_CUDA_CACHE/bundle-$arch" "$@"
}

# -- smoke: stages with time budgets ---------------------------------------------------------------

SMOKE_BUDGETS=${SMOKE_BUDGETS:-"versions:20 wheels:30 bundle:45 preflight:60 train:65 sample:35 nccl:30 pytest:90 bench:35"}
SMOKE_WORK=${SMOKE_WORK:-/tmp/tinydae-smoke}  # training runs, samples, the stage table: outside $OUT
SITE=/tmp/tinydae-site                         # where carried wheels are installed
SITE_HOOK=/tmp/tinydae-site-hook               # its sitecustomize.py makes SITE a site folder

stage() {  # stage NAME COMMAND...: run under the stage's budget, record exit and seconds
  local name=$1 budget rc=0 start ms
  shift
  budget=$(tr ' ' '\n' <<< "$SMOKE_BUDGETS" | sed -n "s/^$name://p")
  echo "== stage $name (budget ${budget} s): $*"
  start=$(date +%s%N)
  # a child bash, so that the smoke_* functions (exported) run under timeout too
  timeout --kill-after=5 "$budget" bash -c '"$@"' stage "$@" || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "error: stage $name ran past its budget of $budget s"; fi
  ms=$(( ($(date +%s%N) - start) / 1000000 ))
  printf '%s %d %d.%03d %d\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) "$budget" >> "$SMOKE_WORK/stages"
  return "$rc"
}

smoke_wheels() {  # carried wheels, only when the machine's numba-cuda is too old or not the bundle's
  local bundle=${TINYDAE_CUDA_CUBINS:-$ROOT/.cuda-bundle}
  if ! compgen -G ".whl/*.whl" > /dev/null; then
    echo "no wheels carried in .whl/ (see the README: The first 15 minutes on a GPU)"
    python3 bench/gpu_smoke.py needs-wheels "$bundle" && { echo "error: no wheel was carried for that"; return 1; }
    return 0
  fi
  python3 bench/gpu_smoke.py needs-wheels "$bundle" || return 0
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || return 1
  # A folder on PYTHONPATH is not a site folder: its .pth files (numba-cuda's redirector of
  # numba.cuda) would not run.  site.addsitedir runs them; the folder then goes first on sys.path.
  mkdir -p "$SITE_HOOK"
  printf 'import site, sys\nsite.addsitedir("%s")\nsys.path.remove("%s")\nsys.path.insert(0, "%s")\n' \
    "$SITE" "$SITE" "$SITE" > "$SITE_HOOK/sitecustomize.py"
  PYTHONPATH=$SITE_HOOK:$PYTHONPATH python3 -c "import numba_cuda
from numba import cuda
print('numba-cuda', numba_cuda.__version__, 'imports from', numba_cuda.__file__)"
}

smoke_bundle() {  # the carried bundle if it fits this device, else build one here
  local carried=${TINYDAE_CUDA_CUBINS:-$ROOT/.cuda-bundle} arch
  if python3 bench/gpu_smoke.py bundle "$carried"; then
    echo "$carried" > "$SMOKE_WORK/bundle"
    return 0
  fi
  arch=$(python3 -c "from tinydae.kernels import cuda_build as b; print(b.arch_name(b.device_arch()))") || return 1
  echo "building the kernels here instead: python3 cli.py build-cuda --arch $arch"
  python3 cli.py build-cuda --arch "$arch" --out "$TINYDAE_CUDA_CACHE/bundle-$arch" > "$SMOKE_WORK/build.log" 2>&1 \
    || { tail -5 "$SMOKE_WORK/build.log"; return 1; }
  tail -1 "$SMOKE_WORK/build.log"
  echo "$TINYDAE_CUDA_CACHE/bundle-$arch" > "$SMOKE_WORK/bundle"
}

smoke_train() {  # one small training on cuda and on cpu, same seed and data: compared
  local args=(train --data glyphs --limit 1280 --hidden 128 --epochs 2 --batch-size 64 --seed 3 --overwrite --json)
  python3 cli.py "${args[@]}" --backend cuda --out "$SMOKE_WORK/cuda" || return 1
  python3 cli.py "${args[@]}" --backend cpu --out "$SMOKE_WORK/cpu" || return 1
  python3 bench/gpu_smoke.py compare "$SMOKE_WORK/cuda/checkpoint.h5" "$SMOKE_WORK/cpu/checkpoint.h5"
}

smoke_sample() {
  local ck=$SMOKE_WORK/cuda/checkpoint.h5
  rm -f "$SMOKE_WORK"/sample.png "$SMOKE_WORK"/improve.png
  python3 cli.py sample "$ck" --backend cuda --n 256 --steps 20 --out "$SMOKE_WORK/sample.png" --json || return 1
  python3 cli.py improve "$ck" --backend cuda --from pca --n 256 --steps 5 --out "$SMOKE_WORK/improve.png" --json
}

smoke_nccl() {  # smoke_train's cuda run again, through MPI and NCCL with R = 1 (an identity all-reduce)
  local args=(train --data glyphs --limit 1280 --hidden 128 --epochs 2 --batch-size 64 --seed 3 --overwrite --json)
  python3 -c "import mpi4py.MPI; from cupy.cuda import nccl; print('mpi4py', mpi4py.__version__, 'NCCL', nccl.get_version())" \
    || return 1
  python3 cli.py --distributed mpi "${args[@]}" --backend cuda --out "$SMOKE_WORK/nccl" || return 1
  python3 bench/gpu_smoke.py compare "$SMOKE_WORK/nccl/checkpoint.h5" "$SMOKE_WORK/cuda/checkpoint.h5" || return 1
  # --bucket-mb 0: a bucket per layer, NCCL on a side stream after the compute stream's events
  python3 cli.py --distributed mpi "${args[@]}" --backend cuda --bucket-mb 0 --out "$SMOKE_WORK/nccl-buckets" || return 1
  python3 bench/gpu_smoke.py compare "$SMOKE_WORK/nccl-buckets/checkpoint.h5" "$SMOKE_WORK/cuda/checkpoint.h5"
}

step_smoke() {
  rm -rf "$SMOKE_WORK"
  mkdir -p "$SMOKE_WORK"
  rm -rf "$SITE" "$SITE_HOOK"
  export SMOKE_WORK SITE SITE_HOOK ROOT
  export -f smoke_wheels smoke_bundle smoke_train smoke_sample smoke_nccl
  local failed=0 bundle
  stage versions python3 bench/gpu_smoke.py versions || failed=1
  if python3 bench/gpu_preflight.py --require-gpu; then
    stage wheels smoke_wheels || failed=1
    if [ -f "$SITE_HOOK/sitecustomize.py" ]; then export PYTHONPATH=$SITE_HOOK:$PYTHONPATH; echo "PYTHONPATH=$PYTHONPATH"; fi
    stage bundle smoke_bundle || failed=1
    bundle=$(cat "$SMOKE_WORK/bundle" 2> /dev/null || true)
    if [ -n "$bundle" ]; then export TINYDAE_CUDA_CUBINS=$bundle; fi
    stage preflight python3 bench/gpu_preflight.py --out "$OUT" --build-out "${bundle:-$TINYDAE_CUDA_CACHE/none}" --no-build || failed=1
    stage train smoke_train || failed=1
    stage sample smoke_sample || failed=1
    stage nccl smoke_nccl || failed=1
    stage pytest python3 -m pytest -x -q -rs -p no:cacheprovider tests/test_gpu.py || failed=1
    stage bench python3 cli.py bench launch --backend cuda --repeats 5 --launches 100 --no-save --overwrite \
      --out "$OUT/bench-launch-$TINYDAE_GPU_DEVICE.json" || failed=1
  else
    failed=2
  fi
  python3 bench/gpu_smoke.py summary "$OUT/smoke-$TINYDAE_GPU_DEVICE.json" "$SMOKE_WORK/stages" || true
  return "$failed"
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
export TINYDAE_CUDA_CACHE=${TINYDAE_CUDA_CACHE:-/tmp/tinydae-gpu-cache}  # outside $OUT: few files come back
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
for s in $ALL_STEPS; do
  run_step "$s" || failed+=("$s")
done
if [ "${#failed[@]}" -gt 0 ]; then
  echo "failed steps: ${failed[*]} (logs in $OUT)" >&2
  exit 1
fi
echo "every step passed (logs and results in $OUT)"
