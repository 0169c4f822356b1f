"""Sampling-chain benchmark: chain throughput against PyTorch and JAX chains and the GEMM floor.

Chains x_{t+1} = sigmoid(logits(x_t + sigma * noise)) of the DAE 784-1000-1000-1000-784 (relu,
gaussian:0.3), float32, no trajectory kept.  Throughput is chains x steps per second; the
floor (the lower bound) is the forward GEMMs of every step alone, into preallocated outputs;
"host syncs per step" counts the device-to-host copies tinydae's chain makes inside its step
loop (the target is none).

Peers, from the same weights, each drawing its N(0, 1) noise from its own RNG and stepping in a
Python loop as tinydae does:
  PyTorch eager   the step under torch.no_grad()
  compiled step   torch.compile(dynamic=False) of the step (corruption, forward, sigmoid): one
                  Inductor graph per chain size
  JAX jit step    jax.jit of the step, the states and the RNG key donated
The headline ratio is tinydae's time over the strongest (fastest) peer's.  The contenders are
timed interleaved, one whole chain of each per round, and medians taken over the rounds.

    python bench/bench_chain.py [--backend cpu|cuda] [--chains 64:100,1024:100,16384:10]
    python cli.py bench chain ...
Results go to bench/results/<backend-device>.json (section "chain").
"""
import argparse
import functools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.bench_train import SIGMA, add_peer, jax_logits, jax_params, make_model, torch_model  # noqa: E402
from bench.common import (backend_timer, interleaved_medians, jax_or_none, one_call_timer,  # noqa: E402
                          peer_ratios, save_section, strongest_peer, torch_or_none, torch_timer)
from tinydae import get_backend  # noqa: E402
from tinydae.sampling import chain, noise_start  # noqa: E402

DEFAULT_CPU = "64:100,1024:100,16384:10"
DEFAULT_GPU = "64:100,1024:100,16384:100"

# id -> label; row fields are f"{id}_s", f"x_{id}" (tinydae / peer) and
# f"{id}_chain_steps_per_s", or f"{id}_error".  "torch" keeps its old name (the eager chain).
PEERS = {"torch": "PyTorch eager", "torch_compile_step": "compiled step", "jax_jit": "JAX jit step"}


def gemm_floor(model, n, steps):
    xp = model.backend.xp
    Ws = [layer.W for layer in model.layers]
    acts = [xp.ones((n, W.shape[0]), np.float32) for W in Ws]
    outs = [xp.empty((n, W.shape[1]), np.float32) for W in Ws]

    def run():
        for _ in range(steps):
            for W, a, out in zip(Ws, acts, outs):
                xp.matmul(a, W, out=out)
    return run


def torch_chain(torch, net, x0, steps, sigma=SIGMA, compiled=False):
    """-> run(): `steps` PyTorch chain steps from x0 (a tensor), returning the final states;
    compiled=True: torch.compile of the step."""
    def chain_step(x):
        return torch.sigmoid(net(x + sigma * torch.randn_like(x)))
    step = torch.compile(chain_step, dynamic=False) if compiled else chain_step

    def run(steps=steps):
        with torch.no_grad():
            x = x0
            for _ in range(steps):
                x = step(x)
        return x
    return run


def jax_chain(jax, model, x0, steps, sigma=SIGMA, seed=0):
    """-> run(): `steps` jitted JAX chain steps from x0 (a host array), returning the final states."""
    @functools.partial(jax.jit, donate_argnums=(1, 2))
    def chain_step(params, x, key):
        key, sub = jax.random.split(key)
        return jax.nn.sigmoid(jax_logits(jax, params, x + sigma * jax.random.normal(sub, x.shape, x.dtype))), key

    params = jax_params(jax, model)

    def run(steps=steps):
        x, key = jax.numpy.array(x0), jax.random.PRNGKey(seed)  # fresh buffers: the step donates them
        for _ in range(steps):
            x, key = chain_step(params, x, key)
        return jax.block_until_ready(x)  # dispatch is asynchronous: wait for the last step
    return run


def run(backend="auto", sizes=None, repeats=5, peers=True, compile_peer=True, log=print):
    backend = get_backend(backend)
    spec = sizes or (DEFAULT_GPU if backend.name == "cuda" else DEFAULT_CPU)
    pairs = [tuple(int(v) for v in item.split(":")) for item in spec.split(",")]
    torch = torch_or_none() if peers else None
    jax = jax_or_none() if peers and backend.name == "cpu" else None  # jax[cpu]; a GPU would need jax[cuda]
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
        row = dict(chains=n, steps=steps)
        if torch is not None:
            tx0 = torch.as_tensor(x0, device=tdev)
            builds = {"torch": lambda: torch_chain(torch, torch_model(torch, model, tdev), tx0, steps)}
            if compile_peer:
                builds["torch_compile_step"] = lambda: torch_chain(torch, torch_model(torch, model, tdev), tx0, steps,
                                                                   compiled=True)
            for name, build in builds.items():
                add_peer(entries, row, name, build, torch_timer(torch, tdev), first=lambda run: run(steps=1))
        if jax is not None:
            add_peer(entries, row, "jax_jit", lambda: jax_chain(jax, model, x0, steps), one_call_timer(lambda: None),
                     first=lambda run: run(steps=1))
        # One whole chain of each contender per round, after the pause; no settling calls (a
        # chain is long: its first steps warm it up).
        t = interleaved_medians(entries, repeats, warmup=1, rounds=repeats, settle=0)
        row.update(seconds=t["tinydae"], chain_steps_per_s=n * steps / t["tinydae"],
                   floor_s=t["floor"], x_floor=t["tinydae"] / t["floor"],
                   host_syncs_per_step=holder["r"].host_syncs / steps)
        for name in PEERS:
            if name in t:
                row.update({f"{name}_s": t[name], f"x_{name}": t["tinydae"] / t[name],
                            f"{name}_chain_steps_per_s": n * steps / t[name]})
        best, best_s = strongest_peer(row, PEERS, unit="s")
        if best is not None:
            row.update(strongest=best, strongest_s=best_s, x_strongest=t["tinydae"] / best_s,
                       strongest_chain_steps_per_s=n * steps / best_s)
        rows.append(row)
        log(format_row(row))
    return dict(backend=backend.name, device=backend.device, kernels=backend.kernel_set,
                model="784-1000-1000-1000-784 relu, gaussian:0.3 chain, float32", rows=rows,
                repeats=repeats, peers=PEERS, torch=None if torch is None else torch.__version__,
                jax=None if jax is None else jax.__version__)


HEADER = (f"{'chains':>7s} {'steps':>6s} {'seconds':>9s} {'chain-steps/s':>14s} {'x floor':>8s} "
          f"{'strongest peer':>15s} {'seconds':>9s} {'x it':>6s} {'syncs/step':>11s}  x each peer")


def format_row(r):
    if "strongest" in r:
        best = f"{PEERS[r['strongest']]:>15s} {r['strongest_s']:>9.3f} {r['x_strongest']:>6.2f}"
    else:
        best = f"{'n/a':>15s} {'':>9s} {'':>6s}"
    each = peer_ratios(r, PEERS)
    return (f"{r['chains']:>7d} {r['steps']:>6d} {r['seconds']:>9.3f} {r['chain_steps_per_s']:>14,.0f} "
            f"{r['x_floor']:>8.2f} {best} {r['host_syncs_per_step']:>11.2f}  {each}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="auto", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--chains", default=None, help=f"chains:steps pairs (CPU default {DEFAULT_CPU})")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    print(HEADER)
    result = run(args.backend, args.chains, args.repeats, compile_peer=not args.no_compile)
    if not args.no_save:
        print("saved", save_section(get_backend(args.backend), "chain", result))


if __name__ == "__main__":
    main()
