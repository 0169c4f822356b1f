"""Sampling-chain benchmark: chain throughput against a PyTorch chain and the GEMM floor.

Chains x_{t+1} = sigmoid(logits(x_t + sigma * noise)) of the DAE 784-1000-1000-1000-784 (relu,
gaussian:0.3), float32, no trajectory kept.  Throughput is chains x steps per second; the
floor is the forward GEMMs of every step alone; "host syncs per step" counts the device-to-host
copies tinydae's chain makes inside its step loop (the target is none).  The contenders are
timed interleaved, one whole chain of each per round, and medians taken over the rounds.

    python bench/bench_chain.py [--backend cpu|cuda] [--chains 64:100,1024:100,16384:10]
    python cli.py bench chain ...
Results go to bench/results/<backend-device>.json (section "chain").
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_train import SIGMA, make_model, torch_model  # noqa: E402
from bench.common import (backend_timer, interleaved_medians, save_section,  # noqa: E402
                          torch_or_none, torch_timer)
from tinydae import get_backend  # noqa: E402
from tinydae.sampling import chain, noise_start  # noqa: E402

DEFAULT_CPU = "64:100,1024:100,16384:10"
DEFAULT_GPU = "64:100,1024:100,16384:100"


def gemm_floor(model, n, steps):
    xp = model.backend.xp
    Ws = [layer.W for layer in model.layers]
    acts = [xp.ones((n, W.shape[0]), np.float32) for W in Ws]

    def run():
        for _ in range(steps):
            for W, a in zip(Ws, acts):
                xp.matmul(a, W)
    return run


def torch_chain(torch, net, x0, steps):
    def run():
        with torch.no_grad():
            x = x0
            for _ in range(steps):
                x = torch.sigmoid(net(x + SIGMA * torch.randn_like(x)))
        return x
    return run


def run(backend="auto", sizes=None, repeats=5, peers=True, log=print):
    backend = get_backend(backend)
    spec = sizes or (DEFAULT_GPU if backend.name == "cuda" else DEFAULT_CPU)
    pairs = [tuple(int(v) for v in item.split(":")) for item in spec.split(",")]
    torch = torch_or_none() if peers else None
    tdev = "cuda" if backend.name == "cuda" else "cpu"
    model = make_model(backend)
    model.corruption = f"gaussian:{SIGMA}"
    rows = []
    for n, steps in pairs:
        x0 = noise_start(n, 784, seed=0)
        holder = {}

        def ours():
            holder["r"] = chain(model, x0, steps, keep_every=steps, keep_chains=0, batch_size=n)
        timer = backend_timer(backend)
        entries = {"tinydae": (ours, timer), "floor": (gemm_floor(model, n, steps), timer)}
        if torch is not None:
            net = torch_model(torch, model, tdev)
            entries["torch"] = (torch_chain(torch, net, torch.as_tensor(x0, device=tdev), steps),
                                torch_timer(torch, tdev))
        # One whole chain of each contender per round, after the pause; no settling calls (a
        # chain is long: its first steps warm it up).
        t = interleaved_medians(entries, repeats, warmup=1, rounds=repeats, settle=0)
        row = dict(chains=n, steps=steps, seconds=t["tinydae"], chain_steps_per_s=n * steps / t["tinydae"],
                   floor_s=t["floor"], x_floor=t["tinydae"] / t["floor"],
                   host_syncs_per_step=holder["r"].host_syncs / steps)
        if "torch" in t:
            row.update(torch_s=t["torch"], x_torch=t["tinydae"] / t["torch"],
                       torch_chain_steps_per_s=n * steps / t["torch"])
        rows.append(row)
        log(format_row(row))
    return dict(backend=backend.name, device=backend.device, kernels=backend.kernel_set,
                model="784-1000-1000-1000-784 relu, gaussian:0.3 chain, float32", rows=rows,
                repeats=repeats, torch=None if torch is None else torch.__version__)


HEADER = (f"{'chains':>7s} {'steps':>6s} {'seconds':>9s} {'chain-steps/s':>14s} {'x floor':>8s} "
          f"{'torch s':>9s} {'x torch':>8s} {'syncs/step':>11s}")


def format_row(r):
    peer = f"{r['torch_s']:>9.3f} {r['x_torch']:>8.2f}" if "torch_s" in r else f"{'n/a':>9s} {'':>8s}"
    return (f"{r['chains']:>7d} {r['steps']:>6d} {r['seconds']:>9.3f} {r['chain_steps_per_s']:>14,.0f} "
            f"{r['x_floor']:>8.2f} {peer} {r['host_syncs_per_step']:>11.2f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="auto", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--chains", default=None, help=f"chains:steps pairs (CPU default {DEFAULT_CPU})")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    print(HEADER)
    result = run(args.backend, args.chains, args.repeats)
    if not args.no_save:
        print("saved", save_section(get_backend(args.backend), "chain", result))


if __name__ == "__main__":
    main()
