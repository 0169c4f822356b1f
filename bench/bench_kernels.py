"""Kernel microbenchmarks: each fused twin against the hardware and its peers, in one process.

For every op and size: the twin's median time (after warm-up; CUDA events on the GPU), the
bytes it must move and so its GB/s, the fraction of the measured copy bandwidth, and the
speed-up over (b) the NumPy reference (kernels/reference.py, on the host) and (c) PyTorch
eager doing the same work when torch is importable.  On the GPU it also measures the host
cost of one kernel launch on CuPy arrays.

    python bench/bench_kernels.py [--backend cpu|cuda|auto] [--sizes 1M,16M] [--repeats 20]
    python cli.py bench kernels ...
Results go to bench/results/<backend-device>.json (section "kernels").
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (median_seconds, save_section, torch_median_seconds,  # noqa: E402
                          torch_or_none)
from tinydae.kernels import reference as ref  # noqa: E402
from tinydae.backend import get_backend  # noqa: E402

COLS = 1024  # 2-D ops use (N / COLS, COLS)


MAX_SIZE = 1 << 34  # 16 Gi elements: far past any machine's memory for the ops' arrays


def memory(n):
    """Bytes a run at n elements holds, on the high side: the host arrays and their float64 draws,
    the backend's copies and outputs, Adam's moments, the copy test and the PyTorch peer's tensors
    (about 25 float32 arrays of n elements and a few float64 ones)."""
    return 4 * 25 * n + 8 * 4 * n


def parse_size(text):
    """'4K' | '1M' | '16M' | '1000' -> an element count; ValueError for anything else (empty,
    not a number, inf, NaN, < 1 or absurdly large)."""
    import math

    text = text.strip().upper()
    if not text:
        raise ValueError("empty size")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1], 1)
    value = float(text[:-1] if mult > 1 else text)
    if not math.isfinite(value) or value * mult < 1 or value * mult > MAX_SIZE:
        raise ValueError(f"size {text} out of range")
    return int(value * mult)


def make_ops(n, seed=0):
    """[(name, bytes moved, setup(xp) -> state, fused(K, s), reference(s), torch(torch, s))]"""
    rng = np.random.default_rng(seed)
    rows = n // COLS
    x = rng.uniform(0.05, 0.95, (rows, COLS)).astype(np.float32)
    z = rng.normal(0, 2, (rows, COLS)).astype(np.float32)
    b = rng.normal(0, 1, COLS).astype(np.float32)
    p = rng.normal(0, 1, rows * COLS).astype(np.float32)
    g = rng.normal(0, 1, rows * COLS).astype(np.float32)
    m = n * 4  # bytes of one float32 array of n elements
    host = dict(x=x, z=z, b=b, p=p, g=g)

    def torch_bce(torch, s):
        s["tz"].grad = None
        torch.nn.functional.binary_cross_entropy_with_logits(s["tz"], s["tx"], reduction="sum").backward()

    return host, [
        ("corrupt gaussian", 2 * m,
         lambda K, s: K.corrupt(s["out"], s["x"], 1, 0.3, 1, 2, 0),
         lambda s: ref.corrupt(s["out"], s["x"], 1, 0.3, 1, 2, 0),
         lambda torch, s: s["tx"] + 0.3 * torch.randn_like(s["tx"])),
        ("corrupt masking", 2 * m,
         lambda K, s: K.corrupt(s["out"], s["x"], 2, 0.25, 1, 2, 0),
         lambda s: ref.corrupt(s["out"], s["x"], 2, 0.25, 1, 2, 0),
         lambda torch, s: torch.where(torch.rand_like(s["tx"]) < 0.25, 0.0, s["tx"])),
        ("bias+relu forward", 2 * m,
         lambda K, s: K.bias_act_forward(s["out"], s["z"], s["b"], "relu"),
         lambda s: ref.bias_act_forward(s["out"], s["z"], s["b"], "relu"),
         lambda torch, s: torch.relu(s["tz"] + s["tb"])),
        ("bias+relu backward", 3 * m,
         lambda K, s: K.bias_act_backward(s["out"], s["db"], s["x"], s["z"], "relu"),
         lambda s: ref.bias_act_backward(s["out"], s["db"], s["x"], s["z"], "relu"),
         lambda torch, s: torch.ops.aten.threshold_backward(s["tx"], s["tz"], 0).sum(0)),
        ("bias+sigmoid+change", 3 * m,  # the chain step, in place on y: each call feeds its output back
         lambda K, s: K.bias_sigmoid_change(s["y"], s["change"], s["b"], s["x"]),
         lambda s: ref.bias_sigmoid_change(s["y"], s["change"], s["b"], s["x"]),
         lambda torch, s: (torch.sigmoid(s["tz"] + s["tb"]) - s["tx"]).abs().sum(1, dtype=torch.float64)),
        ("sigmoid-BCE fwd+bwd", 3 * m,
         lambda K, s: K.sigmoid_bce_forward_backward(s["out"], s["z"], s["x"], 1.0),
         lambda s: ref.sigmoid_bce_forward_backward(s["out"], s["z"], s["x"], 1.0),
         torch_bce),
        ("adam update", 7 * m,
         lambda K, s: K.adam_update(s["p"], s["g"], s["m"], s["v"], 1e-3, 0.9, 0.999, 1e-8, 0.0, False, 3),
         lambda s: ref.adam_update(s["p"], s["g"], s["m"], s["v"], 1e-3, 0.9, 0.999, 1e-8, 0.0, False, 3),
         lambda torch, s: s["adam"].step()),
        ("sgd momentum update", 5 * m,
         lambda K, s: K.sgd_update(s["p"], s["g"], s["m"], 1e-2, 0.9, False, 0.0),
         lambda s: ref.sgd_update(s["p"], s["g"], s["m"], 1e-2, 0.9, False, 0.0),
         lambda torch, s: s["sgd"].step()),
    ]


def state(xp, host):
    s = {k: xp.asarray(v) for k, v in host.items()}
    s.update(out=xp.empty_like(s["x"]), db=xp.zeros(COLS, np.float32), y=s["z"].copy(),
             change=xp.zeros(len(s["x"]), np.float64),
             m=xp.zeros_like(s["p"]), v=xp.zeros_like(s["p"]))
    return s


def torch_state(torch, host, device):
    t = {"t" + k: torch.as_tensor(v, device=device) for k, v in host.items()}
    t["tz"].requires_grad_(True)
    param = torch.nn.Parameter(torch.as_tensor(host["p"].copy(), device=device))
    param.grad = torch.as_tensor(host["g"], device=device)
    t["adam"] = torch.optim.Adam([param], lr=1e-3)  # PyTorch's default implementation
    param2 = torch.nn.Parameter(torch.as_tensor(host["p"].copy(), device=device))
    param2.grad = torch.as_tensor(host["g"], device=device)
    t["sgd"] = torch.optim.SGD([param2], lr=1e-2, momentum=0.9)
    return t


def _parallel_copy():
    from numba import njit, prange

    @njit(parallel=True)
    def copy(dst, src):
        for i in prange(src.size):
            dst[i] = src[i]
    return copy


def copy_bandwidth(backend, n, repeats):
    """GB/s of a plain copy (read + write): the floor every kernel is measured against.
    On the CPU it uses all cores, like the twins (np.copyto uses one)."""
    xp = backend.xp
    src = xp.ones(n, np.float32)
    dst = xp.empty_like(src)
    copy = _parallel_copy() if backend.name == "cpu" else xp.copyto
    seconds = median_seconds(lambda: copy(dst, src), repeats, 3, backend)
    return 2 * n * 4 / seconds / 1e9


def launch_overhead_us(backend, launches=2000):
    """Host microseconds per launch of a one-element kernel on CuPy arrays (GPU only)."""
    if backend.name != "cuda":
        return None
    out = backend.xp.empty(1, np.uint32)
    K = backend.kernels
    K.philox_uint32(out, 0, 0, 0)  # compile
    backend.sync()
    t0 = time.perf_counter()
    for i in range(launches):
        K.philox_uint32(out, 0, i, 0)
    backend.sync()
    return (time.perf_counter() - t0) / launches * 1e6


def run(backend="auto", sizes=(1 << 20, 1 << 24), repeats=20, warmup=3, peers=True, log=print):
    backend = get_backend(backend)
    torch = torch_or_none() if peers else None
    tdev = "cuda" if backend.name == "cuda" else "cpu"
    rows = []
    copy_gbps = {}
    for n in sizes:
        n = max(COLS, n // COLS * COLS)
        copy_gbps[n] = copy_bandwidth(backend, n, repeats)
        host, ops = make_ops(n)
        dev = state(backend.xp, host)
        ref_state = state(np, host) if peers else None
        tstate = torch_state(torch, host, tdev) if torch is not None else None
        for name, nbytes, fused, reference, torch_fn in ops:
            t = median_seconds(lambda: fused(backend.kernels, dev), repeats, warmup, backend)
            row = dict(op=name, n=n, ms=t * 1e3, GBps=nbytes / t / 1e9,
                       frac_copy=nbytes / t / 1e9 / copy_gbps[n])
            if ref_state is not None:
                cpu = get_backend("cpu", "reference")
                t_ref = median_seconds(lambda: reference(ref_state), max(3, repeats // 4), 1, cpu)
                row.update(reference_ms=t_ref * 1e3, speedup_vs_reference=t_ref / t)
            if tstate is not None:
                t_torch = torch_median_seconds(torch, lambda: torch_fn(torch, tstate), repeats, warmup, tdev)
                row.update(torch_ms=t_torch * 1e3, speedup_vs_torch=t_torch / t)
            rows.append(row)
            log(format_row(row))
    return dict(backend=backend.name, device=backend.device, copy_GBps=copy_gbps, rows=rows,
                launch_overhead_us=launch_overhead_us(backend),
                torch=None if torch is None else torch.__version__, repeats=repeats)


HEADER = (f"{'op':22s} {'elements':>10s} {'ms':>9s} {'GB/s':>8s} {'of copy':>8s} "
          f"{'x NumPy ref':>11s} {'x PyTorch':>10s}")


def format_row(r):
    ref_x = f"{r['speedup_vs_reference']:.2f}" if "speedup_vs_reference" in r else "-"
    torch_x = f"{r['speedup_vs_torch']:.2f}" if "speedup_vs_torch" in r else "not inst."
    return (f"{r['op']:22s} {r['n']:>10,d} {r['ms']:>9.3f} {r['GBps']:>8.1f} {r['frac_copy']:>7.0%} "
            f"{ref_x:>11s} {torch_x:>10s}")


def format_table(result):
    lines = [f"kernels on {result['backend']}: {result['device']}  (median of {result['repeats']}; "
             f"x = speed-up of the fused twin; PyTorch {result['torch'] or 'not installed'})", HEADER]
    lines += [format_row(r) for r in result["rows"]]
    lines.append("copy bandwidth: " + ", ".join(f"{n:,d} elements {g:.1f} GB/s"
                                                 for n, g in result["copy_GBps"].items()))
    if result["launch_overhead_us"] is not None:
        lines.append(f"launch overhead: {result['launch_overhead_us']:.1f} us per kernel launch on CuPy arrays")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="auto", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--sizes", default="1M,16M", help="element counts, e.g. 1M,16M")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv)
    print(HEADER)
    result = run(args.backend, [parse_size(s) for s in args.sizes.split(",")], args.repeats)
    print("\n".join(line for line in format_table(result).splitlines()
                    if line.startswith(("kernels on", "copy", "launch"))))
    if not args.no_save:
        print("saved", save_section(get_backend(args.backend), "kernels", result))


if __name__ == "__main__":
    main()
