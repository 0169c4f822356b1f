"""Shared pieces of the benchmarks: timers, device naming, the results file."""
import datetime
import json
import os
import re
import statistics
import time

import numpy as np

# TINYDAE_BENCH_RESULTS redirects --save (the README test runs the README's bench commands
# without touching the committed results).
RESULTS_DIR = os.environ.get("TINYDAE_BENCH_RESULTS") or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                      "results")


def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch


def jax_or_none():
    try:
        import jax
    except ImportError:
        return None
    return jax


def strongest_peer(row, peers, unit="ms"):
    """-> (id, time) of the fastest peer timed in `row` (its time under f"{id}_{unit}"), or
    (None, None) when none was: the peer the headline ratio is taken against."""
    timed = {p: row[f"{p}_{unit}"] for p in peers if f"{p}_{unit}" in row}
    if not timed:
        return None, None
    best = min(timed, key=timed.get)
    return best, timed[best]


def peer_ratios(row, peers):
    """The console's "x each peer" column: "label ratio" per peer timed in `row` (x_{id}),
    "label failed" per peer that raised ({id}_error)."""
    return ", ".join(f"{label} {row[f'x_{name}']:.2f}" if f"x_{name}" in row else f"{label} failed"
                     for name, label in peers.items() if f"x_{name}" in row or f"{name}_error" in row)


# Adam reads params, grads, m and v and writes params, m and v: 7 buffers of P values per step.
ADAM_BUFFERS_MOVED = 7


def lower_bound_ms(gemm_floor_ms, n_params, bandwidth_GBps, itemsize=4):
    """A training step's lower bound in ms: its matrix products alone (the GEMM floor, timed)
    plus the optimizer's memory traffic at the measured streaming bandwidth,

        bound = gemm_floor + 7 * itemsize * P / bandwidth

    (Adam: 7 buffers of P parameters, ADAM_BUFFERS_MOVED; the bandwidth counts read + write
    bytes, bandwidth_entries).  Everything else in a step (corruption, activations, the loss)
    is left out.
    >>> round(lower_bound_ms(7.0, 1_000_000, 28.0), 6)   # 28 MB at 28 GB/s = 1 ms
    8.0
    """
    return gemm_floor_ms + ADAM_BUFFERS_MOVED * itemsize * n_params / (bandwidth_GBps * 1e9) * 1e3


def _all_cores_streams():
    from numba import njit, prange

    @njit(parallel=True)
    def copy(dst, src):
        for i in prange(src.size):
            dst[i] = src[i]

    @njit(parallel=True)
    def add_into(dst, src):
        for i in prange(src.size):
            dst[i] += src[i]
    return copy, add_into


def bandwidth_entries(backend, n):
    """-> ({name: (fn, timer)} streaming passes over two n-element float32 arrays, to time with
    the other contenders; {name: bytes one call reads + writes}).

    A lower bound needs the fastest of them: np.copyto runs on one core while tinydae's Adam
    runs on all; and a copy's writes first read the destination's cache lines (uncounted
    traffic) where `dst += src`, like Adam, writes only lines it has read.  Two quick
    measurements on the 2-core Xeon (idle / loaded), GB/s: np.copyto 30 / 22, all-cores copy
    60 / 26, all-cores dst += src 85 / 39, and tinydae's own Adam 66 / 30: a copy alone would
    not give a bound."""
    xp = backend.xp
    src = xp.ones(n, np.float32)
    dst = xp.zeros_like(src)
    timer = backend_timer(backend)
    if backend.name == "cpu":
        copy, add_into = _all_cores_streams()
        entries = {"np.copyto": (lambda: np.copyto(dst, src), timer),
                   "copy all cores": (lambda: copy(dst, src), timer),
                   "dst += src all cores": (lambda: add_into(dst, src), timer)}
    else:
        entries = {"copyto": (lambda: xp.copyto(dst, src), timer),
                   "dst += src": (lambda: xp.add(dst, src, out=dst), timer)}
    nbytes = {name: (3 if "+=" in name else 2) * src.nbytes for name in entries}
    return entries, nbytes


def one_call_timer(sync, events=None):
    """-> time(fn): seconds of one fn() call, on the host clock after sync(), or between device
    events (`events` () -> (start, stop, elapsed_s)) on a GPU."""
    def time_one(fn):
        if events is None:
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            return time.perf_counter() - t0
        start, stop, elapsed_s = events()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return elapsed_s(start, stop)
    return time_one


def backend_timer(backend):
    """One-call timer for a tinydae backend; CUDA events on the GPU."""
    if backend.name != "cuda":
        return one_call_timer(backend.sync)
    cupy = backend.xp
    return one_call_timer(backend.sync, lambda: (cupy.cuda.Event(), cupy.cuda.Event(),
                                                 lambda a, b: cupy.cuda.get_elapsed_time(a, b) / 1e3))


def torch_timer(torch, device):
    """One-call timer for a PyTorch peer; torch.cuda events on the GPU."""
    if device != "cuda":
        return one_call_timer(lambda: None)
    return one_call_timer(torch.cuda.synchronize, lambda: (
        torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True),
        lambda a, b: a.elapsed_time(b) / 1e3))


def interleaved_times(entries, repeats, warmup, rounds=3, pause_s=0.2, settle=2):
    """entries: {name: (fn, timer)} -> {name: [seconds of each timed fn() call]}.

    After `warmup` calls of each contender, `rounds` rounds each run every contender in turn:
    a pause of `pause_s`, `settle` untimed calls, then its share of the `repeats` timed calls.
    Rounds spread a change in the machine's load (this is a shared machine: kernel medians an
    hour apart differed by up to 2x) over every contender, so their ratios stay meaningful.
    Blocks rather than single calls, and the pause, because on a small CPU each library's
    thread pool spins for a while after its last call (OpenBLAS's for up to ~0.1 s) and slows
    whatever runs next: PyTorch's eager step took 6x longer when alternated call by call with
    tinydae's on 2 cores (measured).
    """
    for fn, _ in entries.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in entries}
    per_round = [repeats // rounds + (r < repeats % rounds) for r in range(rounds)]
    for count in per_round:
        for name, (fn, timer) in entries.items():
            if not count:
                continue
            time.sleep(pause_s)
            for _ in range(settle):
                fn()
            times[name] += [timer(fn) for _ in range(count)]
    return times


def interleaved_medians(entries, repeats, warmup, rounds=3, pause_s=0.2, settle=2):
    """entries: {name: (fn, timer)} -> {name: median seconds of one fn() call} (interleaved_times)."""
    return {name: statistics.median(t) for name, t in
            interleaved_times(entries, repeats, warmup, rounds, pause_s, settle).items()}


def median_seconds(fn, repeats, warmup, backend):
    """Median seconds of fn() alone on a tinydae backend (after `warmup` calls)."""
    return interleaved_medians({"fn": (fn, backend_timer(backend))}, repeats, warmup, rounds=1, pause_s=0, settle=0)["fn"]


def torch_median_seconds(torch, fn, repeats, warmup, device):
    """The same for a PyTorch peer."""
    return interleaved_medians({"fn": (fn, torch_timer(torch, device))}, repeats, warmup, rounds=1, pause_s=0, settle=0)["fn"]


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def versions():
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for pkg in ("tinydae", "numpy", "numba", "numba-cuda", "cupy-cuda12x", "cupy-cuda13x", "torch", "jax", "jaxlib"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


RUNS_KEPT = 3


def save_section(backend, section, payload, path=None):
    """Merge payload under `section` into bench/results/<device>.json; returns the path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = path or os.path.join(RESULTS_DIR, f"{slug(backend.name + '-' + backend.device)}.json")
    data = {}
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
    data.update(device=backend.device, backend=backend.name)
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    # The last RUNS_KEPT saves' rows stay beside the newest, so that the README's tables give
    # the median and range over runs (bench/report.py), not one run's figures.
    old = data.get(section) or {}
    runs = old.get("runs") or ([dict(date=old["date"], rows=old["rows"])] if "rows" in old and "date" in old else [])
    runs = (runs + [dict(date=date, rows=payload.get("rows", []))])[-RUNS_KEPT:]
    data[section] = dict(payload, date=date, versions=versions(), runs=runs)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
    os.replace(tmp, path)
    return path
