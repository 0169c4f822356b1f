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


def median_seconds(fn, repeats, warmup, backend):
    """Median wall time of fn() after warm-up; device events on the GPU."""
    for _ in range(warmup):
        fn()
    backend.sync()
    times = []
    if backend.name == "cuda":
        cupy = backend.xp
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        for _ in range(repeats):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, end) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_median_seconds(torch, fn, repeats, warmup, device):
    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(repeats):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


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
