"""Conv DAE against the dense one at equal training time: denoising validation BCE on MNIST.

Each model trains with fit() (gaussian:0.3, Adam 1e-3, batch 64, untied, relu) on the first 90%
of a seeded split of the data, epoch after epoch, until its training time (fit's own wall_s,
validation included) passes --seconds; then its validation denoising BCE (corrupted -> clean,
nats per pixel) is read from the last epoch.  Models and seeds alternate, so slow phases of the
machine hit both.  The data: MNIST's test split (the only MNIST the project holds), or glyphs.

    python bench/bench_arch_quality.py [--data ../shared/data/mnist/t10k-images-idx3-ubyte.gz]
        [--archs mlp:1000,conv:32,64] [--seconds 60] [--seeds 0,1,2] [--json]
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tinydae as td  # noqa: E402

MNIST = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "mnist",
                     "t10k-images-idx3-ubyte.gz")


def train_for(arch, data, seconds, seed):
    """-> dict(arch, seed, epochs, seconds, val_bce_denoise_per_pixel, examples_per_s)"""
    train, val = data.split(0.1, seed=seed)
    model = td.DAE(data.dim, arch=arch, seed=seed, input_shape=data.image_shape)
    opt = td.Adam(model, lr=1e-3)
    state, epochs = None, 0
    while state is None or state.wall_seconds < seconds:
        epochs += 1
        state = td.fit(model, train, val, optimizer=opt, corruption="gaussian:0.3", epochs=epochs, batch_size=64,
                       seed=seed, state=state, handle_sigint=False)
    last = state.history[-1]
    return dict(arch=arch, seed=seed, epochs=epochs, seconds=state.wall_seconds, params=model.num_params,
                val_bce_denoise_per_pixel=last["val_bce_denoise"] / data.dim, examples_per_s=last["examples_per_s"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=MNIST if os.path.exists(MNIST) else "glyphs")
    ap.add_argument("--archs", default="mlp:1000;conv:32,64", help="specs separated by ';'")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    data = td.load_dataset(args.data)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for arch in args.archs.split(";"):
            r = train_for(arch, data, args.seconds, seed)
            rows.append(r)
            if not args.json:
                print(f"{r['arch']:>14s} seed {seed}: {r['epochs']:3d} epochs in {r['seconds']:6.1f} s "
                      f"({r['examples_per_s']:,.0f} ex/s, {r['params']:,} parameters): "
                      f"val BCE {r['val_bce_denoise_per_pixel']:.4f} nats/pixel", flush=True)
    if args.json:
        print(json.dumps(dict(data=data.name, seconds=args.seconds, rows=rows), indent=2))


if __name__ == "__main__":
    main()
