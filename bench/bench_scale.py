"""bench scale: what a data-parallel step costs on R processes, and a model for N GPUs.

`python cli.py bench scale --ranks 1,2` starts `mpiexec -n R python bench/bench_scale.py
--worker ...` for each R (this file, run as a script) and collects what rank 0 measured:

- the all-reduce alone: seconds per MPI_Allreduce of float32 buffers from 4 KiB to 16 MiB
  (each repeat timed between barriers, the slowest rank's time), fitted as alpha + beta * bytes;
- a training step of each architecture, split into compute (corrupt, forward, backward,
  optimizer) and communication (the gradient all-reduce, the loss's and the stop flag's),
  for strong scaling (a global batch of `batch` rows split over R) and weak scaling (`batch`
  rows per rank), the step being fit()'s own (tinydae.train).

The model (model_allreduce_s) is a ring all-reduce, which NCCL uses for large buffers:
2 (N - 1) alpha + 2 (N - 1) / N * bytes / bandwidth.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import save_section  # noqa: E402  (cli.py's --save calls it)

__all__ = ["HEADER", "run", "format_table", "model_allreduce_s", "fit_alpha_beta", "save_section", "worker"]

HEADER = "bench scale: data-parallel steps over MPI (rank 0's view; times are the slowest rank's)"
SWEEP_BYTES = [2**k for k in range(12, 25, 2)]  # 4 KiB .. 16 MiB
ARCHS = ("mlp:1000", "conv:32,64")
# Published link figures for the model (per GPU, one direction), and a typical latency per ring
# step.  NVLink 4 (H100 / H200 SXM): 900 GB/s bidirectional, NCCL reaches ~360-450 GB/s bus
# bandwidth in all-reduce; InfiniBand NDR: 400 Gb/s = 50 GB/s per port (one port per GPU), NCCL
# ~40-45 GB/s.  Latencies: a few microseconds on NVLink, ~5-10 on InfiniBand.
LINKS = {"NVLink 4 (one node, 8 GPUs)": dict(bandwidth_GBps=400.0, alpha_us=3.0),
         "InfiniBand NDR 400 Gb/s": dict(bandwidth_GBps=45.0, alpha_us=8.0)}
GPU_COUNTS = {"NVLink 4 (one node, 8 GPUs)": (2, 4, 8), "InfiniBand NDR 400 Gb/s": (16, 64, 512)}


def model_allreduce_s(nbytes, n, bandwidth_GBps, alpha_us):
    """Seconds of a ring all-reduce of nbytes over n GPUs (0 for one).  The latency term grows
    with n: at hundreds of GPUs NCCL switches to trees (~2 log2(n) alpha), so for small buffers
    this overestimates there.
    >>> round(model_allreduce_s(4e8, 2, 400.0, 0.0), 6)   # 2 GPUs move the buffer once: 1 ms
    0.001
    """
    if n <= 1:
        return 0.0
    return 2 * (n - 1) * alpha_us * 1e-6 + 2 * (n - 1) / n * nbytes / (bandwidth_GBps * 1e9)


def fit_alpha_beta(sweep):
    """[(bytes, seconds), ...] -> (alpha seconds, beta seconds per byte), least squares."""
    b = np.array([s[0] for s in sweep], np.float64)
    t = np.array([s[1] for s in sweep], np.float64)
    beta, alpha = np.polyfit(b, t, 1)
    return float(alpha), float(beta)


# -- the worker: one process of `mpiexec -n R` -----------------------------------------------

def _allreduce_sweep(comm, repeats):
    out = []
    for nbytes in SWEEP_BYTES:
        buf = np.ones(nbytes // 4, np.float32)
        times = []
        for _ in range(repeats + 2):
            comm.barrier()
            t0 = time.perf_counter()
            comm.allreduce_sum(buf)
            times.append(comm.allreduce_host([time.perf_counter() - t0], "max")[0])
        out.append((nbytes, statistics.median(times[2:])))
    return out


def _steps(comm, arch, local, global_batch, steps, first):
    """Median compute and communication seconds of fit()'s step (its code, inlined to time the
    parts) on `local` rows of a `global_batch`."""
    import tinydae
    from tinydae.corruption import Corruption

    model = tinydae.DAE(784, arch=arch, seed=0, input_shape=(28, 28, 1))
    opt = tinydae.Adam(model)
    c = Corruption.parse("gaussian:0.3")
    x = np.random.default_rng(comm.rank).uniform(0, 1, (local, 784)).astype(np.float32)
    loss = np.zeros(1)
    compute, communicate = [], []
    for step in range(steps + 3):
        comm.barrier()
        t0 = time.perf_counter()
        x_in = c.apply(model.backend, x, 0, step, offset=first * 784)
        model.loss_sum_and_grad(x_in, x, loss, mean_over=global_batch)
        t1 = time.perf_counter()
        comm.allreduce_sum(model.grads)
        comm.allreduce_sum(loss)
        comm.allreduce_host([0.0], "max")  # fit's stop flag
        t2 = time.perf_counter()
        opt.step(guard=loss)
        t3 = time.perf_counter()
        c_s, m_s = comm.allreduce_host([t1 - t0 + t3 - t2, t2 - t1], "max")
        compute.append(c_s)
        communicate.append(m_s)
    return dict(compute_ms=statistics.median(compute[3:]) * 1e3, allreduce_ms=statistics.median(communicate[3:]) * 1e3,
                bytes_per_step=int(model.grads.nbytes) + 16, params=int(model.params.size))


def _overlap(comm, arch, local, global_batch, steps, first, buckets):
    """Median whole-step ms (the slowest rank's) of fit()'s step with the gradient reduced by one
    all-reduce after backward (bucket None) or in buckets started during backward (MiB), the
    cases taking turns step by step so that the machine's drift falls on all of them alike."""
    import tinydae
    from tinydae.corruption import Corruption
    from tinydae.distributed import GradientBuckets

    c = Corruption.parse("gaussian:0.3")
    x = np.random.default_rng(comm.rank).uniform(0, 1, (local, 784)).astype(np.float32)
    cases = []
    for mb in buckets:
        model = tinydae.DAE(784, arch=arch, seed=0, input_shape=(28, 28, 1))
        reducer = None if mb is None else GradientBuckets(comm, model.net, mb)
        cases.append((mb, model, tinydae.Adam(model), reducer, np.zeros(1), []))
    for step in range(steps + 3):
        for mb, model, opt, reducer, loss, times in cases:
            comm.barrier()
            t0 = time.perf_counter()
            x_in = c.apply(model.backend, x, 0, step, offset=first * 784)
            model.loss_sum_and_grad(x_in, x, loss, mean_over=global_batch, done=reducer and reducer.layer_done)
            if reducer is None:
                comm.allreduce_sum(model.grads)
            else:
                reducer.finish()
            comm.allreduce_sum(loss)
            comm.allreduce_host([0.0], "max")
            opt.step(guard=loss)
            times.append(comm.allreduce_host([time.perf_counter() - t0], "max")[0])
    return [dict(bucket_mb=mb, step_ms=statistics.median(times[3:]) * 1e3,
                 buckets=len([r for rs in (reducer.plan.values() if reducer else [[0]]) for r in rs]))
            for mb, model, opt, reducer, loss, times in cases]


def worker(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--worker", action="store_true")
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--archs", default=";".join(ARCHS))
    p.add_argument("--buckets", default="0,1", help="bucket sizes (MiB) compared with one all-reduce; '' for none")
    a = p.parse_args(argv)
    from tinydae import distributed
    from tinydae.threads import cores, set_threads

    comm = distributed.connect("mpi")
    # the ranks of a node share its cores, as the CLI does (TINYDAE_THREADS overrides: e.g. 1 for
    # one thread per process whatever R)
    set_threads(os.environ.get("TINYDAE_THREADS") or max(1, cores() // comm.local_size))
    R = comm.size
    result = dict(ranks=R, sweep=_allreduce_sweep(comm, a.repeats) if R > 1 else [], steps=[])
    lo, hi = distributed.shard(a.batch, comm)  # strong scaling: this rank's rows of the global batch
    for arch in a.archs.split(";"):
        for kind, local, global_batch, first in (("strong", hi - lo, a.batch, lo),
                                                 ("weak", a.batch, a.batch * R, comm.rank * a.batch)):
            row = _steps(comm, arch, local, global_batch, a.steps, first)
            result["steps"].append(dict(row, arch=arch, scaling=kind, local_batch=local, global_batch=global_batch))
        if R > 1 and a.buckets:  # the all-reduce overlapped with backward, against one after it (strong)
            sizes = [None] + [float(b) for b in a.buckets.split(",")]
            for row in _overlap(comm, arch, hi - lo, a.batch, a.steps, lo, sizes):
                result.setdefault("overlap", []).append(dict(row, arch=arch, ranks=R, local_batch=hi - lo))
    if comm.root:
        with open(a.out, "w") as f:
            json.dump(result, f)


# -- the parent: `python cli.py bench scale` -------------------------------------------------

def mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.exists(here):
        return here
    import shutil

    return shutil.which("mpiexec")


def run(ranks=(1, 2), batch=256, steps=20, repeats=20, archs=ARCHS, log=print, timeout_s=1800, buckets=(0, 1)):
    """-> dict(runs=[worker results], fit=dict(alpha_us, beta_ns_per_byte, GBps), model=...)."""
    from tinydae.errors import ConfigError

    runner = mpiexec()
    if runner is None:
        raise ConfigError("bench scale starts mpiexec, which is not installed: pip install -e \".[mpi]\"")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for R in ranks:
            out = os.path.join(tmp, f"r{R}.json")
            log(f"R = {R}: mpiexec -n {R} ...")
            command = [runner, "-n", str(R), sys.executable, os.path.abspath(__file__), "--worker", "--out", out,
                       "--batch", str(batch), "--steps", str(steps), "--repeats", str(repeats),
                       "--archs", ";".join(archs), "--buckets", ",".join(str(b) for b in buckets)]
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                                      env=dict(os.environ, TINYDAE_DISTRIBUTED="mpi"))
            except subprocess.TimeoutExpired:
                raise ConfigError(f"bench scale: mpiexec -n {R} ran past {timeout_s} s; use fewer --steps or "
                                  f"--repeats") from None
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["(nothing on stderr)"])[-1]
                raise ConfigError(f"bench scale: mpiexec -n {R} failed (exit {done.returncode}): {last}")
            with open(out) as f:
                runs.append(json.load(f))
    sweep = [tuple(s) for r in runs if r["ranks"] == 2 for s in r["sweep"]]
    fit = None
    if sweep:
        alpha, beta = fit_alpha_beta(sweep)
        # a negative alpha (noise at the small sizes) is reported as it came out, flagged
        fit = dict(ranks=2, alpha_us=alpha * 1e6, beta_ns_per_byte=beta * 1e9, GBps=1 / beta / 1e9 if beta > 0 else None,
                   alpha_negative=alpha < 0)
    # one flat row per measured case: what bench/results keeps of each saved run (common.save_section)
    rows = [dict(kind="step", ranks=r["ranks"], **s) for r in runs for s in r["steps"]]
    rows += [dict(kind="overlap", **o) for r in runs for o in r.get("overlap", [])]
    return dict(runs=runs, fit=fit, model=model_table(runs), rows=rows)


def model_table(runs):
    """Modelled all-reduce ms per step of each architecture's gradient for N GPUs on each link."""
    rows = []
    sizes = {s["arch"]: s["bytes_per_step"] for r in runs for s in r["steps"]}
    for arch, nbytes in sizes.items():
        for link, spec in LINKS.items():
            rows.append(dict(arch=arch, link=link, bytes=nbytes,
                             allreduce_us={n: model_allreduce_s(nbytes, n, **spec) * 1e6 for n in GPU_COUNTS[link]}))
    return rows


def format_table(result):
    lines = []
    base = {(s["arch"], s["scaling"]): s for r in result["runs"] if r["ranks"] == 1 for s in r["steps"]}
    lines.append(f"{'arch':>11s} {'scaling':>7s} {'R':>2s} {'rows/rank':>9s} {'compute ms':>10s} "
                 f"{'allreduce ms':>12s} {'step ms':>8s} {'MB/step':>8s} {'speedup':>8s}")
    for r in result["runs"]:
        for s in r["steps"]:
            step = s["compute_ms"] + s["allreduce_ms"]
            one = base.get((s["arch"], s["scaling"]))
            speed = ""
            if one is not None:
                t1 = one["compute_ms"] + one["allreduce_ms"]
                # strong: the same global batch, speedup = t1 / tR; weak: R x the rows, throughput ratio
                speed = f"{t1 / step:.2f}" if s["scaling"] == "strong" else f"{r['ranks'] * t1 / step:.2f}"
            lines.append(f"{s['arch']:>11s} {s['scaling']:>7s} {r['ranks']:>2d} {s['local_batch']:>9d} "
                         f"{s['compute_ms']:>10.2f} {s['allreduce_ms']:>12.3f} {step:>8.2f} "
                         f"{s['bytes_per_step'] / 1e6:>8.2f} {speed:>8s}")
    fit = result["fit"]
    if fit:
        lines.append(f"all-reduce on 2 ranks here: alpha {fit['alpha_us']:.1f} us + {fit['beta_ns_per_byte']:.3f} ns/byte "
                     f"({fit['GBps'] or float('nan'):.2f} GB/s)")
    for r in result["runs"]:  # the overlapped all-reduce: whole steps, against one all-reduce after backward
        rows = r.get("overlap", [])
        flat = {o["arch"]: o["step_ms"] for o in rows if o["bucket_mb"] is None}
        for o in rows:
            if o["bucket_mb"] is not None:
                lines.append(f"overlap {o['arch']} R={o['ranks']}: buckets >= {o['bucket_mb']:g} MiB ({o['buckets']}) "
                             f"{o['step_ms']:.2f} ms a step, one all-reduce {flat[o['arch']]:.2f} ms: "
                             f"x{flat[o['arch']] / o['step_ms']:.2f}")
    for row in result["model"]:
        cells = ", ".join(f"N={n}: {us:,.0f} us" for n, us in row["allreduce_us"].items())
        lines.append(f"model {row['arch']} ({row['bytes'] / 1e6:.1f} MB) on {row['link']}: {cells}")
    return "\n".join(lines)


if __name__ == "__main__":
    worker(sys.argv[1:])
