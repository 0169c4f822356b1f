"""Convolution layers' forward + backward: tinydae's Conv2d / ConvTranspose2d against PyTorch eager.

The encoder-decoder of a small conv DAE on 28x28x1 images, layer by layer (issue 20's suggested
architecture: 1 -> 32 -> 64 channels, 4x4 windows at stride 2, padding 1, mirrored by tied
transposed convolutions), one forward and one backward of all four layers per call, float32,
on the same weights and batch.  No loss and no optimizer: this times the conv layers themselves
(im2col, the GEMMs, the fused bias+activation, col2im), the part of a conv training step that is
new.  PyTorch runs NCHW (its native layout) with torch.nn.functional.conv2d / conv_transpose2d
and autograd.  Median seconds per call over interleaved rounds (bench/common.py); the ratio
tinydae / PyTorch is the figure to read (issue 20's target for a whole step: <= 1.3x).

    python bench/bench_conv.py [--batches 64,256] [--repeats 10] [--backend cpu]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import backend_timer, interleaved_medians, torch_or_none, torch_timer  # noqa: E402
from tinydae.backend import get_backend  # noqa: E402
from tinydae.layers import Conv2d, ConvTranspose2d, Sequential  # noqa: E402

SPEC = [(1, 32), (32, 64)]  # (in, out) channels of the encoder's convolutions
K, STRIDE, PAD = 4, 2, 1


def weights(seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(0, (2 / (K * K * c)) ** 0.5, (K * K * c, f)).astype(np.float32),
             rng.normal(0, 0.1, f).astype(np.float32), rng.normal(0, 0.1, c).astype(np.float32))
            for c, f in SPEC]


def tinydae_call(backend, ws, x):
    """-> () -> None: forward and backward through conv1, conv2 (relu), convT2 (relu), convT1 (identity)."""
    xp = backend.xp
    (W1, b1, bt1), (W2, b2, bt2) = ws
    # tied: each transposed convolution uses its convolution's weight (one W, one dW)
    net = Sequential([("c1", Conv2d(32, K, STRIDE, PAD, "relu")), ("c2", Conv2d(64, K, STRIDE, PAD, "relu")),
                      ("t2", ConvTranspose2d(32, K, STRIDE, PAD, (14, 14), "relu", tie="c2")),
                      ("t1", ConvTranspose2d(1, K, STRIDE, PAD, (28, 28), "identity", tie="c1"))],
                     (28, 28, 1), backend, np.float32)
    for name, value in (("c1.W", W1), ("c1.b", b1), ("t1.b", bt1), ("c2.W", W2), ("c2.b", b2), ("t2.b", bt2)):
        net.named_params[name][...] = xp.asarray(value)
    layers = net.layers
    x = xp.asarray(x)

    def call():
        h, caches = x, []
        for layer in layers:
            h, cache = layer.forward(h)
            caches.append(cache)
        d = xp.ones_like(h)
        for layer, cache in zip(layers[::-1], caches[::-1]):
            d = layer.backward(d, cache, need_dx=layer is not layers[0])
    return call


def torch_call(torch, ws, x, device="cpu"):
    F = torch.nn.functional
    params = []
    for W, b, bt in ws:
        c, f = W.shape[0] // (K * K), W.shape[1]
        w = torch.tensor(W.reshape(K, K, c, f).transpose(3, 2, 0, 1).copy(), device=device, requires_grad=True)
        params.append((w, torch.tensor(b, device=device, requires_grad=True),
                       torch.tensor(bt, device=device, requires_grad=True)))
    xt = torch.tensor(x.transpose(0, 3, 1, 2).copy(), device=device)

    def call():
        h = xt
        for w, b, _ in params:
            h = torch.relu(F.conv2d(h, w, b, stride=STRIDE, padding=PAD))
        for i, (w, _, bt) in reversed(list(enumerate(params))):
            h = F.conv_transpose2d(h, w, bt, stride=STRIDE, padding=PAD)
            h = torch.relu(h) if i else h
        h.backward(torch.ones_like(h))
    return call


def run(backend="cpu", batches=(64, 256), repeats=10, warmup=2, log=print):
    backend = get_backend(backend)
    torch = torch_or_none()
    ws = weights()
    rows = []
    for B in batches:
        x = np.random.default_rng(1).uniform(0, 1, (B, 28, 28, 1)).astype(np.float32)
        entries = {"tinydae": (tinydae_call(backend, ws, x), backend_timer(backend))}
        if torch is not None:
            device = "cuda" if backend.name == "cuda" else "cpu"
            torch.set_num_threads(os.cpu_count() or 1)
            entries["pytorch"] = (torch_call(torch, ws, x, device), torch_timer(torch, device))
        medians = interleaved_medians(entries, repeats, warmup)
        row = dict(batch=B, tinydae_ms=medians["tinydae"] * 1e3)
        if "pytorch" in medians:
            row.update(pytorch_ms=medians["pytorch"] * 1e3, x_pytorch=medians["tinydae"] / medians["pytorch"])
        rows.append(row)
        log(f"batch {B:5d}: tinydae {row['tinydae_ms']:8.2f} ms"
            + (f", PyTorch eager {row['pytorch_ms']:8.2f} ms, ratio {row['x_pytorch']:.2f}x" if "pytorch_ms" in row
               else ", PyTorch not installed"))
    return dict(backend=backend.name, device=backend.device, rows=rows,
                torch=getattr(torch, "__version__", None))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="64,256")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--backend", default="cpu")
    args = ap.parse_args(argv)
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        print(f"error: --batches takes sizes like 64,256, got {args.batches!r}", file=sys.stderr)
        return 2
    if args.repeats < 1 or min(batches) < 1:
        print("error: --repeats and --batches must be positive", file=sys.stderr)
        return 2
    result = run(args.backend, batches, args.repeats)
    print(f"{result['device']} ({result['backend']}), PyTorch {result['torch'] or 'not installed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
