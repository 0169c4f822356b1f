"""Threads under load: training throughput with 0..K competing busy processes, for each
thread setting (`tinydae.threads.set_threads`: numba's kernels and OpenBLAS's GEMMs).

The step is `python cli.py train`'s default model and batch (784-1000-784 relu BCE,
gaussian:0.3, Adam, batch 64).  The competitors are plain Python busy loops, one per
`--busy` level, started before a level's rounds and killed after; within a level the thread
settings are timed interleaved (each round runs a burst of steps for every setting), so slow
drifts of the machine hit all settings alike.  'auto' is resolved once per level, after the
competitors have run long enough to show in the 1-minute load average (--settle seconds).

    python bench/bench_threads.py [--busy 0,1] [--settings all,1,auto] [--rounds 5]
                                  [--steps 40] [--settle 60] [--json]
Prints one row per (busy, setting): examples/s as median and range over the rounds.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tinydae import DAE, Adam, get_backend  # noqa: E402
from tinydae.corruption import Corruption  # noqa: E402
from tinydae.threads import auto_threads, cores, set_threads  # noqa: E402

BATCH = 64
BUSY_LOOP = "while True: pass"


def make_step(seed=0):
    """-> step(): one training step as fit() runs it (loss read once)."""
    backend = get_backend("cpu")
    model = DAE(784, hidden=(1000,), activation="relu", loss="bce", seed=seed, backend=backend)
    opt = Adam(model)
    x = np.random.default_rng(seed).random((BATCH, 784), dtype=np.float32)
    c = Corruption("gaussian", 0.3)
    total = np.empty(1, np.float64)
    count = [0]

    def step():
        count[0] += 1
        x_in = c.apply(backend, x, seed, count[0], 1)
        model.loss_sum_and_grad(x_in, x, total)
        opt.step(guard=total)
        return float(total[0])
    return step


def run(busy_levels=(0, 1), settings=("all", "1", "auto"), rounds=5, steps=40, settle=60, log=print):
    step = make_step()
    for _ in range(10):  # compile / warm the caches
        step()
    rows = []
    for busy in busy_levels:
        procs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
        try:
            time.sleep(settle if busy else 1)
            # 'N/M': numba N threads, OpenBLAS M
            resolved = {s: (auto_threads() if s == "auto" else s if "/" in s else set_threads(s)["threads"])
                        for s in settings}
            load = os.getloadavg()[0]
            rates = {s: [] for s in settings}
            for _ in range(rounds):
                for s in settings:
                    set_threads(*str(resolved[s]).split("/"))
                    step()
                    t0 = time.perf_counter()
                    for _ in range(steps):
                        step()
                    rates[s].append(steps * BATCH / (time.perf_counter() - t0))
            for s in settings:
                r = rates[s]
                rows.append(dict(busy=busy, setting=s, threads=resolved[s], load_1min=round(load, 2),
                                 median=float(np.median(r)), low=float(min(r)), high=float(max(r)),
                                 rounds=rounds, steps=steps))
                log(f"busy {busy}  threads {s:>4} (= {resolved[s]})  load {load:4.2f}  "
                    f"{np.median(r):7.0f} examples/s  (range {min(r):.0f}-{max(r):.0f} over {rounds} rounds)")
        finally:
            for p in procs:
                p.kill()
                p.wait()
    set_threads("all")
    return dict(cores=cores(), batch=BATCH, model="784-1000-784 relu bce", rows=rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--busy", default="0,1", help="competing busy processes per level")
    ap.add_argument("--settings", default="all,1,auto")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--settle", type=float, default=60.0,
                    help="seconds the competitors run before a level is timed (the load average lags)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    busy = tuple(int(b) for b in a.busy.split(","))
    result = run(busy, tuple(a.settings.split(",")), a.rounds, a.steps, a.settle,
                 log=(lambda *_: None) if a.json else print)
    if a.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
