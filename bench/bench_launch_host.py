"""The CuPy launcher's own host cost per launch, measured without a GPU.

Device arrays are stood in by bench/cupy_standin.DeviceArray (NumPy memory with CuPy's
attributes; CuPy keeps the same values in C fields, so reading them should cost about the same)
and the loaded kernel is a function that does nothing, so what is timed is the launcher's own
work: the argument check (memo key and lookup), the function lookup and flatten.  Beside it:

  before     what CupyLauncher.launch did per launch until issue 18: arg_key (dtype.name, isinstance
             per argument), the variant lookup, the function lookup keyed on them, flatten by
             isinstance; replayed here from that code
  launcher   CupyLauncher.launch now (kernels/cuda_launch.py)
  packing    CuPy's own packing of the flat values (cupy._core._scalar.CScalar per value, what
             cupy.cuda.function._launch does before cuLaunchKernel); needs CuPy installed

for the SGD and Adam updates (1,024 elements) and for every launch of one training step of the
784-1000-1000-1000-784 model (batch 64, Adam), recorded from the CUDA twins in numba's
simulator (nothing runs: the launches are recorded, then replayed).  Microseconds per launch,
median [min-max] over the repeats; the machine is shared and noisy, so compare within a run.

    NUMBA_ENABLE_CUDASIM=1 python bench/bench_launch_host.py [--repeats 15] [--launches 2000]
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import cupy_standin  # noqa: E402
from bench.bench_launch import OPS, host_arrays, recorded_launch  # noqa: E402
from tinydae.kernels import cuda_launch  # noqa: E402


class _Recorder:
    name = "record"

    def __init__(self):
        self.launches = []

    def launch(self, k, blocks, threads, args):
        self.launches.append((k, blocks, threads, tuple(cupy_standin.as_device(a) for a in args)))


def step_launches(batch=64, hidden=(1000, 1000)):
    """Every launch one training step makes (corruption, forward, loss, backward, Adam), recorded."""
    import tinydae as td
    import tinydae.kernels.cuda as kc
    from tinydae.backend import Backend
    from tinydae.corruption import Corruption

    backend = Backend("record", np, kc, "recording")
    model = td.DAE(784, hidden=hidden, seed=0, backend=backend)
    opt = td.Adam(model)
    x = np.random.default_rng(0).uniform(0, 1, (batch, 784)).astype(np.float32)
    saved, kc.LAUNCHER = kc.LAUNCHER, _Recorder()
    try:
        total = np.zeros(1)
        noisy = Corruption.parse("gaussian:0.3").apply(backend, x, 0, 0)
        model.loss_sum_and_grad(noisy, x, total)
        opt.step()
        return kc.LAUNCHER.launches
    finally:
        kc.LAUNCHER = saved


def before_launch(functions, k, blocks, threads, args):
    """CupyLauncher.launch as it was before issue 18 (commit fa0025e), with a function that does nothing."""
    key = (k.name, cuda_launch.arg_key(args), 0)
    fn = functions.get(key)
    if fn is None:
        k.variant(args)
        fn = functions[key] = lambda grid, block, flat: None
    flat = []
    for a in args:
        if isinstance(a, np.generic):
            flat.append(a)
        elif isinstance(a, bool):
            flat.append(np.bool_(a))
        else:
            ptr = a.data.ptr if hasattr(a.data, "ptr") else a.__cuda_array_interface__["data"][0]
            flat += [0, 0, a.size, a.itemsize, ptr, *a.shape, *a.strides]
    fn((blocks,), (threads,), tuple(flat))


def packing(launches):
    """-> one call that packs every launch's flat values as CuPy does, or None without CuPy."""
    try:
        from cupy._core._scalar import CScalar
    except ImportError:
        return None
    flats = [tuple(cuda_launch.flatten(args)) for _, _, _, args in launches]

    def run():
        for flat in flats:
            [CScalar(v) for v in flat]
    return run


def time_per_launch(run, n_launches, repeats, loops):
    """-> [us per launch] over `repeats` timings of `loops` calls of run (each making n_launches)."""
    run()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(loops):
            run()
        out.append((time.perf_counter() - t) / (loops * n_launches) * 1e6)
    return out


def measure(name, launches, repeats, total_launches):
    launcher, functions = cupy_standin.NoLaunch(), {}
    loops = max(1, total_launches // len(launches))

    def now():
        for k, b, t, args in launches:
            launcher.launch(k, b, t, args)

    def before():
        for k, b, t, args in launches:
            before_launch(functions, k, b, t, args)

    row = dict(case=name, launches=len(launches),
               parameters=sum(len(cuda_launch.flatten(a)) for *_, a in launches) / len(launches))
    for label, run in (("before", before), ("launcher", now), ("packing", packing(launches))):
        if run is not None:
            row[label] = time_per_launch(run, len(launches), repeats, loops)
    return row


def fmt(us):
    return f"{statistics.median(us):6.2f} [{min(us):.2f}-{max(us):.2f}]"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--launches", type=int, default=2000, help="launches per timing")
    ap.add_argument("--hidden", default="1000,1000", help="the step's model: 784-H-...-784")
    args = ap.parse_args(argv)
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        print("error: run under NUMBA_ENABLE_CUDASIM=1 (the twins' launches are recorded in the simulator)",
              file=sys.stderr)
        return 2
    if args.repeats < 1 or args.launches < 1:
        print("error: --repeats and --launches must be positive", file=sys.stderr)
        return 2
    import tinydae.kernels.cuda as kc

    cases = []
    for op in OPS:
        k, b, t, a = recorded_launch(kc, op, [cupy_standin.to_device(x) for x in host_arrays(op)])
        cases.append((OPS[op]["label"], [(k, b, t, tuple(cupy_standin.as_device(v) for v in a))]))
    hidden = tuple(int(h) for h in args.hidden.split(","))
    cases.append((f"train step 784-{'-'.join(map(str, hidden))}-...-784 b64", step_launches(64, hidden)))
    print(f"host us per launch, median [min-max] of {args.repeats} timings of ~{args.launches} launches "
          f"(python {sys.version.split()[0]}, numpy {np.__version__})")
    print(f"{'case':34s} {'launches':>8s} {'params':>7s} {'before':>22s} {'launcher':>22s} {'CuPy packing':>22s}")
    rows = []
    for name, launches in cases:
        row = measure(name, launches, args.repeats, args.launches)
        rows.append(row)
        print(f"{name:34s} {row['launches']:8d} {row['parameters']:7.1f} {fmt(row['before']):>22s} "
              f"{fmt(row['launcher']):>22s} {fmt(row['packing']) if 'packing' in row else 'no CuPy':>22s}")
    step = rows[-1]
    print(f"per training step ({step['launches']} launches): before "
          f"{statistics.median(step['before']) * step['launches']:.0f} us, launcher "
          f"{statistics.median(step['launcher']) * step['launches']:.0f} us"
          + (f", CuPy packing {statistics.median(step['packing']) * step['launches']:.0f} us" if "packing" in step else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
