"""The CUDA kernels compiled for a real GPU architecture (sm_90), without a GPU.

.ci/run runs this file in a Python 3.12 environment with NumPy >= 2.5 and the `cuda13` extra,
after `python cli.py build-cuda --arch sm_90`: every declared kernel variant must compile to
PTX and a cubin, with no register spills and no local memory, float32 kernels must not do
float64 work beyond their documented float64 accumulations, and the argument flattening of
the CuPy launcher must match every kernel's PTX .entry parameter list.  Where numba-cuda or
an assembler is missing (the plain CPU environment), the build tests skip with the reason;
the signature and ABI-parsing tests run everywhere.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tinydae.kernels import cuda_build, cuda_launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# float32 kernels allowed to do float64 work, and why: only the float64 accumulations the
# README documents.  Accumulating means converting float32 values to float64 and adding (the
# chain's change also subtracts two stored values exactly and takes the absolute value); any
# f64 multiply, divide, fma, max or transcendental would be elementwise math done in float64.
F64_IN_FLOAT32 = {
    "_loss_rows": "float64 sum of the per-element losses (row partials, then rows)",
    "_bias_act_backward": "float64 bias-gradient sums over row chunks",
    "_bias_sigmoid_change": "float64 per-chain sum of |r(x) - x|",
}
ACCUMULATION_OPCODES = {"cvt.f64.f32", "add.f64", "add.rn.f64", "sub.f64", "sub.rn.f64", "abs.f64"}
# ... and a float32 bias gradient rounds its float64 column sum once, to store it in db.
ROUNDING = {"_bias_act_backward": {"cvt.rn.f32.f64"}}


def toolchain_missing():
    if cuda_build.toolchain()["numba-cuda"] is None:
        return "numba-cuda is not installed (the cuda13 extra brings it; .ci/run runs this in such a venv)"
    if not cuda_build.assemblers():
        return "no cubin assembler (ptxas in CUDA_HOME/PATH, or nvJitLink)"
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "the CUDA simulator cannot compile real GPU code"
    return None


needs_toolchain = pytest.mark.skipif(toolchain_missing() is not None, reason=str(toolchain_missing()))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """`python cli.py build-cuda --arch sm_90 --json` in a subprocess -> its report."""
    out = tmp_path_factory.mktemp("sm90")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "build-cuda", "--arch", "sm_90",
                        "--out", str(out), "--json"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return json.loads(r.stdout)


@needs_toolchain
def test_every_declared_variant_compiles_without_spills_or_local_memory(built):
    from tinydae.kernels import cuda  # noqa: F401  (declares the kernels)

    declared = {(name, dt) for name, k in cuda_launch.KERNELS.items() for dt in k.variants}
    assert {(r["name"], r["dtype"]) for r in built["kernels"]} == declared
    assert built["arch"] == "sm_90"
    for r in built["kernels"]:
        where = f"{r['name']} {r['dtype']}"
        assert r["ok"], where
        assert r["spills"] == 0, where  # None would mean the assembler did not say
        assert r["local_bytes"] == 0, where
        assert 0 < r["registers"] <= 128, where  # at most 128: 256-thread blocks keep 2 per SM
        assert os.path.getsize(r["cubin_path"]) > 0


@needs_toolchain
def test_ptx_is_for_the_driver_of_the_gpu_machines(built):
    isas = {r["ptx_isa"] for r in built["kernels"]}
    assert len(isas) == 1
    nvvm = cuda_build.toolchain()["nvidia-nvvm"] or ""
    if not nvvm.startswith("13.0."):
        pytest.skip(f"NVVM {nvvm or 'from CUDA_HOME'} is not the cuda13 extra's pinned 13.0")
    # the cuda13 extra's pin emits what a CUDA 13.0 driver JIT-compiles
    assert isas == {"9.0"} == {cuda_build.driver_ptx_isa(13000)}


@needs_toolchain
def test_float32_kernels_do_float64_work_only_in_documented_accumulations(built):
    for r in built["kernels"]:
        if r["dtype"] not in ("float32", None):
            continue
        ops = set(r["f64_by_opcode"])
        if r["name"] in F64_IN_FLOAT32:
            assert ops <= ACCUMULATION_OPCODES | ROUNDING.get(r["name"], set()), (r["name"], r["f64_by_opcode"])
        else:
            assert not ops, (r["name"], r["f64_by_opcode"])
    # the counter counts: float64 variants of the math-heavy kernels do f64 multiplies and divides
    assert any({"mul.f64", "div.rn.f64"} & set(r["f64_by_opcode"]) for r in built["kernels"]
               if r["dtype"] == "float64")


class FakeDeviceArray:
    """What the launcher reads from a CuPy array, with a made-up device pointer."""

    def __init__(self, dtype, shape):
        self.dtype, self.shape, self.ndim = np.dtype(dtype), shape, len(shape)
        self.itemsize = self.dtype.itemsize
        self.size = int(np.prod(shape))
        self.strides = tuple(int(s) for s in np.empty(shape, dtype).strides)
        self.__cuda_array_interface__ = {"data": (0x7F0000001000, False), "shape": shape,
                                         "typestr": self.dtype.str, "version": 3}
        self.data = self  # CuPy: a.data.ptr
        self.ptr = 0x7F0000001000
        self._c_contiguous = True  # CuPy's C-level flag, which the launcher's memo key reads


def example_args(params):
    """Parsed signature -> arguments of those types (arrays are FakeDeviceArrays)."""
    args = []
    for p in params:
        if p[0] == "array":
            args.append(FakeDeviceArray(p[1], {1: (7,), 2: (3, 5), 4: (2, 3, 5, 2)}[p[2]]))
        else:
            args.append(cuda_launch.SCALARS[p[1]](1))
    return args


def ptx_type(value):
    if isinstance(value, int):
        return "u64"  # CuPy passes a Python int as a 64-bit value
    return {np.dtype("float32"): "f32", np.dtype("float64"): "f64", np.dtype("int32"): "u32",
            np.dtype("uint32"): "u32", np.dtype("int64"): "u64", np.dtype("uint64"): "u64",
            np.dtype("bool"): "u8"}[value.dtype]


@needs_toolchain
def test_launcher_flattening_matches_every_ptx_entry(built):
    from tinydae.kernels import cuda  # noqa: F401  (declares the kernels)

    for r in built["kernels"]:
        k = cuda_launch.KERNELS[r["name"]]
        args = example_args(k.parsed[r["dtype"]])
        assert k.variant(args) == r["dtype"]
        flat = cuda_launch.flatten(args)
        assert [ptx_type(v) for v in flat] == r["ptx_params"], r["name"]
        assert cuda_launch.ptx_param_types(k.parsed[r["dtype"]]) == r["ptx_params"], r["name"]


@needs_toolchain
def test_cached_build_is_reused_and_keyed_by_signature(tmp_path):
    from tinydae.kernels import cuda  # noqa: F401  (declares the kernels)

    k = cuda_launch.KERNELS["_sgd"]
    first = cuda_build.cached_build(k, "float32", (9, 0), str(tmp_path))
    stamp = os.path.getmtime(first["cubin_path"])
    again = cuda_build.cached_build(k, "float32", (9, 0), str(tmp_path))
    assert again["cubin_path"] == first["cubin_path"] and os.path.getmtime(again["cubin_path"]) == stamp
    other = cuda_build.cached_build(k, "float64", (9, 0), str(tmp_path))
    assert other["cubin_path"] != first["cubin_path"]
    os.remove(first["cubin_path"])  # a record without its cubin is rebuilt
    assert os.path.exists(cuda_build.cached_build(k, "float32", (9, 0), str(tmp_path))["cubin_path"])


@needs_toolchain
def test_numpy_stays_untouched_by_the_row_stack_workaround():
    had = hasattr(np, "row_stack")
    cuda_launch.numpy_compat()
    from tinydae.kernels import cuda  # noqa: F401  (declares the kernels)

    assert hasattr(np, "row_stack") == had
    if np.lib.NumpyVersion(np.__version__) >= "2.5.0":
        assert not had  # the case the workaround exists for, on the CI's NumPy


# -- everywhere: the signature language and the launch-time check -------------------------


def test_signatures_parse_to_numbas_kernel_abi():
    params = cuda_launch.parse_signature("void(float32[:, ::1], float64[::1], int32, boolean, float32)")
    assert params == [("array", "float32", 2), ("array", "float64", 1), ("scalar", "int32"),
                      ("scalar", "boolean"), ("scalar", "float32")]
    assert cuda_launch.ptx_param_types(params) == ["u64"] * 9 + ["u64"] * 7 + ["u32", "u8", "f32"]
    for bad in ("int32(float32[::1])", "void(float32[:, :])", "void(float32[::2])", "void(complex64)"):
        with pytest.raises(ValueError):
            cuda_launch.parse_signature(bad)


def test_launch_arguments_must_match_a_declared_variant():
    k = cuda_launch.Kernel(lambda a, s: None, "void(T[::1], T)")
    assert set(k.variants) == {"float32", "float64"}
    a = np.zeros(3, np.float32) + 1
    assert k.variant((a, np.float32(2))) == "float32"
    with pytest.raises(TypeError, match="declared"):
        k.variant((a, np.float64(2)))  # mixed dtypes: no such variant
    with pytest.raises(TypeError, match="NumPy scalars"):
        k.variant((a, 2.0))  # a Python float would be typed differently by each launcher
    with pytest.raises(TypeError, match="declared"):
        k.variant((a.reshape(1, 3), np.float32(2)))


def test_arch_names_and_driver_ptx_isa():
    assert cuda_build.parse_arch("sm_90") == (9, 0) == cuda_build.parse_arch("9.0")
    assert cuda_build.arch_name((12, 0)) == "sm_120"
    for bad in ("sm9", "hopper", ""):
        with pytest.raises(ValueError):
            cuda_build.parse_arch(bad)
    assert cuda_build.driver_ptx_isa(13000) == "9.0"
    assert cuda_build.driver_ptx_isa(13020) == "9.2"
    assert cuda_build.driver_ptx_isa(12080) == "8.7"
    assert cuda_build.driver_ptx_isa(11080) is None


def test_resource_parsing_of_both_assemblers_logs():
    ptxas = ("ptxas info    : Function properties for k\n    8 bytes stack frame, 4 bytes spill stores, "
             "4 bytes spill loads\nptxas info    : Used 40 registers, used 1 barriers, 1028 bytes smem\n")
    assert cuda_build.resources(ptxas) == dict(registers=40, spills=8, local_bytes=8, shared_bytes=1028)
    nvjitlink = "info    : used 13 registers, used 1 barriers, 16 stack, 1536 bytes smem, 668 bytes cmem[0], 0 bytes lmem\n"
    assert cuda_build.resources(nvjitlink) == dict(registers=13, spills=None, local_bytes=16, shared_bytes=1536)
    ptx = "\tadd.f64 \t%fd1, %fd2, %fd3;\n\tld.global.f64 %fd1, [%rd1];\n@%p1 cvt.rn.f32.f64 %f1, %fd1;\n\tadd.f32 %f1, %f2, %f3;"
    assert cuda_build.f64_ops_by_opcode(ptx) == {"add.f64": 1, "cvt.rn.f32.f64": 1}
    assert cuda_build.count_f64_ops(ptx) == 2


def test_build_cuda_refuses_bad_arguments_in_one_line(tmp_path):
    from click.testing import CliRunner

    from tinydae.cli import cli

    r = CliRunner().invoke(cli, ["build-cuda", "--arch", "hopper", "--out", str(tmp_path)])
    assert r.exit_code == 2 and r.output.startswith("error: --arch takes a GPU architecture")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = CliRunner().invoke(cli, ["build-cuda", "--out", str(blocker / "sub")])
    assert r.exit_code == 2 and r.output.startswith("error: --out") and "which is a file" in r.output, r.output
    r = CliRunner().invoke(cli, ["build-cuda", "--out", str(blocker)])
    assert r.exit_code == 2 and r.output.startswith("error: --out") and "is a file" in r.output, r.output


def test_cupy_launcher_loads_each_variant_once_and_passes_the_flat_abi(monkeypatch, tmp_path):
    """The CuPy launcher's plumbing, with a stand-in for CuPy (no GPU here): one cubin load
    per (kernel, argument types, device), the flattened arguments, the grid and block."""
    import types

    from tinydae.kernels import cuda_build as cb

    calls, loads = [], []

    class FakeKernel:
        __slots__ = ("entry",)  # like CuPy's RawKernel (a cdef class): no new attributes

        def __init__(self, entry):
            self.entry = entry

        def __call__(self, grid, block, args):
            calls.append((self.entry, grid, block, args))

    class FakeModule:
        def __init__(self, path):
            loads.append(path)

        def get_function(self, name):
            return FakeKernel(name)

    fake = types.SimpleNamespace(RawModule=FakeModule,
                                 cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: 0)))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(cb, "device_arch", lambda: (9, 0))
    built = []

    def fake_build(k, dtype, cc, directory=None, assembler="auto"):
        built.append((k.name, dtype, cc))
        return {"cubin_path": str(tmp_path / f"{k.name}-{dtype}.cubin"), "entry": f"entry_{k.name}_{dtype}",
                "ptx_params": cuda_launch.ptx_param_types(k.parsed[dtype])}

    monkeypatch.setattr(cb, "cached_build", fake_build)
    k = cuda_launch.Kernel(lambda out, x, s: None, "void(T[::1], T[:, ::1], T)")
    launcher = cuda_launch.CupyLauncher()
    a32, b32 = FakeDeviceArray("float32", (7,)), FakeDeviceArray("float32", (3, 5))
    for _ in range(3):
        launcher.launch(k, 4, 256, (a32, b32, np.float32(0.5)))
    launcher.launch(k, 1, 32, (FakeDeviceArray("float64", (7,)), FakeDeviceArray("float64", (3, 5)), np.float64(2)))
    assert built == [(k.name, "float32", (9, 0)), (k.name, "float64", (9, 0))] and len(loads) == 2
    entry, grid, block, args = calls[0]
    assert entry == f"entry_{k.name}_float32" and grid == (4,) and block == (256,)
    ptr = 0x7F0000001000
    assert list(args[:7]) == [0, 0, 7, 4, ptr, 7, 4]  # meminfo, parent, nitems, itemsize, data, shape, strides
    assert list(args[7:16]) == [0, 0, 15, 4, ptr, 3, 5, 20, 4]
    assert args[16] == np.float32(0.5) and args[16].dtype == np.float32 and len(args) == 17
    assert len(calls) == 4 and calls[3][2] == (32,)
    with pytest.raises(TypeError, match="declared"):
        launcher.launch(k, 1, 32, (a32, b32, np.float64(0.5)))


def test_default_launcher_is_cupy_only_where_cubins_can_be_built(monkeypatch):
    from tinydae.kernels import cuda_build as cb

    monkeypatch.delenv("TINYDAE_CUDA_LAUNCHER", raising=False)
    monkeypatch.setattr(cuda_launch, "SIMULATOR", False)
    monkeypatch.setattr(cb, "assemblers", lambda: ["nvjitlink"])
    assert cuda_launch.default_launcher() == "cupy"
    assert isinstance(cuda_launch.make_launcher(), cuda_launch.CupyLauncher)
    monkeypatch.setattr(cb, "assemblers", lambda: [])
    assert cuda_launch.default_launcher() == "numba"  # no ptxas, no nvJitLink: numba's dispatcher
    monkeypatch.setenv("TINYDAE_CUDA_LAUNCHER", "cupy")
    assert cuda_launch.default_launcher() == "cupy"  # asked for: kept (and its failure is loud)
    monkeypatch.setattr(cuda_launch, "SIMULATOR", True)
    with pytest.raises(ValueError, match="NUMBA_ENABLE_CUDASIM=1"):
        cuda_launch.make_launcher()
    with pytest.raises(ValueError, match="must be one of"):
        cuda_launch.make_launcher("numbaa")


def test_a_misspelt_launcher_is_one_clear_error(monkeypatch):
    from click.testing import CliRunner

    from tinydae.cli import cli

    monkeypatch.setenv("TINYDAE_CUDA_LAUNCHER", "cuppy")
    r = CliRunner().invoke(cli, ["train", "--backend", "cuda", "--epochs", "1", "--limit", "100"])
    assert r.exit_code == 2 and r.output.strip() == "error: TINYDAE_CUDA_LAUNCHER must be cupy or numba, got 'cuppy'", r.output


# -- portable bundles: build-cuda --out DIR, loaded elsewhere through TINYDAE_CUDA_CUBINS ---------


@needs_toolchain
def test_a_bundle_loads_after_it_moved_from_another_directory_without_a_compiler(built, tmp_path, monkeypatch):
    """build-cuda's folder is self-contained: its manifest holds no absolute path, and copied
    elsewhere (as carried to a GPU machine) every variant is found through a relative
    TINYDAE_CUDA_CUBINS from another working directory, with no compiler or assembler at hand,
    its .entry parameters checked against the declared signature."""
    import shutil

    from tinydae.kernels import cuda  # noqa: F401  (declares the kernels)

    manifest = json.loads(open(os.path.join(built["out"], "manifest.json")).read())
    assert manifest["format"] == 1 and manifest["arch"] == "sm_90"
    assert manifest["source_digest"] == cuda_build.source_digest()
    for r in manifest["kernels"]:
        assert r["cubin"] == os.path.basename(r["cubin"]) and not set(r) & {"cubin_path", "ptx_path", "json_path"}
    carried = tmp_path / "carried" / "bundle"
    shutil.copytree(built["out"], carried)
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("TINYDAE_CUDA_CUBINS", os.path.join("..", "carried", "bundle"))
    monkeypatch.setattr(cuda_build, "compile_ptx", lambda *a: pytest.fail("compiled instead of loading"))
    monkeypatch.setattr(cuda_build, "assemblers", lambda: [])
    n = 0
    for k in cuda_launch.KERNELS.values():
        for dtype in k.variants:
            info = cuda_build.find_built(k, dtype, (9, 0), cache=str(tmp_path / "cache"))
            assert info["cubin_path"] == str(carried / info["cubin"]) and os.path.getsize(info["cubin_path"]) > 0
            cuda_launch.check_entry(k, dtype, info)
            n += 1
    assert n == len(manifest["kernels"]) and not (tmp_path / "cache").exists()


def test_a_variant_missing_from_the_bundle_is_one_clear_error(tmp_path, monkeypatch):
    """A bundle without the variant (built from other sources, another numba-cuda, another arch)
    falls back to compiling; where that is impossible the error names both."""
    k = cuda_launch.Kernel(lambda out, s: None, "void(T[::1], T)")
    monkeypatch.setattr(cuda_build, "cached_build", lambda *a, **kw: (_ for _ in ()).throw(
        cuda_build.BuildError("no cubin assembler")))
    (tmp_path / "bundle").mkdir()
    with pytest.raises(cuda_build.BuildError) as info:
        cuda_build.find_built(k, "float32", (9, 0), bundle=str(tmp_path / "bundle"))
    text = str(info.value)
    assert text.startswith(f"{k.name} float32 for sm_90 is not in the bundle {tmp_path / 'bundle'} (looked for ")
    assert text.endswith("and it cannot be built here (BuildError: no cubin assembler)")
    with pytest.raises(cuda_build.BuildError, match="TINYDAE_CUDA_CUBINS=.*nowhere is not a folder"):
        cuda_build.find_built(k, "float32", (9, 0), bundle=str(tmp_path / "nowhere"))


def test_a_bundle_entry_with_other_parameters_is_refused_on_load():
    k = cuda_launch.Kernel(lambda out, s: None, "void(T[::1], T)")
    good = {"ptx_params": ["u64"] * 7 + ["f32"]}
    cuda_launch.check_entry(k, "float32", good)
    for bad in ({"ptx_params": ["u64"] * 7 + ["f64"]}, {"ptx_params": ["u64"] * 7}, {}):
        with pytest.raises(cuda_launch.LaunchError, match="rebuild it"):
            cuda_launch.check_entry(k, "float32", bad)


def test_the_launch_memo_checks_once_per_argument_kind():
    """Kernel.checked_variant: the full check on a new kind of arguments (dtype, ndim, contiguity,
    scalar types), a lookup after; a non-contiguous array or a Python float is refused every time."""
    k = cuda_launch.Kernel(lambda out, x, s: None, "void(T[::1], T[:, ::1], T)")
    a, b = np.ones(6, np.float32), np.ones((2, 3), np.float32)
    assert k.checked_variant((a, b, np.float32(1))) == "float32"
    assert len(k._checked) == 1
    k.checked_variant((a + 1, b * 2, np.float32(3)))
    assert len(k._checked) == 1  # same kinds: no new check
    assert k.checked_variant((a.astype(np.float64), b.astype(np.float64), np.float64(1))) == "float64"
    with pytest.raises(TypeError, match="argument 1 is not C-contiguous"):
        k.checked_variant((a, np.ones((3, 2), np.float32).T, np.float32(1)))
    with pytest.raises(TypeError, match="NumPy scalars"):
        k.checked_variant((a, b, 1.0))
    with pytest.raises(TypeError, match="declared"):
        k.checked_variant((a, b, np.float64(1)))
    assert len(k._checked) == 2
    key, flat = cuda_launch.key_and_flatten((FakeDeviceArray("float32", (7,)), True, np.float32(2)))
    assert key == ((np.dtype(np.float32).num, 1, True), bool, np.float32)
    assert flat[:7] == [0, 0, 7, 4, 0x7F0000001000, 7, 4] and flat[7] is np.True_ and flat[8].dtype == np.float32
    with pytest.raises(TypeError, match="NumPy scalars"):
        cuda_launch.key_and_flatten((FakeDeviceArray("float32", (7,)), 2.0))
