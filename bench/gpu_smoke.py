"""Helpers of ``bash bench/run_on_gpu.sh smoke`` (the first minutes on a GPU machine).

    python3 bench/gpu_smoke.py versions                 # python, numpy, numba, numba-cuda, cuda-bindings,
                                                        # cupy, driver, device, CUDA_HOME, ptxas
    python3 bench/gpu_smoke.py needs-wheels BUNDLE      # exit 0 when numba-cuda is missing, older than
                                                        # 0.30.4 (the first to import beside numba >= 0.66)
                                                        # or not the one BUNDLE was built with
    python3 bench/gpu_smoke.py bundle DIR               # exit 0 when DIR is a build-cuda bundle for this
                                                        # device, these kernel sources and this numba-cuda
    python3 bench/gpu_smoke.py compare CUDA.h5 CPU.h5   # the same training on cuda and cpu: losses and
                                                        # parameters agree to float32 tolerance
    python3 bench/gpu_smoke.py summary OUT.json STAGES  # the stage table (name rc seconds budget per line)
                                                        # -> JSON, and one line per stage
"""
import json
import os
import shutil
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MIN_NUMBA_CUDA = (0, 30, 4)  # 0.24-0.30.0 fail `from numba import cuda` beside numba >= 0.66 (AttributeError)


def _version(pkg):
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def _tuple(v):
    out = []
    for part in (v or "").split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def versions():
    from bench import gpu_preflight as gp

    v = gp.versions()
    rows = [("python", v["python"])] + [(p, v.get(p) or _version(p)) for p in
                                         ("numpy", "numba", "numba-cuda", "cuda-bindings", "cuda-core",
                                          "cupy-cuda13x", "cupy-cuda12x", "nvidia-nvjitlink", "nvidia-nvvm")]
    reason = gp.gpu_unavailable_reason()
    if reason is None:
        info = gp.device_info()
        rows += [("driver", f"{info['driver']} ({info['driver_version']})"), ("runtime", info["runtime"]),
                 ("device", f"{info['name']}, {info['arch']}, {info['memory_gib']} GiB")]
    else:
        rows += [("device", f"none ({reason})")]
    rows += [("CUDA_HOME", os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")),
             ("ptxas", shutil.which("ptxas") or (os.path.join(os.environ["CUDA_HOME"], "bin", "ptxas")
                                                 if os.environ.get("CUDA_HOME") else None)),
             ("TINYDAE_CUDA_CUBINS", os.environ.get("TINYDAE_CUDA_CUBINS"))]
    for name, value in rows:
        print(f"{name:20s} {value if value else 'none'}")
    try:
        from numba import cuda  # noqa: F401
        print(f"{'from numba import cuda':20s} ok")
    except Exception as e:
        print(f"{'from numba import cuda':20s} FAILED: {type(e).__name__}: {str(e).strip()[:200]}")
    return 0 if reason is None else 2


def needs_wheels(bundle=None):
    """Exit 0 (install the carried wheels) when numba-cuda is missing, older than 0.30.4, or not
    the version the carried bundle was built with (its cubins' keys name that version)."""
    have = _version("numba-cuda")
    want = None
    try:
        with open(os.path.join(bundle or "", "manifest.json")) as f:
            want = json.load(f).get("numba_cuda")
    except (OSError, ValueError):
        pass
    if have is None or _tuple(have) < MIN_NUMBA_CUDA:
        print(f"numba-cuda {have or 'missing'}: older than 0.30.4, install the carried wheels")
        return 0
    if want and have != want:
        print(f"numba-cuda {have}, the carried bundle was built with {want}: install the carried wheels")
        return 0
    print(f"numba-cuda {have}: nothing to install")
    return 1


def bundle(directory):
    """Is DIR a bundle this machine's launcher will load?  Prints why not."""
    from tinydae.kernels import cuda_build

    path = os.path.join(directory, "manifest.json")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        print(f"no bundle at {directory} ({type(e).__name__}: {e})")
        return 1
    problems = []
    try:
        arch = cuda_build.arch_name(cuda_build.device_arch())
        if manifest.get("arch") != arch:
            problems.append(f"built for {manifest.get('arch')}, this device is {arch}")
    except Exception as e:
        problems.append(f"no device to compare the architecture with ({type(e).__name__})")
    if manifest.get("source_digest") != cuda_build.source_digest():
        problems.append("built from other kernel sources")
    if manifest.get("numba_cuda") != cuda_build.numba_cuda_version():
        problems.append(f"built with numba-cuda {manifest.get('numba_cuda')}, this is {cuda_build.numba_cuda_version()}")
    failed = [r for r in manifest.get("kernels", []) if not r.get("ok")]
    if failed:
        problems.append(f"{len(failed)} variants failed to build")
    if problems:
        print(f"bundle {directory} will not load here: " + "; ".join(problems))
        return 1
    print(f"bundle {directory}: {len(manifest['kernels'])} variants for {manifest['arch']}, numba-cuda "
          f"{manifest['numba_cuda']}, these sources")
    return 0


def compare(cuda_path, cpu_path, rtol=1e-3, atol=1e-4):
    """Two checkpoints of the same training (same seed and data) on cuda and on cpu."""
    import tinydae as td

    models = [td.load_model(p, backend="numpy") for p in (cuda_path, cpu_path)]
    histories = []
    for p in (cuda_path, cpu_path):
        with open(os.path.join(os.path.dirname(p), "history.json")) as f:
            histories.append(json.load(f))
    ok = True
    losses = [[e["train_loss"] for e in h] for h in histories]
    loss_ok = len(losses[0]) == len(losses[1]) and np.allclose(losses[0], losses[1], rtol=1e-4)
    print(f"{'PASS' if loss_ok else 'FAIL'}  train_loss per epoch, cuda {losses[0]} / cpu {losses[1]} (rtol 1e-4)")
    ok &= loss_ok
    a, b = (np.asarray(m.params, np.float64) for m in models)
    diff = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("inf")
    params_ok = a.shape == b.shape and np.allclose(a, b, rtol=rtol, atol=atol)
    print(f"{'PASS' if params_ok else 'FAIL'}  parameters after training: max |cuda - cpu| {diff:.3g} "
          f"(rtol {rtol:g}, atol {atol:g}; {a.size} values)")
    ok &= params_ok
    return 0 if ok else 1


def summary(out_path, table):
    stages = []
    with open(table) as f:
        for line in f:
            name, rc, seconds, budget = line.split()
            stages.append(dict(stage=name, rc=int(rc), seconds=float(seconds), budget_s=int(budget),
                               ok=int(rc) == 0, timed_out=int(rc) in (124, 137)))
    with open(out_path, "w") as f:
        json.dump(dict(stages=stages, passed=sum(s["ok"] for s in stages), total=len(stages)), f, indent=2)
    for s in stages:
        status = "PASS" if s["ok"] else ("TIMEOUT" if s["timed_out"] else "FAIL")
        print(f"{status:7s} {s['stage']:10s} {s['seconds']:6.1f} s of {s['budget_s']} s  (exit {s['rc']})")
    print(f"smoke: {sum(s['ok'] for s in stages)}/{len(stages)} stages passed ({out_path})")
    return 0 if all(s["ok"] for s in stages) else 1


def main(argv):
    cmds = {"versions": (versions, 0), "needs-wheels": (needs_wheels, 1), "bundle": (bundle, 1),
            "compare": (compare, 2), "summary": (summary, 2)}
    if not argv or argv[0] not in cmds or len(argv) - 1 != cmds[argv[0]][1]:
        print(f"error: usage: {__doc__.strip().splitlines()[2].strip()} ... (see the docstring)", file=sys.stderr)
        return 2
    fn, _ = cmds[argv[0]]
    return fn(*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
