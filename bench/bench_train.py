"""Training-step benchmark: tinydae against PyTorch (eager and torch.compile) and the GEMM floor.

The model is the DAE with hidden=(1000, 1000), i.e. 784-1000-1000-1000-784 (tinydae's decoder
mirrors the encoder, so this is the nearest model to the 784-1000-1000-784 of the issue), relu,
BCE, gaussian:0.3 corruption, Adam, float32.  One step = corrupt, forward, loss, backward,
optimizer update (skipped on the device if the loss is not finite), and reading the loss on
the host once, as fit() does.  The PyTorch step
does the same with the same initial weights; the floor is the step's matrix products alone
(forward GEMMs, and the dW and dx GEMMs of backward) on the backend's BLAS.  The contenders
are timed interleaved (each round times one step of each), and medians taken over the rounds.

    python bench/bench_train.py [--backend cpu|cuda] [--batches 64,256,1024] [--repeats 20]
    python cli.py bench train ...
Results go to bench/results/<backend-device>.json (section "train").
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (backend_timer, interleaved_medians, save_section,  # noqa: E402
                          torch_or_none, torch_timer)
from tinydae import DAE, Adam, get_backend  # noqa: E402
from tinydae.corruption import Corruption  # noqa: E402

HIDDEN = (1000, 1000)
SIGMA = 0.3


def make_model(backend, seed=0):
    return DAE(784, hidden=HIDDEN, activation="relu", loss="bce", seed=seed, backend=backend)


def tinydae_step(model, opt, x, step_counter):
    """fit()'s step: the loss summed on the device, the update queued with its NaN guard,
    then the step's one host read (on a GPU nothing waits before the update is queued)."""
    c = Corruption("gaussian", SIGMA)
    backend = model.backend
    total = backend.xp.zeros(1, np.float64)

    def step():
        step_counter[0] += 1
        model.loss_sum_and_grad(c.apply(backend, x, 0, step_counter[0]), x, total)
        opt.step(guard=total)
        return float(backend.to_host(total)[0]) / len(x)
    return step


def gemm_floor(model, batch):
    """The matrix products of one step alone, on the backend's BLAS."""
    xp = model.backend.xp
    Ws = [layer.W for layer in model.layers]
    acts = [xp.ones((batch, W.shape[0]), np.float32) for W in Ws]
    douts = [xp.ones((batch, W.shape[1]), np.float32) for W in Ws]

    def step():
        for W, a in zip(Ws, acts):
            xp.matmul(a, W)                       # forward
        for i, (W, a, d) in enumerate(zip(Ws, acts, douts)):
            xp.matmul(a.T, d)                     # dW
            if i > 0:
                xp.matmul(d, W.T)                 # dx (not needed for the input layer)
    return step


def torch_model(torch, model, device):
    """The same DAE in PyTorch, initialised with tinydae's weights."""
    layers = []
    for layer in model.layers:
        lin = torch.nn.Linear(*layer.W.shape)
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(model.backend.to_host(layer.W).T.copy()))
            lin.bias.copy_(torch.as_tensor(model.backend.to_host(layer.b)))
        layers += [lin, torch.nn.ReLU()]
    return torch.nn.Sequential(*layers[:-1]).to(device)  # logits: no activation at the end


def torch_step(torch, net, opt, x):
    def step():
        opt.zero_grad(set_to_none=True)
        noisy = x + SIGMA * torch.randn_like(x)
        logits = net(noisy)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
        loss.backward()
        opt.step()
        return loss.item()  # the host read tinydae also does
    return step


def run(backend="auto", batches=(64, 256, 1024), repeats=20, warmup=5, peers=True, compile_peer=True,
        log=print):
    backend = get_backend(backend)
    torch = torch_or_none() if peers else None
    tdev = "cuda" if backend.name == "cuda" else "cpu"
    rows = []
    rng = np.random.default_rng(0)
    for B in batches:
        model = make_model(backend)
        opt = Adam(model)
        x = backend.to_device(rng.random((B, 784), dtype=np.float32))
        timer = backend_timer(backend)
        entries = {"tinydae": (tinydae_step(model, opt, x, [0]), timer), "floor": (gemm_floor(model, B), timer)}
        row = dict(batch=B)
        if torch is not None:
            tx = torch.as_tensor(backend.to_host(x), device=tdev)
            ttimer = torch_timer(torch, tdev)
            net = torch_model(torch, make_model(backend), tdev)
            entries["eager"] = (torch_step(torch, net, torch.optim.Adam(net.parameters(), lr=1e-3), tx), ttimer)
            if compile_peer:
                try:
                    cnet = torch.compile(torch_model(torch, make_model(backend), tdev))
                    step = torch_step(torch, cnet, torch.optim.Adam(cnet.parameters(), lr=1e-3), tx)
                    step()  # compiles here, so a failure is caught here
                    entries["compiled"] = (step, ttimer)
                except Exception as e:  # no compiler toolchain, unsupported platform, ...
                    row.update(torch_compile_error=f"{type(e).__name__}: {str(e).splitlines()[0][:120]}")
        # Interleaved: each round times one step of every contender, so load changes hit all alike.
        t = interleaved_medians(entries, repeats, warmup)
        row.update(ms=t["tinydae"] * 1e3, examples_per_s=B / t["tinydae"], floor_ms=t["floor"] * 1e3,
                   x_floor=t["tinydae"] / t["floor"])
        if "eager" in t:
            row.update(torch_eager_ms=t["eager"] * 1e3, x_torch_eager=t["tinydae"] / t["eager"])
        if "compiled" in t:
            row.update(torch_compile_ms=t["compiled"] * 1e3, x_torch_compile=t["tinydae"] / t["compiled"])
        rows.append(row)
        log(format_row(row))
    return dict(backend=backend.name, device=backend.device, kernels=backend.kernel_set,
                model="784-" + "-".join(map(str, HIDDEN + HIDDEN[-2::-1])) + "-784 relu BCE Adam float32",
                rows=rows, repeats=repeats, torch=None if torch is None else torch.__version__)


HEADER = (f"{'batch':>6s} {'tinydae ms':>11s} {'ex/s':>9s} {'floor ms':>9s} {'x floor':>8s} "
          f"{'torch ms':>9s} {'x torch':>8s} {'compile ms':>11s} {'x compile':>10s}")


def format_row(r):
    te = f"{r['torch_eager_ms']:>9.2f} {r['x_torch_eager']:>8.2f}" if "torch_eager_ms" in r else f"{'n/a':>9s} {'':>8s}"
    if "torch_compile_ms" in r:
        tc = f"{r['torch_compile_ms']:>11.2f} {r['x_torch_compile']:>10.2f}"
    else:
        tc = f"{'failed' if 'torch_compile_error' in r else 'n/a':>11s} {'':>10s}"
    return (f"{r['batch']:>6d} {r['ms']:>11.2f} {r['examples_per_s']:>9,.0f} {r['floor_ms']:>9.2f} "
            f"{r['x_floor']:>8.2f} {te} {tc}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="auto", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--batches", default="64,256,1024")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    print(HEADER)
    result = run(args.backend, [int(b) for b in args.batches.split(",")], args.repeats,
                 compile_peer=not args.no_compile)
    if not args.no_save:
        print("saved", save_section(get_backend(args.backend), "train", result))


if __name__ == "__main__":
    main()
