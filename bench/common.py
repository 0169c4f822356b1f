"""Shared pieces of the benchmarks: timers, device naming, the results file."""
import datetime
import json
import os
import re
import statistics
import time

import numpy as np

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _median(fn, repeats, warmup, sync, events):
    """Median seconds of fn() after warm-up; `events` () -> (start, stop) device events, or None."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        if events is None:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        else:
            start, stop, elapsed_s = events()
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(elapsed_s(start, stop))
    return statistics.median(times)


def median_seconds(fn, repeats, warmup, backend):
    """Median wall time of fn() on a tinydae backend; CUDA events on the GPU."""
    events = None
    if backend.name == "cuda":
        cupy = backend.xp
        events = lambda: (cupy.cuda.Event(), cupy.cuda.Event(),  # noqa: E731
                          lambda a, b: cupy.cuda.get_elapsed_time(a, b) / 1e3)
    return _median(fn, repeats, warmup, backend.sync, events)


def torch_median_seconds(torch, fn, repeats, warmup, device):
    """The same for a PyTorch peer; torch.cuda events on the GPU."""
    if device != "cuda":
        return _median(fn, repeats, warmup, lambda: None, None)
    events = lambda: (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True),  # noqa: E731
                      lambda a, b: a.elapsed_time(b) / 1e3)
    return _median(fn, repeats, warmup, torch.cuda.synchronize, events)


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def versions():
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for pkg in ("tinydae", "numpy", "numba", "numba-cuda", "cupy-cuda12x", "cupy-cuda13x", "torch"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def save_section(backend, section, payload, path=None):
    """Merge payload under `section` into bench/results/<device>.json; returns the path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = path or os.path.join(RESULTS_DIR, f"{slug(backend.name + '-' + backend.device)}.json")
    data = {}
    if os.path.exists(path):
        with open(path) as f:
            data = json.load(f)
    data.update(device=backend.device, backend=backend.name)
    data[section] = dict(payload, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                         versions=versions())
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=lambda o: o.item() if isinstance(o, np.generic) else str(o))
    os.replace(tmp, path)
    return path
