"""Ahead-of-time builds of the CUDA kernels, without a GPU: PTX by numba-cuda, cubin by nvJitLink
or ptxas, and what each kernel costs in registers, spills, local and shared memory and f64 work.

A cubin built for the GPU's own architecture is loaded by the driver as it is: no PTX JIT, so
the compiler need not be older than the driver.  (PTX is JIT-compiled only up to the driver's
PTX ISA: a CUDA 13.0 driver takes ISA 9.0, which NVVM 13.0 emits, but not the 9.5 of NVVM 13.5;
the `cuda13` extra pins the 13.0 compiler wheels so numba's own dispatcher stays safe too.)

Built variants are cached on disk (TINYDAE_CUDA_CACHE, default ~/.cache/tinydae/cuda), keyed by
the kernels' sources, the kernel, its signature, the architecture and numba-cuda's version (not by
this machine's paths or toolchain).  `python cli.py build-cuda --arch sm_90 --out DIR` writes the
same layout plus a manifest.json, every path in it relative to DIR: a portable bundle.  Pointing
TINYDAE_CUDA_CUBINS at DIR (on any machine, with the same sources and numba-cuda) makes the CuPy
launcher load its cubins without NVVM or an assembler there.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
# What the kernels are compiled from (cuda_launch.py is not: the signatures enter the key themselves).
SOURCES = ("cuda.py", "scalar.py", "philox.py", "common.py", "reference.py", "activations.py",
           "noise.py", "bias_act.py", "loss.py", "optim.py", "conv.py")
TOOLCHAIN_PACKAGES = ("numba", "numba-cuda", "nvidia-nvvm", "nvidia-nvjitlink", "cuda-bindings")
# Data movement and selects in f64 are not f64 arithmetic; everything else typed .f64 is.
_F64_NOT_ARITHMETIC = {"ld", "st", "mov", "selp", "cvta", "shfl", "atom", "red"}


class BuildError(RuntimeError):
    """The toolchain is missing or unusable (a setup problem, reported in one line)."""


def parse_arch(arch):
    """'sm_90' | '90' | '9.0' -> (9, 0)"""
    m = re.fullmatch(r"(?:sm_|compute_)?(\d)(\d)|(\d+)\.(\d)", str(arch).strip())
    if not m:
        raise ValueError(f"--arch takes a GPU architecture like sm_90, got {arch!r}")
    major, minor = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    return int(major), int(minor)


def arch_name(cc):
    return f"sm_{cc[0]}{cc[1]}"


def device_arch():
    """The current CuPy device's compute capability -> (major, minor)."""
    import cupy

    cc = cupy.cuda.Device().compute_capability  # e.g. '90'
    return int(cc[:-1]), int(cc[-1])


def source_digest(names=SOURCES):
    """SHA-256 of the kernels' sources (`names` in kernels/; every .py file there for "all")."""
    if names == "all":
        names = sorted(n for n in os.listdir(HERE) if n.endswith(".py"))
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0")
        with open(os.path.join(HERE, name), "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def toolchain():
    """Versions of what compiles the kernels: {package: version or None}, and CUDA_HOME."""
    versions = {}
    for pkg in TOOLCHAIN_PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    versions["CUDA_HOME"] = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    return versions


def cache_dir(path=None):
    if path:
        return path
    env = os.environ.get("TINYDAE_CUDA_CACHE")
    if env:
        return env
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tinydae", "cuda")


# ----------------------------------------------------------------------------------------
# Compile (numba-cuda -> PTX) and assemble (nvJitLink or ptxas -> cubin)
# ----------------------------------------------------------------------------------------


def _numba_cuda():
    """numba-cuda's `cuda` module, ready to compile (numba's own, deprecated CUDA target
    needs a driver even to compile, so it cannot build here)."""
    from . import cuda_launch

    if toolchain()["numba-cuda"] is None:
        raise BuildError("compiling CUDA kernels needs the numba-cuda package (numba's built-in CUDA "
                         "target is deprecated and needs a GPU driver): pip install -e \".[cuda13]\"")
    cuda_launch.numpy_compat()
    try:
        from numba import cuda
    except ImportError as e:
        raise BuildError(f"numba's CUDA target is missing ({e}): pip install -e \".[cuda13]\"") from None
    return cuda


def compile_ptx(k, dtype, cc):
    """Kernel variant -> (PTX text, .entry name).  k: a kernels.cuda_launch.Kernel"""
    cuda = _numba_cuda()
    ptx, _ = cuda.compile(k.pyfunc, k.variants[dtype], device=False, abi="numba", cc=cc, output="ptx")
    return ptx, entry_name(ptx)


def entry_name(ptx):
    m = re.search(r"\.entry\s+([\w$]+)\s*\(", ptx)
    if not m:
        raise BuildError("no .entry in the PTX")
    return m.group(1)


def entry_params(ptx):
    """PTX -> the .entry's parameter types, in order (e.g. ['u64', 'u64', 'f32'])."""
    start = ptx.index("(", re.search(r"\.entry\s", ptx).start())
    body = ptx[start:ptx.index(")", start)]
    return re.findall(r"\.param\s+\.(\w+)", body)


def ptx_header(ptx):
    """-> {'ptx_isa': '9.0', 'nvvm_release': '13.0'} from the PTX text's header."""
    isa = re.search(r"^\s*\.version\s+(\d+\.\d+)", ptx, re.M)
    release = re.search(r"release (\d+\.\d+)", ptx)
    return {"ptx_isa": isa.group(1) if isa else None, "nvvm_release": release.group(1) if release else None}


def f64_ops_by_opcode(ptx):
    """-> {opcode: count} of the f64 arithmetic, comparisons and conversions in the PTX
    (loads, stores, moves and selects of f64 values are not counted)."""
    counts = {}
    for line in ptx.splitlines():
        line = line.strip()
        if not line or line.startswith(("//", ".")):
            continue
        if line.startswith("@"):
            line = line.split(None, 1)[1] if " " in line else ""
        opcode = line.split(None, 1)[0] if line else ""
        parts = opcode.split(".")
        if "f64" in parts[1:] and parts[0] not in _F64_NOT_ARITHMETIC:
            counts[opcode] = counts.get(opcode, 0) + 1
    return counts


def count_f64_ops(ptx):
    return sum(f64_ops_by_opcode(ptx).values())


def find_ptxas():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", "ptxas")):
        return os.path.join(home, "bin", "ptxas")
    return shutil.which("ptxas")


def _nvjitlink():
    try:
        from cuda.bindings import nvjitlink
        nvjitlink.version()  # loads libnvJitLink: fails here when only the bindings are present
        return nvjitlink
    except Exception:
        return None


def assemblers():
    """The cubin assemblers usable here, in order of preference (ptxas, then nvJitLink)."""
    found = []
    if find_ptxas():  # first: its log reports spills, nvJitLink's does not
        found.append("ptxas")
    if _nvjitlink() is not None:
        found.append("nvjitlink")
    return found


def assemble(ptx, cc, assembler="auto"):
    """PTX -> (cubin bytes, the assembler's verbose log, assembler used)."""
    available = assemblers()
    if assembler == "auto":
        if not available:
            raise BuildError("no cubin assembler: install nvJitLink (pip install -e \".[cuda13]\") or set "
                             "CUDA_HOME to a CUDA toolkit with bin/ptxas")
        assembler = available[0]
    elif assembler not in available:
        raise BuildError(f"assembler {assembler!r} is not usable here (usable: {', '.join(available) or 'none'})")
    arch = arch_name(cc)
    if assembler == "nvjitlink":
        nv = _nvjitlink()
        handle = nv.create(2, [f"-arch={arch}", "-verbose"])
        try:
            data = ptx.encode()
            try:
                nv.add_data(handle, nv.InputType.PTX, data, len(data), "tinydae")
                nv.complete(handle)
            except Exception as e:
                raise BuildError(f"nvJitLink failed: {e}: {_nv_log(nv, handle, error=True)}") from None
            cubin = bytearray(nv.get_linked_cubin_size(handle))
            nv.get_linked_cubin(handle, cubin)
            return bytes(cubin), _nv_log(nv, handle), "nvjitlink"
        finally:
            nv.destroy(handle)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([find_ptxas(), f"-arch={arch}", "-v", src, "-o", dst], capture_output=True, text=True)
        if r.returncode:
            raise BuildError(f"ptxas failed: {(r.stderr or r.stdout).strip()}")
        with open(dst, "rb") as f:
            return f.read(), r.stdout + r.stderr, "ptxas"


def _nv_log(nv, handle, error=False):
    size = (nv.get_error_log_size if error else nv.get_info_log_size)(handle)
    buf = bytearray(size)
    if size:
        (nv.get_error_log if error else nv.get_info_log)(handle, buf)
    return buf.decode(errors="replace").rstrip("\x00")


def resources(log):
    """An assembler's verbose log -> registers, spills, local and shared bytes.

    ptxas -v says 'N bytes stack frame, N bytes spill stores, N bytes spill loads' and
    'Used N registers, ..., N bytes smem'; nvJitLink's log says 'used N registers, ..., N stack,
    N bytes smem, ..., N bytes lmem' (its smem counts the 1 KiB the driver reserves per block
    on sm_80+, and it reports no spills: spills are then None, unknown).
    """
    def grab(pattern):
        m = re.search(pattern, log)
        return int(m.group(1)) if m else None

    used = re.search(r"[Uu]sed (\d+) registers", log)
    smem = [int(b) for b in re.findall(r"(\d+) bytes smem", log)]
    stores, loads = grab(r"(\d+) bytes spill stores"), grab(r"(\d+) bytes spill loads")
    local = grab(r"(\d+) bytes stack frame")
    if local is None:
        local = max(grab(r"(\d+) stack\b") or 0, grab(r"(\d+) bytes lmem") or 0)
    return {"registers": int(used.group(1)) if used else None,
            "spills": None if stores is None and loads is None else (stores or 0) + (loads or 0),
            "local_bytes": local,
            "shared_bytes": max(smem, default=0)}


# ----------------------------------------------------------------------------------------
# Variants, the on-disk cache and the whole build
# ----------------------------------------------------------------------------------------


def numba_cuda_version():
    try:
        return metadata.version("numba-cuda")
    except metadata.PackageNotFoundError:
        return None


def variant_key(k, dtype, cc):
    """The key of one built variant: the kernels' sources, the kernel, its signature, the
    architecture and numba-cuda's version (whose kernel ABI the cubin follows).  Nothing of
    this machine (paths, CUDA_HOME, the assembler) enters it, so a bundle built on one machine
    is found on another (kernels/cuda_launch.py checks each entry's parameters on load)."""
    text = json.dumps([source_digest(), k.name, k.variants[dtype], arch_name(cc), numba_cuda_version()])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _stem(k, dtype, cc):
    return f"{k.name}-{dtype or 'any'}-{arch_name(cc)}-{variant_key(k, dtype, cc)}"


def _write_atomic(path, data):
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# Absolute paths are added when a record is read or built, never stored: a bundle is
# self-contained and can be moved or carried to another machine.
_LOCAL = ("cubin_path", "ptx_path", "json_path")


def build_variant(k, dtype, cc, out_dir, assembler="auto", keep_ptx=True):
    """Compile, assemble and describe one kernel variant, writing its files to out_dir.

    -> {'name', 'dtype', 'ok', 'registers', 'spills', 'local_bytes', 'shared_bytes', 'f64_ops',
        'entry', 'ptx_isa', 'nvvm_release', 'assembler', 'ptx_params', 'cubin' (file name, relative
        to out_dir), 'cubin_path', 'json_path' (absolute, not stored) ...}
    """
    if assembler == "auto":
        usable = assemblers()
        assembler = usable[0] if usable else "auto"  # assemble() then says what is missing
    stem = _stem(k, dtype, cc)
    ptx, entry = compile_ptx(k, dtype, cc)
    cubin, log, used = assemble(ptx, cc, assembler)
    info = dict(name=k.name, dtype=dtype, ok=True, **resources(log), f64_ops=count_f64_ops(ptx),
                f64_by_opcode=f64_ops_by_opcode(ptx),
                entry=entry, **ptx_header(ptx), assembler=used, arch=arch_name(cc),
                signature=k.variants[dtype], ptx_params=entry_params(ptx), key=variant_key(k, dtype, cc),
                source_digest=source_digest(), numba_cuda=numba_cuda_version(), cubin=stem + ".cubin")
    os.makedirs(out_dir, exist_ok=True)
    if keep_ptx:
        _write_atomic(os.path.join(out_dir, stem + ".ptx"), ptx.encode())
        info["ptx"] = stem + ".ptx"
    _write_atomic(os.path.join(out_dir, stem + ".cubin"), cubin)
    # the record is written last: it marks the variant complete
    _write_atomic(os.path.join(out_dir, stem + ".json"), json.dumps(info, indent=1).encode())
    return _localize(info, out_dir, stem)


def _localize(info, directory, stem):
    directory = os.path.abspath(directory)
    info = dict(info, cubin_path=os.path.join(directory, info["cubin"]),
                json_path=os.path.join(directory, stem + ".json"))
    if info.get("ptx"):
        info["ptx_path"] = os.path.join(directory, info["ptx"])
    return info


def read_built(directory, k, dtype, cc):
    """The record of a variant built into `directory` (a bundle or the cache), with absolute
    paths added, or None when it is not there (or its cubin is missing)."""
    stem = _stem(k, dtype, cc)
    try:
        with open(os.path.join(directory, stem + ".json")) as f:
            info = json.load(f)
        info = _localize(info, directory, stem)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if os.path.isfile(info["cubin_path"]) else None


def cached_build(k, dtype, cc, directory=None, assembler="auto"):
    """The cached build of a variant (built now if absent) -> build_variant's dict."""
    directory = cache_dir(directory)
    return read_built(directory, k, dtype, cc) or build_variant(k, dtype, cc, directory, assembler, keep_ptx=False)


def find_built(k, dtype, cc, cache=None, bundle=None, assembler="auto"):
    """A variant's cubin for the launcher: from the bundle (`bundle`, else $TINYDAE_CUDA_CUBINS:
    a ``build-cuda --out DIR`` folder, read only, needing neither NVVM nor an assembler), else
    from the launch cache, built there if absent.  BuildError says what was looked for."""
    bundle = bundle if bundle is not None else os.environ.get("TINYDAE_CUDA_CUBINS", "").strip()
    if not bundle:
        return cached_build(k, dtype, cc, cache, assembler)
    info = read_built(bundle, k, dtype, cc)
    if info is not None:
        return info
    if not os.path.isdir(bundle):
        where = f"TINYDAE_CUDA_CUBINS={bundle} is not a folder"
    else:
        where = (f"{k.name} {dtype} for {arch_name(cc)} is not in the bundle {os.path.abspath(bundle)} "
                 f"(looked for {_stem(k, dtype, cc)}.json: built from other kernel sources or another "
                 f"numba-cuda than {numba_cuda_version()}? see its manifest.json)")
    try:
        return cached_build(k, dtype, cc, cache, assembler)
    except Exception as e:
        from .cuda_launch import _first_line

        raise BuildError(f"{where}, and it cannot be built here ({type(e).__name__}: {_first_line(e)})") from None


def write_manifest(out_dir, cc, results):
    """manifest.json of a build: what it was built from and each variant's record, with paths
    relative to out_dir only (the bundle can be moved)."""
    manifest = dict(format=1, arch=arch_name(cc), source_digest=source_digest(),
                    numba_cuda=numba_cuda_version(), toolchain=toolchain(),
                    kernels=[{k: v for k, v in r.items() if k not in _LOCAL} for r in results])
    _write_atomic(os.path.join(out_dir, "manifest.json"), json.dumps(manifest, indent=2).encode())
    return manifest


def build_all(cc, out_dir, assembler="auto", names=None):
    """Every declared variant of every kernel (or of `names`) -> list of build_variant dicts;
    a variant that fails is reported with ok False and its error, the others still built."""
    from . import cuda  # noqa: F401  (declares the kernels)
    from .cuda_launch import KERNELS

    results = []
    for name, k in KERNELS.items():
        if names and name not in names:
            continue
        for dtype in k.variants:
            try:
                results.append(build_variant(k, dtype, cc, out_dir, assembler))
            except BuildError:
                raise  # the toolchain itself is missing: one clear error, not N
            except Exception as e:  # a kernel that does not compile: report it, build the rest
                results.append(dict(name=name, dtype=dtype, ok=False, registers=None, spills=None,
                                    local_bytes=None, shared_bytes=None, f64_ops=None,
                                    error=f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"))
    return results


# ----------------------------------------------------------------------------------------
# What the driver will accept
# ----------------------------------------------------------------------------------------

# Highest PTX ISA each CUDA 12 release's driver JIT-compiles (NVIDIA's PTX ISA release notes);
# from CUDA 13.0 on, release 13.m takes ISA 9.m.
_PTX_ISA_12 = {0: "8.0", 1: "8.1", 2: "8.2", 3: "8.3", 4: "8.4", 5: "8.5", 6: "8.5", 8: "8.7", 9: "8.8"}


def driver_ptx_isa(driver_version):
    """CUDA driver version (e.g. 13000 for 13.0) -> the highest PTX ISA it JIT-compiles, or None."""
    major, minor = driver_version // 1000, (driver_version % 1000) // 10
    if major >= 13:
        return f"{major - 4}.{minor}"
    if major == 12:
        return _PTX_ISA_12.get(minor, "8.8" if minor > 9 else None)
    return None


def isa_tuple(isa):
    return tuple(int(p) for p in isa.split(".")) if isa else None


def compiler_info(cc=(9, 0)):
    """Compile one tiny kernel -> {'ptx_isa', 'nvvm_release', 'assemblers', 'toolchain'}."""
    cuda = _numba_cuda()

    def probe(a):
        a[0] = 1.0

    ptx, _ = cuda.compile(probe, "void(float32[::1])", device=False, abi="numba", cc=cc, output="ptx")
    return dict(ptx_header(ptx), assemblers=assemblers(), toolchain=toolchain())


def driver_version():
    """The CUDA driver's version (e.g. 13000), or None where there is no driver or CuPy."""
    try:
        import cupy

        return int(cupy.cuda.runtime.driverGetVersion())
    except Exception:
        return None


def toolchain_report():
    """What `cli.py info` shows about CUDA compilation: the driver, the compiler, the PTX ISA
    it emits and whether the driver could JIT it, the assemblers and the cubin cache."""
    from .cuda_launch import LAUNCHER_NAMES

    from .cuda_launch import default_launcher

    report = dict(driver_version=driver_version(), launcher=default_launcher(),
                  launchers=list(LAUNCHER_NAMES), cache_dir=cache_dir(), warnings=[])
    dv = report["driver_version"]
    report["driver"] = f"{dv // 1000}.{(dv % 1000) // 10}" if dv else None
    report["driver_ptx_isa"] = driver_ptx_isa(dv) if dv else None
    try:
        report.update(compiler_info())
    except Exception as e:  # BuildError, or a compiler that fails: say why, in one line
        text = str(e).strip().splitlines()
        report.update(ptx_isa=None, nvvm_release=None, assemblers=assemblers(), toolchain=toolchain(),
                      compiler_error=f"{type(e).__name__}: {text[0] if text else ''}")
    try:
        report["cached_cubins"] = sum(1 for n in os.listdir(report["cache_dir"]) if n.endswith(".cubin"))
    except OSError:
        report["cached_cubins"] = 0
    report["bundle"] = os.environ.get("TINYDAE_CUDA_CUBINS") or None
    if report["bundle"]:
        try:
            report["bundle_cubins"] = sum(1 for n in os.listdir(report["bundle"]) if n.endswith(".cubin"))
        except OSError:
            report["bundle_cubins"] = 0
            report["warnings"].append(f"TINYDAE_CUDA_CUBINS={report['bundle']} is not a readable folder")
    isa, dmax = isa_tuple(report.get("ptx_isa")), isa_tuple(report["driver_ptx_isa"])
    if isa and dmax and isa > dmax:
        report["warnings"].append(
            f"NVVM {report['nvvm_release']} emits PTX ISA {report['ptx_isa']}, newer than driver "
            f"{report['driver']} can JIT ({report['driver_ptx_isa']}): the cupy launcher's cubins are "
            f"unaffected, numba's dispatcher may fail; pip install -e \".[cuda13]\" pins the 13.0 compilers")
    if report["launcher"] not in LAUNCHER_NAMES:
        report["warnings"].append(f"TINYDAE_CUDA_LAUNCHER={report['launcher']!r} is not one of "
                                  f"{', '.join(LAUNCHER_NAMES)}: --backend cuda will refuse it")
    if not report["assemblers"] and report.get("nvvm_release"):
        report["warnings"].append("no cubin assembler (nvJitLink or ptxas): kernels launch through numba's "
                                  "dispatcher (slower); pip install -e \".[cuda13]\" brings nvJitLink")
    return report
