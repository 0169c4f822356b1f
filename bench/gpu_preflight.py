"""GPU preflight: versions, the device, every kernel built for it, a few kernels through each launcher.

The first thing to run on a GPU machine (``bash bench/run_on_gpu.sh preflight`` runs it):

1. prints the versions of Python, NumPy, numba, numba-cuda, CuPy and the other packages the
   tests and benchmarks import, the CUDA driver and runtime, the device's name and compute
   capability;
2. runs ``python3 cli.py build-cuda --arch sm_XY --out DIR`` for the device's own architecture
   (DIR: --build-out, default $TINYDAE_CUDA_CUBINS, else OUT/cuda-build; --no-build loads a
   bundle already there, e.g. one built without a GPU and carried) and points the CuPy launcher
   at DIR (TINYDAE_CUDA_CUBINS), so that its launches below load those cubins (checked: every
   case ran and no variant was compiled again);
3. launches a few kernels through each launcher, ``cupy`` (the cubins, through cupy.RawModule)
   and ``numba`` (numba-cuda's dispatcher), on CuPy arrays, and compares each result with the
   CPU twin's (kernels.cpu).  The kernels cover every kind of kernel parameter: 1-D and 2-D
   arrays, uint32, int32, int64, float32, float64 and boolean scalars.

One PASS or FAIL line per check, and OUT/preflight-<device>.json with everything printed.
Exit status: 0 when every check passed, 1 when one failed, 2 when there is no usable GPU.

    python3 bench/gpu_preflight.py [--out DIR] [--build-out DIR] [--no-build]
    python3 bench/gpu_preflight.py --device-slug   # the device's name as a file-name part, or no-gpu
    python3 bench/gpu_preflight.py --require-gpu   # exit 2 with one error: line when there is no GPU
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

PACKAGES = ("numpy", "numba", "numba-cuda", "cupy-cuda13x", "cupy-cuda12x", "cuda-bindings", "nvidia-nvvm",
            "nvidia-nvjitlink", "click", "h5py", "pytest", "hypothesis", "torch")
LAUNCHERS = ("cupy", "numba")


# ----------------------------------------------------------------------------------------
# Comparison and the kernel cases: plain NumPy, testable without a GPU
# ----------------------------------------------------------------------------------------


def compare(got, want, exact=False, rtol=0.0, atol=0.0):
    """-> (ok, max |got - want|, detail).  exact: bit for bit (NaN equal to NaN); else
    |got - want| <= atol + rtol |want| elementwise.  Shapes and dtypes must match."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return False, float("inf"), f"shape {got.shape}, expected {want.shape}"
    if got.dtype != want.dtype:
        return False, float("inf"), f"dtype {got.dtype}, expected {want.dtype}"
    if got.size == 0:
        return True, 0.0, "empty"
    wide = np.float64 if got.dtype.kind == "f" else np.int64
    g, w = got.astype(wide), want.astype(wide)
    both = np.isfinite(g) & np.isfinite(w) if got.dtype.kind == "f" else np.ones(g.shape, bool)
    diff = float(np.max(np.abs(g - w)[both])) if both.any() else 0.0
    if exact:
        bad = ~((g == w) | (np.isnan(g) & np.isnan(w))) if got.dtype.kind == "f" else g != w
    else:
        bad = ~np.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True)
    if not bad.any():
        if exact or diff == 0:
            return True, diff, "bit-identical"
        return True, diff, f"max |diff| {diff:.3g} (rtol {rtol:g}, atol {atol:g})"
    first = np.unravel_index(int(np.argmax(bad)), bad.shape)
    return False, diff, (f"{int(bad.sum())} of {bad.size} elements differ (max |diff| {diff:.3g}); first at "
                         f"{tuple(int(i) for i in first)}: {got[first]!r}, expected {want[first]!r}")


class Case:
    """One kernel call: make(rng) -> {name: host array}, call(K, arrays) -> None or a number;
    every array and the returned number are compared with the CPU twin's."""

    def __init__(self, name, make, call, exact=False, rtol=0.0, atol=0.0, returned_rtol=0.0):
        self.name, self.make, self.call = name, make, call
        self.exact, self.rtol, self.atol, self.returned_rtol = exact, rtol, atol, returned_rtol


CASES = (
    Case("philox_uint32 (uint32 array, uint32 and int64 scalars)",
         lambda rng: {"out": np.zeros(1001, np.uint32)},
         lambda K, a: K.philox_uint32(a["out"], 123, 7, 1, 5), exact=True),
    Case("corrupt masking float32 (int32 and float32 scalars)",
         lambda rng: {"out": np.zeros((7, 45), np.float32), "x": rng.uniform(0.1, 0.9, (7, 45)).astype(np.float32)},
         lambda K, a: K.corrupt(a["out"], a["x"], 2, 0.25, 9, 3, 0, 6), exact=True),
    Case("sgd_update float32 nesterov (boolean scalar)",
         lambda rng: {"p": rng.normal(size=1000).astype(np.float32), "g": rng.normal(size=1000).astype(np.float32),
                      "vel": rng.normal(size=1000).astype(np.float32)},
         lambda K, a: K.sgd_update(a["p"], a["g"], a["vel"], 0.05, 0.9, True, 0.01),
         rtol=2e-6, atol=1e-6),  # a GPU compiler may fuse a*b+c: a few float32 ulp
    Case("sigmoid_bce_forward_backward float64 (2-D arrays, float64 scalar, block sums)",
         lambda rng: {"d": np.zeros((5, 130)), "z": rng.normal(0, 3, (5, 130)), "t": rng.uniform(0, 1, (5, 130))},
         lambda K, a: K.sigmoid_bce_forward_backward(a["d"], a["z"], a["t"], 0.5),
         rtol=1e-12, atol=1e-14, returned_rtol=1e-10),  # the sum's order differs from the CPU's
)


def cupy_to_dev(a):
    """Host array -> a C-contiguous CuPy array.  Not cupy.ascontiguousarray: in CuPy 14 it is
    ``cpdef ascontiguousarray(_ndarray_base a, ...)`` and raises TypeError for a NumPy array."""
    import cupy

    return cupy.asarray(np.ascontiguousarray(a))


def run_case(case, K, to_dev, to_host, seed=0):
    """The case on kernels module K -> {name: host array after the call, "returned": value}."""
    host = case.make(np.random.default_rng(seed))
    dev = {name: to_dev(a) for name, a in host.items()}
    value = case.call(K, dev)
    out = {name: np.asarray(to_host(a)) for name, a in dev.items()}
    if value is not None:
        out["returned"] = np.float64(value)
    return out


def check_case(case, K, to_dev, to_host, cpu=None):
    """The case on K against the CPU twin (kernels.cpu, or `cpu`) -> (ok, detail)."""
    if cpu is None:
        import tinydae.kernels.cpu as cpu
    want = run_case(case, cpu, np.ascontiguousarray, np.asarray)
    got = run_case(case, K, to_dev, to_host)
    if set(got) != set(want):
        return False, f"returned {sorted(got)}, expected {sorted(want)}"
    worst, failures = 0.0, []
    for name in want:
        rtol = case.returned_rtol if name == "returned" else case.rtol
        ok, diff, detail = compare(got[name], want[name], case.exact, rtol, case.atol)
        worst = max(worst, diff)
        if not ok:
            failures.append(f"{name}: {detail}")
    if failures:
        return False, "; ".join(failures)
    return True, "bit-identical to kernels.cpu" if case.exact else f"matches kernels.cpu (max |diff| {worst:.3g})"


# ----------------------------------------------------------------------------------------
# Versions and the device
# ----------------------------------------------------------------------------------------


def versions():
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def gpu_unavailable_reason():
    """None when CuPy sees a CUDA device, else why not (one line)."""
    try:
        import cupy
    except ImportError:
        return "CuPy is not installed"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # no driver, a driver too old for this CuPy
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no detail'}"
    return None if count > 0 else "no CUDA device present"


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cuda_version(v):
    """13000 -> '13.0' (CUDA's encoding of driver and runtime versions)."""
    return f"{v // 1000}.{(v % 1000) // 10}" if v else "none"


def device_info():
    """The current CuPy device: name, compute capability, arch, memory, driver and runtime."""
    import cupy

    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    cc = dev.compute_capability  # e.g. '90'
    driver, runtime = cupy.cuda.runtime.driverGetVersion(), cupy.cuda.runtime.runtimeGetVersion()
    return dict(name=name, id=dev.id, compute_capability=f"{cc[:-1]}.{cc[-1]}", arch=f"sm_{cc}",
                memory_gib=round(props["totalGlobalMem"] / 2**30, 1), driver=cuda_version(driver),
                driver_version=driver, runtime=cuda_version(runtime), runtime_version=runtime,
                cupy=cupy.__version__)


def device_slug():
    """The device's name as a file-name part (e.g. nvidia-h100-80gb-hbm3), or 'no-gpu'."""
    if gpu_unavailable_reason():
        return "no-gpu"
    try:
        return slug(device_info()["name"]) or "unnamed-gpu"
    except Exception:
        return "no-gpu"


# ----------------------------------------------------------------------------------------
# The checks that need the GPU
# ----------------------------------------------------------------------------------------


class Report:
    def __init__(self):
        self.checks = []

    def add(self, name, ok, detail):
        self.checks.append(dict(check=name, ok=bool(ok), detail=detail))
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)

    @property
    def failed(self):
        return [c for c in self.checks if not c["ok"]]


def _one_line(e):
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[-1][:300] if text else ''}"


def build(arch, out_dir):
    """python3 cli.py build-cuda --arch ARCH --out DIR, its output shown -> (ok, detail)."""
    cmd = [sys.executable, os.path.join(ROOT, "cli.py"), "build-cuda", "--arch", arch, "--out", out_dir]
    print("$", " ".join(cmd), flush=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    sys.stdout.write(r.stdout)
    sys.stdout.write(r.stderr)
    sys.stdout.flush()
    last = next((line for line in reversed((r.stdout + r.stderr).splitlines()) if line.strip()), "no output")
    return r.returncode == 0, f"exit {r.returncode}: {last.strip()}"


def compiler_note(driver_version):
    """One line on the PTX the numba launcher hands the driver (which JITs it)."""
    from tinydae.kernels import cuda_build

    try:
        info = cuda_build.compiler_info()
    except Exception as e:
        return f"numba-cuda could not compile a probe kernel ({_one_line(e)})"
    accepts = cuda_build.driver_ptx_isa(driver_version)
    if not accepts or not info["ptx_isa"]:
        verdict = "unknown for this driver"
    elif cuda_build.isa_tuple(info["ptx_isa"]) <= cuda_build.isa_tuple(accepts):
        verdict = "ok"
    else:
        verdict = "NEWER than the driver takes: numba's dispatcher may fail to load it (cubins are unaffected)"
    return (f"numba-cuda emits PTX ISA {info['ptx_isa']} (NVVM {info['nvvm_release']}); the driver JITs up to "
            f"{accepts}: {verdict}; cubin assemblers here: {', '.join(info['assemblers']) or 'none'}")


def bundle_reuse(launcher, build_dir, launched):
    """-> (ok, detail): every case ran on the cupy launcher and every variant it loaded came from
    the bundle (none compiled again: a different key, or a bundle that was not found)."""
    loaded = getattr(launcher, "loaded", {})
    if launched < len(CASES) or not loaded:  # nothing launched proves nothing was reused
        return False, (f"only {launched} of {len(CASES)} cases ran to the end on the cupy launcher ({len(loaded)} variants "
                       f"loaded): the reuse of build-cuda's cubins is unproven")
    root = os.path.join(os.path.abspath(build_dir), "")
    elsewhere = sorted(f"{n} {d}" for (n, d, _), path in loaded.items() if not os.path.abspath(path).startswith(root))
    if elsewhere:
        return False, (f"{len(elsewhere)} of {len(loaded)} variants were not found in {build_dir} and were compiled "
                       f"again (the bundle's keys differ from this machine's): {', '.join(elsewhere)[:300]}")
    return True, f"{len(loaded)} variants loaded from {build_dir}, none compiled again"


def launcher_checks(report, build_dir, built):
    """Every case through each launcher on CuPy arrays, against kernels.cpu."""
    import cupy

    import tinydae.kernels.cuda as kc

    saved = kc.LAUNCHER
    try:
        for name in LAUNCHERS:
            kc.set_launcher(name)
            launched = 0
            for case in CASES:
                try:
                    ok, detail = check_case(case, kc, cupy_to_dev, cupy.asnumpy)
                    launched += 1  # it ran (its result may still be wrong)
                except Exception as e:
                    ok, detail = False, _one_line(e)
                report.add(f"{name} launcher, {case.name}", ok, detail)
            if name == "cupy":
                report.add("cupy launcher loaded build-cuda's cubins", *bundle_reuse(kc.LAUNCHER, build_dir, launched))
    finally:
        kc.LAUNCHER = saved


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or "/tmp/tinydae-gpu",
                    help="where preflight-<device>.json goes [$OUT or /tmp/tinydae-gpu]")
    ap.add_argument("--build-out", default=None,
                    help="build-cuda's output, the bundle the cupy launcher loads [$TINYDAE_CUDA_CUBINS or OUT/cuda-build]")
    ap.add_argument("--no-build", action="store_true",
                    help="skip build-cuda: load the bundle already in --build-out (e.g. one carried from CI)")
    ap.add_argument("--device-slug", action="store_true", help="print the device's name for file names; exit")
    ap.add_argument("--require-gpu", action="store_true", help="exit 2 with one error line if there is no GPU")
    args = ap.parse_args(argv)

    if args.device_slug:
        print(device_slug())
        return 0
    reason = gpu_unavailable_reason()
    if args.require_gpu:
        if reason:
            print(f"error: no usable CUDA GPU here ({reason}); this step needs one", file=sys.stderr)
            return 2
        return 0

    summary = dict(versions=versions())
    for pkg, v in summary["versions"].items():
        print(f"{pkg:16s} {v or 'not installed'}")
    if reason:
        print(f"FAIL  gpu: no usable CUDA GPU ({reason}); nothing else can be checked", flush=True)
        return 2
    report = Report()
    info = summary["device"] = device_info()
    print(f"device           {info['name']} (CUDA device {info['id']}), compute capability "
          f"{info['compute_capability']} ({info['arch']}), {info['memory_gib']} GiB")
    print(f"CUDA driver      {info['driver']} ({info['driver_version']}), runtime {info['runtime']} "
          f"({info['runtime_version']})")
    try:
        from numba import cuda

        numba_sees = cuda.is_available()
    except Exception as e:
        numba_sees = False
        print(f"numba.cuda       {_one_line(e)}")
    report.add("numba-cuda sees the GPU", numba_sees, "cuda.is_available() is " + str(numba_sees))
    print("note: " + compiler_note(info["driver_version"]), flush=True)

    build_dir = os.path.abspath(args.build_out or os.environ.get("TINYDAE_CUDA_CUBINS")
                                or os.path.join(args.out, "cuda-build"))
    os.environ["TINYDAE_CUDA_CUBINS"] = build_dir  # the CuPy launcher loads what build-cuda wrote
    built = False
    if not args.no_build:
        built, detail = build(info["arch"], build_dir)
        report.add(f"build-cuda --arch {info['arch']} --out {build_dir}", built, detail)
    launcher_checks(report, build_dir, built)

    summary.update(checks=report.checks, build_dir=build_dir)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"preflight-{slug(info['name'])}.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    failed = report.failed
    print(f"{len(report.checks) - len(failed)}/{len(report.checks)} checks passed on {info['name']}"
          + (f"; FAILED: {', '.join(c['check'] for c in failed)}" if failed else "") + f"  ({path})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
