"""Training-step benchmark: tinydae against the strongest PyTorch and JAX steps and a lower bound.

The model is the DAE with hidden=(1000, 1000), i.e. 784-1000-1000-1000-784 (tinydae's decoder
mirrors the encoder, so this is the nearest model to the 784-1000-1000-784 of the issue), relu,
BCE, gaussian:0.3 corruption, Adam (lr 1e-3), float32.  One step = corrupt, forward, loss,
backward, optimizer update (skipped on the device if the loss is not finite), and reading the
loss on the host once, as fit() does.

Peers: the same model from the same initial weights, the same loss (BCE with logits, summed over
pixels, mean over the batch) and the same corruption distribution, x + 0.3 N(0, 1), each drawn
from the peer's own RNG (PyTorch's randn_like, JAX's threefry); each reads its loss on the host
once per step too.
  eager for-loop Adam   PyTorch eager, torch.optim.Adam(foreach=False): a few small ops per
                        parameter tensor, PyTorch's default on the CPU
  eager foreach Adam    Adam(foreach=True): multi-tensor ops over all parameters
  eager fused Adam      Adam(fused=True): one fused kernel over all parameters
  compiled whole step   torch.compile(dynamic=False) of one function doing zero_grad, forward,
                        loss, backward and opt.step() with Adam(foreach=True).  Dynamo breaks the
                        graph at zero_grad and backward() (by design, pytorch#104053): forward and
                        loss become one Inductor graph whose backward AOTAutograd compiles ahead,
                        and opt.step() a second graph that Inductor fuses into one loop.  Not
                        fused=True: Dynamo skips that step and runs the eager fused kernel.
  JAX jit whole step    jax.jit of corruption, forward, loss, jax.value_and_grad and Adam in
                        jax.numpy, with parameters and moments donated (updated in place)
The headline ratio is tinydae's time over the strongest (fastest) peer's at each batch.

Lower bound: the step's matrix products alone (the GEMM floor: forward GEMMs, and the dW and dx
GEMMs of backward, on the backend's BLAS) plus Adam's memory traffic at streaming bandwidth,

    bound = gemm_floor + 7 * 4 bytes * P / bandwidth

(Adam reads params, grads, m, v and writes params, m, v; P = 3,571,784 parameters; bandwidth:
read + write bytes per second of the fastest of np.copyto, an all-cores copy and an all-cores
`dst += src`, over two arrays as large as Adam's four buffers together; see bench/common.py:
bandwidth_entries).  The GEMMs write into preallocated outputs.  Every contender, the floor and
the streams are timed in interleaved rounds (bench/common.py: interleaved_medians), medians over
the rounds.

    python bench/bench_train.py [--backend cpu|cuda] [--batches 64,256,1024] [--repeats 20]
    python cli.py bench train ...
Results go to bench/results/<backend-device>.json (section "train").
"""
import argparse
import functools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (backend_timer, bandwidth_entries, interleaved_medians,  # noqa: E402
                          jax_or_none, lower_bound_ms, one_call_timer, peer_ratios, save_section,
                          strongest_peer, torch_or_none, torch_timer)
from tinydae import DAE, Adam, get_backend  # noqa: E402
from tinydae.arch import canonical  # noqa: E402
from tinydae.corruption import Corruption  # noqa: E402
from tinydae.model import describe, model_cost  # noqa: E402

HIDDEN = (1000, 1000)
SIGMA = 0.3
LR = 1e-3

# id -> label; row fields are f"{id}_ms" and f"x_{id}" (tinydae / peer), or f"{id}_error".
# torch_eager keeps its old name: PyTorch's default Adam on the CPU is this for-loop.
PEERS = {"torch_eager": "eager for-loop Adam", "torch_foreach": "eager foreach Adam",
         "torch_fused": "eager fused Adam", "torch_compile_step": "compiled whole step",
         "jax_jit": "JAX jit whole step"}


ARCH = "mlp:" + ",".join(map(str, HIDDEN))
CONV_ARCH = "conv:32,64"  # the conv DAE: 28x28x1 -> 14x14x32 -> 7x7x64, mirrored


def make_model(backend, seed=0, arch=ARCH):
    """The benchmarked DAE on 28x28 images (784 values)."""
    return DAE(784, arch=arch, activation="relu", loss="bce", seed=seed, backend=backend, input_shape=(28, 28, 1))


def gemm_shapes(model):
    """[(rows per example, K, N), ...]: each layer's forward GEMM (B*rows, K) @ (K, N), whose
    backward is the dW GEMM (K, B*rows) @ (B*rows, N) and the dx GEMM (B*rows, N) @ (N, K)."""
    shapes = []
    for layer, shape in zip(model.layers, model.net.shapes):
        kind = type(layer).__name__
        if kind == "Linear":
            shapes.append((1,) + tuple(layer.W.shape))
        elif kind == "Conv2d":  # columns (B*Ho*Wo, kh*kw*C) @ W (kh*kw*C, F)
            out = layer.output_shape(shape)
            shapes.append((out[0] * out[1],) + tuple(layer.W.shape))
        elif kind == "ConvTranspose2d":  # rows (B*Hi*Wi, F) @ W^T (F, kh*kw*C)
            shapes.append((shape[0] * shape[1],) + tuple(layer.W.shape[::-1]))
    return shapes


_make_model = make_model


def section(arch):
    """The results file's section: "train" for the default model, "train <spec>" for others."""
    arch = canonical(arch)
    return "train" if arch == ARCH else f"train {arch}"


def tinydae_step(model, opt, x, step_counter, sigma=SIGMA):
    """fit()'s step: the loss summed on the device, the update queued with its NaN guard,
    then the step's one host read (on a GPU nothing waits before the update is queued)."""
    c = Corruption("gaussian", sigma)
    backend = model.backend
    total = backend.xp.zeros(1, np.float64)

    def step():
        step_counter[0] += 1
        model.loss_sum_and_grad(c.apply(backend, x, 0, step_counter[0]), x, total, sigma=sigma)  # a blind model ignores it
        opt.step(guard=total)
        return float(backend.to_host(total)[0]) / len(x)
    return step


def gemm_floor(model, batch):
    """The matrix products of one step alone, on the backend's BLAS, into preallocated outputs
    (a fresh 4 MB dW per call would time the allocator and page faults, not the GEMM)."""
    xp = model.backend.xp
    shapes = gemm_shapes(model)
    Ws = [xp.ones((K, N), np.float32) * 0.01 for _, K, N in shapes]
    acts = [xp.ones((batch * m, K), np.float32) for m, K, _ in shapes]
    douts = [xp.ones((batch * m, N), np.float32) for m, _, N in shapes]
    # outputs apart from inputs: feeding results back would let values drift towards
    # denormals or inf over many calls
    outs, dWs, dxs = ([xp.empty_like(v) for v in vs] for vs in (douts, Ws, acts))

    def step():
        for W, a, out in zip(Ws, acts, outs):
            xp.matmul(a, W, out=out)              # forward
        for i, (W, a, d, dW, dx) in enumerate(zip(Ws, acts, douts, dWs, dxs)):
            xp.matmul(a.T, d, out=dW)             # dW
            if i > 0:
                xp.matmul(d, W.T, out=dx)         # dx (not needed for the input layer)
    return step


def torch_model(torch, model, device):
    """The same DAE in PyTorch (NCHW for images), initialised with tinydae's weights."""
    nn = torch.nn

    class Rows(nn.Module):  # our rows are NHWC images read row-major; PyTorch's convolutions are NCHW
        def __init__(self, shape):
            super().__init__()
            self.shape = shape

        def forward(self, h):
            if len(self.shape) == 3:
                return h.reshape(len(h), *self.shape).permute(0, 3, 1, 2)
            return h.permute(0, 2, 3, 1).reshape(len(h), -1) if h.ndim == 4 else h

    host = model.backend.to_host
    layers = []
    for layer, shape in zip(model.layers, model.net.shapes):
        kind = type(layer).__name__
        if kind == "Reshape":
            layers.append(Rows(layer.shape))
            continue
        W = host(layer.W)
        if kind == "Linear":
            t = nn.Linear(*W.shape)
            weight = W.T
        else:
            k, C = layer.kh, W.shape[0] // (layer.kh * layer.kw)
            if kind == "Conv2d":
                t = nn.Conv2d(C, W.shape[1], k, layer.stride, layer.pad)
            else:
                out = layer.output_shape(shape)
                extra = tuple(o - ((n - 1) * layer.stride - 2 * layer.pad + k) for o, n in zip(out[:2], shape[:2]))
                t = nn.ConvTranspose2d(W.shape[1], C, k, layer.stride, layer.pad, output_padding=extra)
            weight = W.reshape(k, k, C, W.shape[1]).transpose(3, 2, 0, 1)  # (F, C, k, k), both kinds
        with torch.no_grad():
            t.weight.copy_(torch.as_tensor(np.ascontiguousarray(weight)))
            t.bias.copy_(torch.as_tensor(host(layer.b)))
        layers += [t] + ([nn.ReLU()] if layer.activation == "relu" else [])
    return nn.Sequential(*layers).to(device)


def torch_step(torch, net, opt, x, sigma=SIGMA, compiled=False):
    """One PyTorch training step -> the per-example loss; compiled=True: torch.compile of all of it."""
    def whole_step(x):
        opt.zero_grad(set_to_none=True)
        logits = net(x + sigma * torch.randn_like(x))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum") / x.shape[0]
        loss.backward()
        opt.step()
        return loss.detach()
    # dynamic=False: one static-shape graph per batch size, as a user with a fixed batch gets
    fn = torch.compile(whole_step, dynamic=False) if compiled else whole_step
    return lambda: fn(x).item()  # the host read tinydae also does


def torch_peers(torch, model, x, device, sigma=SIGMA, compile_peer=True):
    """{peer id: () -> step}; each builder runs when called (errors are caught per peer)."""
    def eager(**adam):
        net = torch_model(torch, model, device)
        return torch_step(torch, net, torch.optim.Adam(net.parameters(), lr=LR, **adam), x, sigma)

    def compiled():
        net = torch_model(torch, model, device)
        return torch_step(torch, net, torch.optim.Adam(net.parameters(), lr=LR, foreach=True), x, sigma,
                          compiled=True)
    peers = {"torch_eager": lambda: eager(foreach=False), "torch_foreach": lambda: eager(foreach=True),
             "torch_fused": lambda: eager(fused=True)}
    if compile_peer:
        peers["torch_compile_step"] = compiled
    return peers


def jax_params(jax, model):
    """tinydae's weights as [(W (in, out), b (out,))] JAX arrays."""
    to_host = model.backend.to_host
    return [(jax.numpy.asarray(to_host(layer.W)), jax.numpy.asarray(to_host(layer.b))) for layer in model.layers]


def jax_logits(jax, params, x):
    for i, (W, b) in enumerate(params):
        x = x @ W + b
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    return x


def jax_step(jax, model, x, sigma=SIGMA, seed=0, beta1=0.9, beta2=0.999, eps=1e-8):
    """One jitted JAX training step (corruption, forward, loss, gradient, Adam) -> the per-example
    loss; its state (parameters, moments, step count, RNG key) is donated and replaced each step."""
    jnp, tree_map = jax.numpy, jax.tree_util.tree_map

    def loss_fn(params, noisy, target):
        z = jax_logits(jax, params, noisy)
        # BCE with logits as tinydae computes it: max(z, 0) - z t + log1p(exp(-|z|)) stays finite
        return jnp.sum(jnp.maximum(z, 0) - z * target + jnp.log1p(jnp.exp(-jnp.abs(z)))) / target.shape[0]

    @functools.partial(jax.jit, donate_argnums=0)
    def whole_step(s, x):
        key, sub = jax.random.split(s["key"])
        noisy = x + sigma * jax.random.normal(sub, x.shape, x.dtype)
        loss, g = jax.value_and_grad(loss_fn)(s["params"], noisy, x)
        t = s["t"] + 1
        m = tree_map(lambda m, g: beta1 * m + (1 - beta1) * g, s["m"], g)
        v = tree_map(lambda v, g: beta2 * v + (1 - beta2) * g * g, s["v"], g)
        c1, c2 = 1 - beta1 ** t, 1 - beta2 ** t  # Adam's bias corrections, as in tinydae's kernel
        params = tree_map(lambda p, m, v: p - LR * (m / c1) / (jnp.sqrt(v / c2) + eps), s["params"], m, v)
        return dict(params=params, m=m, v=v, t=t, key=key), loss

    params = jax_params(jax, model)
    state = [dict(params=params, m=tree_map(jnp.zeros_like, params), v=tree_map(jnp.zeros_like, params),
                  t=jnp.zeros((), jnp.int32), key=jax.random.PRNGKey(seed))]
    xj = jnp.asarray(model.backend.to_host(x))

    def step():
        state[0], loss = whole_step(state[0], xj)
        jax.block_until_ready(state[0])  # dispatch is asynchronous: the timed call waits for the whole step
        return float(loss)
    return step


def add_peer(entries, row, name, build, timer, first=lambda fn: fn()):
    """entries[name] = (build(), timer) after running first(fn) once, where torch.compile and
    jax.jit compile; a failure (no C++ compiler, an unsupported platform, ...) goes into
    row[name + '_error'] instead, and the benchmark goes on without that peer."""
    try:
        fn = build()
        first(fn)
        entries[name] = (fn, timer)
    except Exception as e:
        row[f"{name}_error"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"


def run(backend="auto", batches=(64, 256, 1024), repeats=20, warmup=5, peers=True, compile_peer=True,
        log=print, arch=ARCH):
    backend = get_backend(backend)
    arch = canonical(arch)
    make_model = functools.partial(_make_model, arch=arch)
    torch = torch_or_none() if peers else None
    # jax[cpu] (a GPU would need jax[cuda]); its step is written for the dense model only
    jax = jax_or_none() if peers and backend.name == "cpu" and arch.startswith("mlp:") else None
    tdev = "cuda" if backend.name == "cuda" else "cpu"
    n_params = int(make_model(backend).params.size)
    flops_per_example = model_cost(make_model(backend).config)[0]
    # the streams cover as many bytes as Adam's four buffers, so both meet the same caches
    streams, stream_bytes = bandwidth_entries(backend, 2 * n_params)
    rows = []
    rng = np.random.default_rng(0)
    for B in batches:
        model = make_model(backend)
        opt = Adam(model, lr=LR)
        x = backend.to_device(rng.random((B, 784), dtype=np.float32))
        timer = backend_timer(backend)
        entries = {"tinydae": (tinydae_step(model, opt, x, [0]), timer), "floor": (gemm_floor(model, B), timer),
                   **streams}
        row = dict(batch=B)
        if torch is not None:
            tx = torch.as_tensor(backend.to_host(x), device=tdev)
            for name, build in torch_peers(torch, make_model(backend), tx, tdev, compile_peer=compile_peer).items():
                add_peer(entries, row, name, build, torch_timer(torch, tdev))
        if jax is not None:
            add_peer(entries, row, "jax_jit", lambda: jax_step(jax, make_model(backend), x),
                      one_call_timer(lambda: None))
        # Interleaved: each round times a block of every contender, so load changes hit all alike.
        t = interleaved_medians(entries, repeats, warmup)
        GBps = {name: stream_bytes[name] / t[name] / 1e9 for name in streams}
        # the layers' declared cost: forward FLOPs per example, and about twice that in backward
        row["gflop_per_s"] = 3 * flops_per_example * B / t["tinydae"] / 1e9
        row.update(ms=t["tinydae"] * 1e3, examples_per_s=B / t["tinydae"], floor_ms=t["floor"] * 1e3,
                   x_floor=t["tinydae"] / t["floor"], bandwidth_GBps=max(GBps.values()), bandwidth_GBps_each=GBps,
                   bound_ms=lower_bound_ms(t["floor"] * 1e3, n_params, max(GBps.values()), model.params.itemsize))
        row["x_bound"] = row["ms"] / row["bound_ms"]
        for name in PEERS:
            if name in t:
                row.update({f"{name}_ms": t[name] * 1e3, f"x_{name}": t["tinydae"] / t[name]})
        best, best_ms = strongest_peer(row, PEERS)
        if best is not None:
            row.update(strongest=best, strongest_ms=best_ms, x_strongest=row["ms"] / best_ms)
        rows.append(row)
        log(format_row(row))
    return dict(backend=backend.name, device=backend.device, kernels=backend.kernel_set,
                model=f"{describe(make_model(backend).config)} relu BCE Adam float32", arch=arch,
                rows=rows, repeats=repeats, peers=PEERS, n_params=n_params,
                lower_bound="floor_ms + 7 * 4 bytes * n_params / bandwidth_GBps",
                torch=None if torch is None else torch.__version__, jax=None if jax is None else jax.__version__)


HEADER = (f"{'batch':>6s} {'tinydae ms':>11s} {'ex/s':>9s} {'bound ms':>9s} {'x bound':>8s} "
          f"{'strongest peer':>22s} {'ms':>8s} {'x it':>6s}  x each peer")


def format_row(r):
    if "strongest" in r:
        best = f"{PEERS[r['strongest']]:>22s} {r['strongest_ms']:>8.2f} {r['x_strongest']:>6.2f}"
    else:
        best = f"{'n/a':>22s} {'':>8s} {'':>6s}"
    each = peer_ratios(r, PEERS)
    return (f"{r['batch']:>6d} {r['ms']:>11.2f} {r['examples_per_s']:>9,.0f} {r['bound_ms']:>9.2f} "
            f"{r['x_bound']:>8.2f} {best}  {each}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="auto", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--batches", default="64,256,1024")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--arch", default=ARCH, help=f"the DAE's architecture spec (e.g. {CONV_ARCH})")
    args = ap.parse_args(argv)
    print(HEADER)
    result = run(args.backend, [int(b) for b in args.batches.split(",")], args.repeats,
                 compile_peer=not args.no_compile, arch=args.arch)
    if not args.no_save:
        print("saved", save_section(get_backend(args.backend), section(args.arch), result))


if __name__ == "__main__":
    main()
