"""Embedding cost: tinydae on NumPy alone vs the fused (numba) CPU backend vs PyTorch.

What a user embedding a trained DAE pays, each figure from fresh processes (no warm imports):
  import s          `import tinydae` + get_backend (for "cpu" that imports numba and the
                    kernels), or `import torch`
  first recon. s    wall time from spawning the process to the first reconstruct of one row
                    returning: interpreter start, imports, loading the checkpoint (HDF5, or
                    torch.load of a state dict into an equivalent nn.Sequential), the forward
  peak RSS MiB      the process's peak resident memory (VmHWM) right after that reconstruct
  env MiB           the installed files (importlib.metadata RECORDs) of each runtime's
                    dependency closure, from the `requires` metadata; tinydae itself counted
                    as its unpacked wheel
Model: 784-1000-784 relu, float32 (an MNIST-sized DAE), random weights, saved with Adam's
state as `train` saves it (load_model does not read that state).  The fused backend is
timed with numba's cache warm (the normal case after the first run) and, unless --quick, cold
(a fresh NUMBA_CACHE_DIR: the first run after an install).  Runs are interleaved, one of each
runtime per round; figures are medians with [min-max] over --repeats rounds.  Timings need a
quiet machine.

    python bench/bench_embed.py [--repeats 5] [--quick] [--no-torch] [--save]
--save writes bench/results/embed.json (TINYDAE_BENCH_RESULTS redirects it).
"""
import argparse
import importlib.metadata as md
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # the checkout, also via a symlinked bench/
sys.path.insert(0, ROOT)

from bench.common import RESULTS_DIR, versions  # noqa: E402

INPUT_DIM, HIDDEN = 784, 1000

# Child processes.  argv: spawn time (time.time() in the parent), model file[, backend].
# Peak RSS is read from /proc's VmHWM: on Linux ru_maxrss survives exec, so a child spawned by
# this (torch-importing) parent would report the parent's peak.
PEAK_RSS = r"""
import resource

def peak_rss_kib():
    try:  # VmHWM: this process image's peak; ru_maxrss would carry the parent's over exec
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""

TINYDAE = PEAK_RSS + r"""
import json, sys, time
t = time.perf_counter()
import tinydae
backend = tinydae.get_backend(sys.argv[3])
import_s = time.perf_counter() - t
import numpy as np
model = tinydae.load_model(sys.argv[2], backend=backend)
x = np.random.default_rng(0).random((1, model.input_dim), dtype=np.float32)
y = model.reconstruct(x)
first_s = time.time() - float(sys.argv[1])
print(json.dumps(dict(import_s=import_s, first_s=first_s, rss_kib=peak_rss_kib(),
                      checksum=float(y.sum()))))
"""

TORCH = PEAK_RSS + f"D, H = {INPUT_DIM}, {HIDDEN}\n" + r"""
import json, sys, time
t = time.perf_counter()
import torch
import_s = time.perf_counter() - t
net = torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.ReLU(), torch.nn.Linear(H, D), torch.nn.Sigmoid())
net.load_state_dict(torch.load(sys.argv[2], weights_only=True))
net.eval()
x = torch.rand(1, D)
with torch.inference_mode():
    y = net(x)
first_s = time.time() - float(sys.argv[1])
print(json.dumps(dict(import_s=import_s, first_s=first_s, rss_kib=peak_rss_kib(),
                      checksum=float(y.sum()))))
"""

# The interpreter alone: the floor under every "first recon." figure.
BARE = PEAK_RSS + r"""
import json, sys, time
print(json.dumps(dict(import_s=0.0, first_s=time.time() - float(sys.argv[1]),
                      rss_kib=peak_rss_kib())))
"""

# Roots of each runtime's dependency closure (tinydae's own files are added from the wheel).
ENVIRONMENTS = {"tinydae numpy": ["numpy", "h5py"],
                "tinydae fused cpu": ["numpy", "h5py", "numba", "click"],
                "PyTorch": ["torch"]}


def make_models(folder, with_torch):
    """The checkpoint (and the same weights as a torch state dict) -> their paths."""
    import numpy as np

    import tinydae

    model = tinydae.DAE(INPUT_DIM, hidden=(HIDDEN,), activation="relu", seed=0, backend="numpy")
    ckpt = os.path.join(folder, "dae.h5")
    # with Adam's state, as `python cli.py train` writes it (load_model leaves it unread)
    opt = tinydae.Adam(model)
    x = np.random.default_rng(0).random((8, INPUT_DIM), dtype=np.float32)
    model.loss_and_grad(x, x)
    opt.step()
    tinydae.save_checkpoint(ckpt, model, optimizer=opt, train_config={"corruption": "gaussian:0.3"})
    if not with_torch:
        return ckpt, None
    import torch

    p = model.named_params  # name -> view into the flat buffer
    # tinydae's W is (in, out); torch's Linear.weight is (out, in).
    sd = {"0.weight": p["enc0.W"].T, "0.bias": p["enc0.b"], "2.weight": p["dec0.W"].T, "2.bias": p["dec0.b"]}
    pt = os.path.join(folder, "dae.pt")
    sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    torch.save(sd, pt)
    # The peer must compute the same function: check it here, outside the timed children.
    net = torch.nn.Sequential(torch.nn.Linear(INPUT_DIM, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, INPUT_DIM),
                              torch.nn.Sigmoid())
    net.load_state_dict(sd)
    x = np.random.default_rng(0).random((4, INPUT_DIM), dtype=np.float32)
    with torch.inference_mode():
        y = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, model.reconstruct(x), rtol=1e-4, atol=1e-6)
    return ckpt, pt


def run_child(code, model_path, backend=None, env=None):
    argv = [sys.executable, "-c", code, repr(time.time()), model_path] + ([backend] if backend else [])
    r = subprocess.run(argv, cwd=tempfile.gettempdir(), env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"child failed ({backend or 'torch'}):\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def summary(values):
    return dict(median=statistics.median(values), min=min(values), max=max(values), values=values)


# ---------------------------------------------------------------------------------------------
# Sizes
# ---------------------------------------------------------------------------------------------


def _requirement_names(dist):
    """Names of dist's unconditional requirements (and those whose markers hold here)."""
    names = []
    for text in dist.requires or []:
        try:
            from packaging.requirements import Requirement

            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                names.append(req.name)
        except ImportError:  # no packaging: a name, and extras dropped
            if "extra ==" not in text:
                names.append(re.match(r"[A-Za-z0-9._-]+", text).group(0))
    return names


def _norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots):
    """-> (sorted installed distribution names, missing names) reachable from roots."""
    seen, missing, todo = {}, set(), list(roots)
    while todo:
        name = todo.pop()
        if _norm(name) in seen or _norm(name) in missing:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            missing.add(_norm(name))
            continue
        seen[_norm(name)] = dist
        todo += _requirement_names(dist)
    return seen, sorted(missing)


def installed_bytes(dist):
    total = 0
    for f in dist.files or []:
        try:
            total += os.path.getsize(dist.locate_file(f))
        except OSError:
            pass  # listed but absent (e.g. a .pyc never written)
    return total


def build_wheel(folder):
    """tinydae's wheel from a copy of the checkout -> (path, unpacked bytes), or (None, error)."""
    src = os.path.join(folder, "src")
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", "runs", "build", "*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache", "results"))
    out = os.path.join(folder, "wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", out, src], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        return None, (r.stderr.strip().splitlines() or ["pip wheel failed"])[-1]
    (name,) = [n for n in os.listdir(out) if n.endswith(".whl")]
    path = os.path.join(out, name)
    return path, sum(i.file_size for i in zipfile.ZipFile(path).infolist())


def environments(wheel_unpacked):
    out = {}
    for label, roots in ENVIRONMENTS.items():
        dists, missing = closure(roots)
        size = sum(installed_bytes(d) for d in dists.values())
        if label.startswith("tinydae") and wheel_unpacked:
            size += wheel_unpacked
        out[label] = dict(distributions=sorted(dists), missing=missing, mib=size / 2**20)
    return out


# ---------------------------------------------------------------------------------------------


def fmt(s, unit_format="{:.3f}"):
    return f"{unit_format.format(s['median'])} [{unit_format.format(s['min'])}-{unit_format.format(s['max'])}]"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="rounds; each runs every runtime once")
    ap.add_argument("--quick", action="store_true", help="no cold-cache numba row (each compiles the kernels)")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    ap.add_argument("--save", action="store_true", help="write bench/results/embed.json")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    with_torch = not args.no_torch and importlib.util.find_spec("torch") is not None

    folder = tempfile.mkdtemp(prefix="tinydae-embed-")
    try:
        ckpt, pt = make_models(folder, with_torch)
        env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
        run_child(TINYDAE, ckpt, "cpu", env)  # fills numba's cache for the warm-cache row
        contenders = [("python alone", lambda: run_child(BARE, ckpt, env=env)),
                      ("tinydae numpy", lambda: run_child(TINYDAE, ckpt, "numpy", env)),
                      ("tinydae fused cpu (warm numba cache)", lambda: run_child(TINYDAE, ckpt, "cpu", env))]
        if not args.quick:
            def cold():
                cache = tempfile.mkdtemp(dir=folder)  # empty: numba compiles every kernel used
                return run_child(TINYDAE, ckpt, "cpu", dict(env, NUMBA_CACHE_DIR=cache))
            contenders.append(("tinydae fused cpu (cold numba cache)", cold))
        if with_torch:
            contenders.append(("PyTorch", lambda: run_child(TORCH, pt, env=env)))
        samples = {label: [] for label, _ in contenders}
        for _ in range(args.repeats):
            for label, fn in contenders:
                samples[label].append(fn())
        wheel, unpacked = build_wheel(folder)
        wheel_info = (dict(file=os.path.basename(wheel), bytes=os.path.getsize(wheel), unpacked_bytes=unpacked)
                      if wheel else dict(error=unpacked))
        envs = environments(unpacked if wheel else 0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    rows = []
    for label, runs in samples.items():
        rows.append(dict(runtime=label, import_s=summary([r["import_s"] for r in runs]),
                         first_reconstruct_s=summary([r["first_s"] for r in runs]),
                         peak_rss_mib=summary([r["rss_kib"] / 1024 for r in runs])))
    env_of = {"tinydae numpy": "tinydae numpy", "PyTorch": "PyTorch"}
    print(f"{INPUT_DIM}-{HIDDEN}-{INPUT_DIM} relu float32, one row; {args.repeats} round(s), median [min-max]; "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print()
    print("| runtime | import s | process start -> first reconstruct s | peak RSS MiB | environment MiB |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for row in rows:
        label = row["runtime"]
        env_label = env_of.get(label, "tinydae fused cpu" if label.startswith("tinydae fused") else None)
        env_mib = f"{envs[env_label]['mib']:.1f}" if env_label else "-"
        print(f"| {label} | {fmt(row['import_s'])} | {fmt(row['first_reconstruct_s'])} | "
              f"{fmt(row['peak_rss_mib'], '{:.0f}')} | {env_mib} |")
    print()
    for label, e in envs.items():
        extra = f"; not installed: {', '.join(e['missing'])}" if e["missing"] else ""
        own = " + tinydae's wheel" if label.startswith("tinydae") else ""
        print(f"- {label}: {e['mib']:.1f} MiB = {', '.join(e['distributions'])}{own}{extra}")
    if wheel:
        print(f"- tinydae wheel {wheel_info['file']}: {wheel_info['bytes'] / 1024:.0f} KiB "
              f"({wheel_info['unpacked_bytes'] / 1024:.0f} KiB unpacked)")
    else:
        print(f"- tinydae wheel: not built ({wheel_info['error']})")
    result = dict(model=f"{INPUT_DIM}-{HIDDEN}-{INPUT_DIM} relu float32", repeats=args.repeats,
                  cores=os.cpu_count(), versions=versions(), runtimes=rows, environments=envs, wheel=wheel_info)
    if args.save:
        os.makedirs(RESULTS_DIR, exist_ok=True)
        path = os.path.join(RESULTS_DIR, "embed.json")
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
        print("saved", path)
    return result


if __name__ == "__main__":
    main()
