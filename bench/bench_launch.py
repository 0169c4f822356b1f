"""Launch-overhead benchmark: host microseconds per CUDA kernel launch, tinydae's launchers and CuPy's.

Two small kernels on float32 arrays of 1,024 elements (the GPU runs each in a few
microseconds, so the host's cost of a launch is what shows): the SGD update (3 data arrays, 4
scalars) and the Adam update (4 data arrays, 11 scalars: many kernel parameters to flatten).
Every contender launches on the same CuPy arrays, on CuPy's current stream, and launches
exactly what the twin launches (its kernel, grid and arguments are recorded from one call):

  tinydae cupy      the kernels.cuda twin (argument checks, scalars, launch), CuPy launcher
  tinydae numba     the same twin on numba-cuda's dispatcher (set_launcher("numba"))
  cupy launcher     CupyLauncher.launch with ready arguments: the launcher without the twin
  raw kernel        the launcher's own cubin as a cupy RawKernel, called with arguments flattened
                    once in advance: the floor of "tinydae cupy"
  numba dispatcher  kernel[blocks, threads, stream](*args), numba's dispatcher called directly
  cupy elementwise  a cupy.ElementwiseKernel doing the same update (CuPy's own kernels' cost)

Two timings of each, on the host clock: "host" is a block of L launches back to back with no
sync, divided by L (what a launch costs the Python thread; L = 200 keeps the launch queue
short, so the host should not wait for the GPU); "sync" is L launches each followed by
a stream synchronisation, divided by L (launch, run and the round trip).  The contenders are
timed in interleaved rounds (bench/common.py); medians and [min, max] over the timed blocks.
Before timing, each contender runs once on copies of the arrays and its result is compared
with the CPU twin's (kernels.cpu): all six do the same work.

    python bench/bench_launch.py [--repeats 20] [--launches 200] [--no-save]
    python cli.py bench launch ...
Needs a CUDA GPU (--backend cuda).  Results go to bench/results/cuda-<device>.json (section "launch").
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import interleaved_times, save_section  # noqa: E402
from bench.gpu_preflight import compare  # noqa: E402
from tinydae.kernels.common import adam_scalars, sgd_scalars  # noqa: E402
from tinydae.backend import get_backend  # noqa: E402
from tinydae.errors import ConfigError, TinyDAEError  # noqa: E402

ELEMENTS = 1024
LAUNCHES = 200  # per timed block

# op -> its twin, the twin's arrays and other arguments (nesterov and decoupled weight decay
# off: the elementwise peers implement that path only), and its scalars in the data dtype
OPS = {
    "sgd": dict(label="sgd update", twin="sgd_update", arrays=("params", "grads", "velocity"),
                args=(1e-2, 0.9, False, 1e-4), scalars=sgd_scalars),
    "adam": dict(label="adam update", twin="adam_update", arrays=("params", "grads", "m", "v"),
                 args=(1e-3, 0.9, 0.999, 1e-8, 1e-4, False, 3), scalars=adam_scalars),
}

CONTENDERS = {
    "tinydae cupy": "kernels.cuda twin call on the CuPy launcher (cubin, cupy.RawModule)",
    "tinydae numba": "kernels.cuda twin call on numba-cuda's dispatcher",
    "cupy launcher": "CupyLauncher.launch with ready arguments (no twin checks)",
    "raw kernel": "the same cubin as a cupy RawKernel, arguments flattened in advance (floor of tinydae cupy)",
    "numba dispatcher": "kernel[blocks, threads, stream](*args) with ready arguments",
    "cupy elementwise": "cupy.ElementwiseKernel doing the same update",
}
FLOOR = "raw kernel"

# CuPy ElementwiseKernel peers: kernels/scalar.py's sgd_element / adam_element (no nesterov,
# coupled weight decay), in the same order of operations.
ELEMENTWISE = {
    "sgd": ("T g, T lr, T momentum, T wd", "T p, T vel",
            "T gw = g + wd * p; vel = momentum * vel + gw; p = p - lr * vel;"),
    "adam": ("T g, T lr, T b1, T one_minus_b1, T b2, T one_minus_b2, T eps, T wd, T c1, T c2",
             "T p, T m, T v",
             "T gw = g + wd * p; m = b1 * m + one_minus_b1 * gw; v = b2 * v + one_minus_b2 * gw * gw; "
             "p = p - lr * (m / c1) / (sqrt(v / c2) + eps);"),
}


def host_arrays(op, n=ELEMENTS, seed=0):
    """The op's arrays on the host (float32; Adam's second moment v >= 0)."""
    rng = np.random.default_rng(seed)
    arrays = [rng.normal(size=n).astype(np.float32) for _ in OPS[op]["arrays"]]
    if op == "adam":
        arrays[3] = np.abs(arrays[3])
    return arrays


def twin_call(K, op, arrays):
    """-> () -> None: the kernels module K's twin of op, on these arrays."""
    fn, args = getattr(K, OPS[op]["twin"]), (*arrays, *OPS[op]["args"])
    return lambda: fn(*args)


class Recorder:
    """A stand-in launcher that records the launches a twin makes instead of making them."""

    name = "record"

    def __init__(self):
        self.launches = []

    def launch(self, k, blocks, threads, args):
        self.launches.append((k, blocks, threads, tuple(args)))


def recorded_launch(K, op, arrays):
    """-> (kernel, blocks, threads, args): the one launch the twin of op makes on these arrays,
    exactly as it would hand it to a launcher (so the contenders below launch what the twin
    launches, whatever the kernel's parameters)."""
    saved, recorder = K.LAUNCHER, Recorder()
    K.LAUNCHER = recorder
    try:
        twin_call(K, op, arrays)()
    finally:
        K.LAUNCHER = saved
    if len(recorder.launches) != 1:
        raise RuntimeError(f"the {op} twin made {len(recorder.launches)} launches; this benchmark expects one")
    return recorder.launches[0]


def elementwise_args(op, arrays):
    """ElementwiseKernel arguments: inputs, then the arrays it updates; scalars in the data dtype."""
    scalars = OPS[op]["scalars"](arrays[0].dtype, *OPS[op]["args"])
    if op == "sgd":
        lr, momentum, nesterov, wd = scalars
        assert not nesterov
        return (arrays[1], lr, momentum, wd, arrays[0], arrays[2])
    lr, b1, omb1, b2, omb2, eps, wd, _lr_wd, decoupled, c1, c2 = scalars
    assert not decoupled
    return (arrays[1], lr, b1, omb1, b2, omb2, eps, wd, c1, c2, arrays[0], arrays[2], arrays[3])


def expected(op, host):
    """The CPU twin's result (kernels.cpu) on copies of the host arrays."""
    import tinydae.kernels.cpu as kcpu

    out = [a.copy() for a in host]
    twin_call(kcpu, op, out)()
    return out


def check(make, before, host, to_dev, to_host, want, names):
    """Run one contender once on fresh device copies of `host` -> (agrees, max |diff|, detail):
    every array (`names`) against `want`, the CPU twin's result."""
    dev = [to_dev(a.copy()) for a in host]
    call = make(dev)
    before()
    call()
    worst, details = 0.0, []
    for name, got, exp in zip(names, [to_host(a) for a in dev], want):
        ok, diff, detail = compare(got, exp, rtol=2e-6, atol=1e-6)  # float32 twins' tolerance
        worst = max(worst, diff)
        if not ok:
            details.append(f"{name}: {detail}")
    return not details, worst, "; ".join(details) or "agrees"


def _one_line(e):
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}"


def host_timer(sync):
    """Seconds of one fn() call on the host clock, from an idle stream, not waiting for the GPU
    at the end (the stream is drained after the clock stops, so each block starts idle)."""
    def time_one(fn):
        sync()
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        sync()
        return seconds
    return time_one


def measure(contenders, sync, launches=LAUNCHES, repeats=20, warmup=2, rounds=3, pause_s=0.05):
    """contenders: {name: (call, before)} -> {name: {"host": [us per launch...], "sync": [...]}}.

    Each timed block calls before() once (it selects the launcher), then `launches` launches:
    back to back ("host"), or each followed by sync() ("sync"); seconds / launches, in us.
    """
    entries = {}
    for name, (call, before) in contenders.items():
        def host_block(call=call, before=before):
            before()
            for _ in range(launches):
                call()

        def sync_block(call=call, before=before):
            before()
            for _ in range(launches):
                call()
                sync()
        entries[(name, "host")] = (host_block, host_timer(sync))
        entries[(name, "sync")] = (sync_block, host_timer(sync))
    times = interleaved_times(entries, repeats, warmup, rounds=rounds, pause_s=pause_s, settle=1)
    out = {}
    for (name, mode), seconds in times.items():
        out.setdefault(name, {})[mode] = [s / launches * 1e6 for s in seconds]
    return out


def summarize(op, per_contender, checks, errors):
    """-> rows: medians and ranges, x the floor, the agreement check, or the contender's error."""
    floor = per_contender.get(FLOOR)
    floor_us = statistics.median(floor["host"]) if floor else None
    rows = []
    for name in CONTENDERS:
        row = dict(op=OPS[op]["label"], contender=name)
        if name in errors:
            rows.append(dict(row, error=errors[name]))
            continue
        for mode in ("host", "sync"):
            us = per_contender[name][mode]
            row.update({f"{mode}_us": statistics.median(us), f"{mode}_us_min": min(us), f"{mode}_us_max": max(us)})
        if floor_us:
            row["x_floor"] = row["host_us"] / floor_us
        agrees, diff, detail = checks[name]
        row.update(agrees=agrees, max_abs_diff=diff, check=detail)
        rows.append(row)
    return rows


def cuda_contenders(op, K, cupy, launchers, stream):
    """{name: (make(arrays) -> one launch, before)} for the GPU contenders of op."""
    from tinydae.kernels.cuda_launch import flatten

    cupy_launcher, numba_launcher = launchers
    nothing = lambda: None  # noqa: E731

    def use(launcher):
        def before():
            K.LAUNCHER = launcher  # read by every twin call (kernels/cuda.py: _launch)
        return before

    def raw(arrays):
        k, blocks, threads, args = recorded_launch(K, op, arrays)
        fn, flat = cupy_launcher.function(k, args), tuple(flatten(args))  # the launcher's own cubin
        return lambda: fn((blocks,), (threads,), flat)

    def launcher_call(arrays):
        k, blocks, threads, args = recorded_launch(K, op, arrays)
        return lambda: cupy_launcher.launch(k, blocks, threads, args)

    def dispatcher(arrays):
        k, blocks, threads, args = recorded_launch(K, op, arrays)
        return lambda: k.dispatcher[blocks, threads, stream](*args)

    ins, outs, body = ELEMENTWISE[op]
    elementwise_kernel = cupy.ElementwiseKernel(ins, outs, body, f"tinydae_bench_{op}")

    def elementwise(arrays):
        args = elementwise_args(op, arrays)
        return lambda: elementwise_kernel(*args)

    return {
        "tinydae cupy": (lambda arrays: twin_call(K, op, arrays), use(cupy_launcher)),
        "tinydae numba": (lambda arrays: twin_call(K, op, arrays), use(numba_launcher)),
        "cupy launcher": (launcher_call, nothing),
        "raw kernel": (raw, nothing),
        "numba dispatcher": (dispatcher, nothing),
        "cupy elementwise": (elementwise, nothing),
    }


def run(backend="cuda", repeats=20, launches=LAUNCHES, warmup=2, pause_s=0.05, elements=ELEMENTS, log=print):
    """The benchmark on a CUDA backend (BackendUnavailable without one) -> the result dict."""
    backend = get_backend(backend)
    if backend.name != "cuda":
        raise ConfigError(f"bench launch times CUDA kernel launches; the {backend.name} backend has none")
    from tinydae.kernels.cuda_launch import ptx_param_types

    cupy, K = backend.xp, backend.kernels
    saved = K.LAUNCHER
    try:
        K.set_launcher("cupy")
        cupy_launcher = K.LAUNCHER
        K.set_launcher("numba")
        numba_launcher = K.LAUNCHER
        stream = numba_launcher._stream()  # numba's handle on CuPy's current stream
        rows, grids = [], {}
        for op in OPS:
            host = host_arrays(op, elements)
            k, blocks, threads, args = recorded_launch(K, op, [cupy.asarray(a) for a in host])
            grids[OPS[op]["label"]] = dict(kernel=k.name, blocks=blocks, threads=threads, arguments=len(args),
                                           parameters=len(ptx_param_types(k.parsed[k.variant(args)])))
            want = expected(op, host)
            made = cuda_contenders(op, K, cupy, (cupy_launcher, numba_launcher), stream)
            arrays = [cupy.asarray(a) for a in host]  # the arrays every contender launches on
            timed, checks, errors = {}, {}, {}
            for name, (make, before) in made.items():
                try:  # compiles or loads the kernel; a contender that cannot run is reported, not fatal
                    checks[name] = check(make, before, host, cupy.asarray, cupy.asnumpy, want,
                                         OPS[op]["arrays"])
                    timed[name] = (make(arrays), before)
                except Exception as e:
                    errors[name] = _one_line(e)
            backend.sync()
            per_contender = measure(timed, backend.sync, launches, repeats, warmup, pause_s=pause_s) if timed else {}
            for row in summarize(op, per_contender, checks, errors):
                rows.append(row)
                log(format_row(row))
    finally:
        K.LAUNCHER = saved
    return dict(backend=backend.name, device=backend.device, elements=elements, dtype="float32",
                grid=grids, launches=launches, repeats=repeats, floor=FLOOR,
                contenders=CONTENDERS, rows=rows)


HEADER = (f"{'op':12s} {'contender':17s} {'host us/launch [range]':>24s} {'x floor':>8s} "
          f"{'sync us/launch [range]':>24s}  vs CPU twin")


def _us(r, mode):
    return f"{r[mode + '_us']:.2f} [{r[mode + '_us_min']:.2f}-{r[mode + '_us_max']:.2f}]"


def format_row(r):
    if "error" in r:
        return f"{r['op']:12s} {r['contender']:17s} failed: {r['error']}"
    x = f"{r['x_floor']:.2f}" if "x_floor" in r else "-"
    agree = "agrees" if r["agrees"] else f"MISMATCH ({r['check']})"
    return f"{r['op']:12s} {r['contender']:17s} {_us(r, 'host'):>24s} {x:>8s} {_us(r, 'sync'):>24s}  {agree}"


def format_table(result):
    lines = [f"launch overhead on {result['backend']}: {result['device']}  (float32, {result['elements']:,} "
             f"elements; median [min-max] of {result['repeats']} blocks of {result['launches']} launches; "
             f"x floor = host time / the {result['floor']}'s)", HEADER]
    lines += [format_row(r) for r in result["rows"]]
    lines += [f"  {name}: {what}" for name, what in result["contenders"].items()]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="cuda", choices=["cuda"])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--launches", type=int, default=LAUNCHES)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    try:
        backend = get_backend(args.backend)
        print(HEADER)
        result = run(backend, args.repeats, args.launches)
    except TinyDAEError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    print(format_table(result).splitlines()[0])
    if not args.no_save:
        print("saved", save_section(backend, "launch", result))


if __name__ == "__main__":
    main()
