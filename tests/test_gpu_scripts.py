"""The GPU session's tools, tested as far as a machine without a GPU allows.

bench/run_on_gpu.sh (its steps, its refusals, its logs), bench/gpu_preflight.py (the
comparison, the kernel cases on the CPU twins, and main() end to end under Numba's CUDA
simulator with the device and CuPy stood in for) and bench/bench_launch.py (its timing loop,
its contenders' arguments and math, run() end to end in the simulator, the report); then
what needs a GPU (marked gpu): the launch benchmark and the preflight's launches, briefly.
"""
import json
import os
import re
import statistics
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from click.testing import CliRunner

from bench import bench_launch, gpu_preflight, report
from conftest import gpu_unavailable_reason

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "run_on_gpu.sh")
STEPS = ["smoke", "preflight", "tests", "tests-numba", "bench-kernels", "bench-launch", "bench-train", "bench-chain"]
ALL_STEPS = STEPS[1:]  # `all` runs every step but smoke
no_gpu_here = pytest.mark.skipif(gpu_unavailable_reason() is None,
                                 reason="checks the behaviour without a GPU, and this machine has one")


def run_script(*args, out=None, timeout=120):
    """bash bench/run_on_gpu.sh ARGS with this interpreter first on PATH as python3."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("TINYDAE_CUDA_CACHE", None)
    if out is not None:
        env["OUT"] = str(out)
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=timeout)


def run_python(*args, env=None, timeout=300):
    """sys.executable ARGS in the repository root; env: variables to set, or to unset (None)."""
    full = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={k: v for k, v in full.items() if v is not None})


# -- bench/run_on_gpu.sh -------------------------------------------------------------------


def test_run_on_gpu_sh_is_valid_bash_with_a_function_for_every_step():
    assert subprocess.run(["bash", "-n", SCRIPT], capture_output=True).returncode == 0
    text = open(SCRIPT).read()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert re.search(r'^STEPS="([^"]*)"', text, re.M).group(1).split() == STEPS
    functions = set(re.findall(r"^(step_\w+)\(\)", text, re.M))
    assert functions == {"step_" + s.replace("-", "_") for s in STEPS}
    assert not re.search(r"(^|[\s;(|&])python\s", text, re.M), "the GPU machine promises python3 only"
    installs = re.findall(r"pip install[^\n]*", text)  # no network there: carried wheels only
    assert installs and all("--no-index" in line or line.startswith("pip install --no-index") for line in installs)


def test_run_on_gpu_sh_refuses_unknown_steps_in_one_line():
    r = run_script("bogus")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == f"error: unknown step 'bogus'; choose one of: {' '.join(STEPS)} all"
    r = run_script()
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: name a step")
    r = run_script("all", "--repeats", "3")
    assert r.returncode == 2 and "error: 'all' takes no arguments" in r.stderr
    r = run_script("--help")
    assert r.returncode == 0
    for step in STEPS + ["all"]:
        assert re.search(rf"^  {step}\s", r.stdout, re.M), step


@no_gpu_here
def test_a_gpu_step_without_a_gpu_fails_clearly_and_keeps_its_log(tmp_path):
    r = run_script("bench-launch", out=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    log = (tmp_path / "bench-launch-no-gpu.log").read_text()
    assert log.startswith("error: no usable CUDA GPU here")
    assert "== step bench-launch: exit 2" in r.stdout


@no_gpu_here
def test_all_runs_every_step_and_names_the_failed_ones(tmp_path):
    r = run_script("all", out=tmp_path, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"failed steps: {' '.join(ALL_STEPS)}" in r.stderr
    assert sorted(p.name for p in tmp_path.glob("*.log")) == sorted(f"{s}-no-gpu.log" for s in ALL_STEPS)
    preflight = (tmp_path / "preflight-no-gpu.log").read_text()
    assert "numpy" in preflight and "FAIL  gpu: no usable CUDA GPU" in preflight


# -- bench launch and the preflight without a GPU --------------------------------------------


@no_gpu_here
def test_bench_launch_without_a_gpu_is_one_error_line_and_exit_2():
    for cmd in (["cli.py", "bench", "launch"], ["bench/bench_launch.py"]):
        r = run_python(*cmd)
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        assert r.stdout == "", cmd
        lines = [line for line in r.stderr.splitlines() if "DeprecationWarning" not in line]
        assert len(lines) == 1 and lines[0].startswith("error: --backend cuda"), (cmd, r.stderr)


def test_bench_launch_refuses_bad_counts():
    from tinydae.cli import cli

    for opt in ("--repeats", "--launches"):
        r = CliRunner().invoke(cli, ["bench", "launch", opt, "0"])
        assert r.exit_code == 2 and "error: --repeats and --launches must be positive" in r.output
    r = CliRunner().invoke(cli, ["bench", "launch", "--backend", "cpu"])
    assert r.exit_code == 2  # click: cuda is the only choice


@no_gpu_here
def test_preflight_without_a_gpu(tmp_path):
    r = run_python("bench/gpu_preflight.py", "--no-build", "--out", str(tmp_path))
    assert r.returncode == 2
    assert re.search(r"^numpy\s+\d", r.stdout, re.M) and re.search(r"^python\s+3\.", r.stdout, re.M)
    assert r.stdout.strip().splitlines()[-1].startswith("FAIL  gpu: no usable CUDA GPU (")
    r = run_python("bench/gpu_preflight.py", "--device-slug")
    assert r.returncode == 0 and r.stdout == "no-gpu\n"
    r = run_python("bench/gpu_preflight.py", "--require-gpu")
    assert r.returncode == 2 and r.stdout == "" and r.stderr.startswith("error: no usable CUDA GPU here")


def test_bench_all_adds_the_launch_benchmark_on_cuda_only(monkeypatch):
    import tinydae
    from tinydae import cli as cli_module

    called = []
    for name in ("bench_kernels", "bench_launch", "bench_train", "bench_chain"):
        monkeypatch.setattr(getattr(cli_module, name), "callback",
                            lambda name=name, **kw: called.append((name, kw["backend"])))

    class Fake:
        def __init__(self, name):
            self.name = name
    monkeypatch.setattr(tinydae, "get_backend", lambda b: Fake("cuda" if b in ("cuda", "auto") else "cpu"))
    for backend, launch in (("cpu", False), ("cuda", True), ("auto", True)):
        called.clear()
        r = CliRunner().invoke(cli_module.cli, ["bench", "all", "--backend", backend])
        assert r.exit_code == 0, r.output
        names = [c[0] for c in called]
        assert names == ["bench_kernels"] + (["bench_launch"] if launch else []) + ["bench_train", "bench_chain"]
        assert ("bench_launch", "cuda") in called or not launch


# -- the preflight's comparison and cases ------------------------------------------------------


def test_compare():
    f32 = np.float32
    assert gpu_preflight.compare(f32([1, np.nan]), f32([1, np.nan]), exact=True)[0]
    ok, diff, detail = gpu_preflight.compare(f32([1, 2, 3]), f32([1, 2.5, 3]), rtol=1e-6)
    assert not ok and diff == 0.5 and detail.startswith("1 of 3 elements differ") and "(1,)" in detail
    assert gpu_preflight.compare(f32([1, 2]), f32([1, 2 + 1e-6]), rtol=2e-6, atol=0)[0]
    assert not gpu_preflight.compare(f32([1, 2]), f32([1, 2 + 1e-6]), exact=True)[0]
    assert not gpu_preflight.compare(f32([1, np.nan]), f32([1, 1]), rtol=1, atol=1)[0]  # NaN is never close
    assert not gpu_preflight.compare(np.uint32([7]), np.uint32([8]), exact=True)[0]
    assert gpu_preflight.compare(np.zeros((2, 3)), np.zeros(6))[2].startswith("shape (2, 3)")
    assert gpu_preflight.compare(np.zeros(3, np.float32), np.zeros(3))[2].startswith("dtype float32")


class Perturbed:
    """A kernels module whose twins write one wrong element into their first array."""

    def __init__(self, module):
        self.module = module

    def __getattr__(self, name):
        fn = getattr(self.module, name)

        def wrapped(first, *args, **kw):
            value = fn(first, *args, **kw)
            first.reshape(-1)[3] += 1
            return value
        return wrapped


def test_preflight_cases_pass_on_a_correct_twin_and_fail_on_a_wrong_one():
    import tinydae.kernels.reference as ref

    for case in gpu_preflight.CASES:
        ok, detail = gpu_preflight.check_case(case, ref, np.ascontiguousarray, np.asarray)
        assert ok, (case.name, detail)
        ok, detail = gpu_preflight.check_case(case, Perturbed(ref), np.ascontiguousarray, np.asarray)
        assert not ok and "1 of" in detail and "elements differ" in detail, (case.name, detail)
    # the cases cover every kind of kernel parameter the launchers flatten
    names = " ".join(c.name for c in gpu_preflight.CASES)
    for kind in ("uint32", "int32", "int64", "float32", "float64", "boolean", "2-D"):
        assert kind in names


def test_preflight_cases_and_launch_contenders_on_the_cuda_kernels_in_the_simulator():
    """Under NUMBA_ENABLE_CUDASIM=1 (NumPy arrays as device arrays, numba launcher): every
    preflight case runs on kernels/cuda.py and matches the CPU twin, and the launch the
    benchmark records from each twin is a declared variant that, launched directly through
    numba's dispatcher as the benchmark's contenders do, does the twin's work."""
    code = textwrap.dedent("""
        import numpy as np
        import tinydae.kernels.cuda as kc
        from bench import bench_launch as bl, gpu_preflight as gp

        for case in gp.CASES:
            ok, detail = gp.check_case(case, kc, np.ascontiguousarray, np.asarray)
            assert ok, (case.name, detail)
        for op in bl.OPS:
            host = bl.host_arrays(op, n=70)
            launcher = kc.LAUNCHER
            k, blocks, threads, args = bl.recorded_launch(kc, op, [a.copy() for a in host])
            assert kc.LAUNCHER is launcher  # recording leaves the launcher as it was
            k.variant(args)  # a declared signature, or TypeError
            def direct(arrays):
                k, blocks, threads, args = bl.recorded_launch(kc, op, arrays)
                return lambda: k.dispatcher[blocks, threads, 0](*args)
            agrees, diff, detail = bl.check(direct, lambda: None, host, np.ascontiguousarray, np.asarray,
                                            bl.expected(op, host), bl.OPS[op]["arrays"])
            assert agrees, (op, detail)
            agrees, _, detail = bl.check(lambda arrays: bl.twin_call(kc, op, arrays), lambda: None, host,
                                         np.ascontiguousarray, np.asarray, bl.expected(op, host), bl.OPS[op]["arrays"])
            assert agrees, (op, detail)
        print("ok")
    """)
    r = run_python("-c", code, env={"NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": ROOT})
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-3000:]


def test_the_whole_launch_benchmark_runs_in_the_simulator():
    """bench_launch.run end to end under NUMBA_ENABLE_CUDASIM=1, with stand-ins for what needs a
    GPU: NumPy for CuPy's arrays, the emulated C body for its ElementwiseKernel, numba's
    dispatcher for the CuPy launcher (so "raw kernel", which needs a cubin, fails: reported in
    its row, the others still timed)."""
    code = textwrap.dedent("""
        import sys, types
        import numpy as np
        sys.path.insert(0, "tests")
        import tinydae.kernels.cuda as kc
        from tinydae.kernels import cuda_launch
        from bench import bench_launch as bl
        from tinydae.backend import Backend
        from test_gpu_scripts import emulate_elementwise

        launches = {"cupy": 0, "numba": 0}

        class Counting(cuda_launch.NumbaLauncher):
            def launch(self, k, blocks, threads, args):
                launches[self.name] += 1
                super().launch(k, blocks, threads, args)

        class CupyStandIn(Counting):
            name = "cupy"
            def function(self, k, args):
                raise RuntimeError("no cubins in the simulator")

        kc.set_launcher = lambda name: setattr(kc, "LAUNCHER", CupyStandIn() if name == "cupy" else Counting())
        stream = types.SimpleNamespace(synchronize=lambda: None)
        xp = types.SimpleNamespace(
            asarray=np.ascontiguousarray, asnumpy=np.asarray,
            cuda=types.SimpleNamespace(get_current_stream=lambda: stream),
            ElementwiseKernel=lambda ins, outs, body, name: lambda *a: emulate_elementwise(ins, outs, body, a))
        before = kc.LAUNCHER
        lines = []
        result = bl.run(Backend("cuda", xp, kc, "simulated"), repeats=1, launches=2, warmup=0, pause_s=0,
                        elements=64, log=lines.append)
        assert kc.LAUNCHER is before
        assert len(lines) == len(result["rows"]) == 2 * len(bl.CONTENDERS)
        for row in result["rows"]:
            if row["contender"] == "raw kernel":
                assert row["error"] == "RuntimeError: no cubins in the simulator", row
                continue
            assert row["agrees"] and row["host_us"] > 0 and row["sync_us"] > 0 and "x_floor" not in row, row
        assert {g["kernel"] for g in result["grid"].values()} == {"_sgd", "_adam"}
        assert result["elements"] == 64
        # per op and contender: 1 checking launch + 2 modes x (1 settling + 1 timed block) x 2 launches
        assert launches == {"cupy": 2 * 2 * 9, "numba": 2 * 9}  # tinydae cupy + cupy launcher; tinydae numba
        print(bl.format_table(result))
        print("ok")
    """)
    r = run_python("-c", code, env={"NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": ROOT})
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-3000:]


PREFLIGHT_IN_SIMULATOR = """
import json, os, sys, types
import numpy as np
import tinydae.kernels.cuda as kc
from tinydae.kernels import cuda_launch
from bench import cupy_standin, gpu_preflight as gp

out, mode = sys.argv[1], sys.argv[2]

def ascontiguousarray(a, dtype=None):  # CuPy 14: cpdef ascontiguousarray(_ndarray_base a, ...)
    if not isinstance(a, cupy_standin.DeviceArray):
        raise TypeError("Argument 'a' has incorrect type (expected cupy._core.core._ndarray_base, got numpy.ndarray)")
    return np.ascontiguousarray(a).view(cupy_standin.DeviceArray)

sys.modules["cupy"] = types.SimpleNamespace(ascontiguousarray=ascontiguousarray, asarray=cupy_standin.to_device,
                                            asnumpy=np.asarray)

class CupyStandIn(cupy_standin.EmulatedCupyLauncher):
    # The real CupyLauncher, kernels run in the simulator; each variant's record is the one a
    # bundle in TINYDAE_CUDA_CUBINS holds, or (mode rebuilds) one compiled into another folder.
    def _built(self, k, dtype, arch):
        where = os.environ["TINYDAE_CUDA_CUBINS"] if mode != "rebuilds" else os.path.join(out, "cache")
        return dict(name=k.name, dtype=dtype, entry=k.name, cubin_path=os.path.join(where, k.name + ".cubin"),
                    ptx_params=cuda_launch.ptx_param_types(k.parsed[dtype]))

kc.set_launcher = lambda name: setattr(kc, "LAUNCHER", CupyStandIn() if name == "cupy" else cuda_launch.NumbaLauncher())
if mode == "wrong":
    right = kc.sgd_update
    def wrong(p, *args, **kw):
        right(p, *args, **kw)
        p[0] += 1
    kc.sgd_update = wrong
if mode == "old-to-dev":  # what the preflight passed before: cupy.ascontiguousarray on NumPy arrays
    gp.cupy_to_dev = lambda a: sys.modules["cupy"].ascontiguousarray(a)
gp.gpu_unavailable_reason = lambda: None
gp.device_info = lambda: dict(name="Sim GPU", id=0, compute_capability="9.0", arch="sm_90", memory_gib=80.0,
                              driver="13.0", driver_version=13000, runtime="13.0", runtime_version=13000)
gp.build = lambda arch, out_dir: (os.makedirs(out_dir, exist_ok=True), (arch == "sm_90", "exit 0: built"))[1]
sys.exit(gp.main(["--out", out]))
"""


@pytest.mark.parametrize("mode,status", [("right", 0), ("wrong", 1), ("rebuilds", 1), ("old-to-dev", 1)])
def test_preflight_main_in_the_simulator(tmp_path, mode, status):
    """gpu_preflight.main end to end under NUMBA_ENABLE_CUDASIM=1, the device, CuPy and build-cuda
    stood in for (the cupy launcher is the real CupyLauncher on stand-in arrays, its kernels run
    in the simulator): one PASS line per check and exit 0, or FAIL lines and exit 1 when a twin
    is wrong, the CuPy launcher compiles what build-cuda had built, or the host-to-device copy
    is CuPy 14's ascontiguousarray, which refuses NumPy arrays."""
    env = {"NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": ROOT, "TINYDAE_CUDA_CUBINS": None}
    r = run_python("-c", PREFLIGHT_IN_SIMULATOR, str(tmp_path), mode, env=env)
    assert r.returncode == status, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((tmp_path / "preflight-sim-gpu.json").read_text())
    assert summary["build_dir"] == str(tmp_path / "cuda-build")  # the launcher's bundle: OUT/cuda-build
    checks = summary["checks"]
    n_cases = len(gpu_preflight.CASES)
    assert len(checks) == 3 + len(gpu_preflight.LAUNCHERS) * n_cases  # numba sees it, build, cases, cubins
    failed = [c["check"] for c in checks if not c["ok"]]
    lines = [line for line in r.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert len(lines) == len(checks) and sum(line.startswith("FAIL") for line in lines) == len(failed)
    reuse = "cupy launcher loaded build-cuda's cubins"
    if mode == "right":
        assert not failed and "checks passed on Sim GPU" in r.stdout
        assert f"{n_cases} variants loaded from {tmp_path / 'cuda-build'}, none compiled again" in r.stdout
    elif mode == "wrong":
        assert failed == [f"{name} launcher, sgd_update float32 nesterov (boolean scalar)"
                          for name in gpu_preflight.LAUNCHERS]
    elif mode == "rebuilds":
        assert failed == [reuse]
    else:  # every case fails on both launchers, and the reuse check does not pass on nothing
        assert len(failed) == 1 + len(gpu_preflight.LAUNCHERS) * n_cases and reuse in failed
        assert "Argument 'a' has incorrect type" in r.stdout and "reuse of build-cuda's cubins is unproven" in r.stdout


def test_the_preflights_host_to_device_copy_takes_numpy_arrays(monkeypatch):
    """gpu_preflight.cupy_to_dev hands cupy.asarray a C-contiguous NumPy array (CuPy 14's
    ascontiguousarray would raise TypeError on it)."""
    import types

    seen = []
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(asarray=lambda a: seen.append(a) or "dev"))
    x = np.arange(12.0).reshape(3, 4)[:, ::2]
    assert gpu_preflight.cupy_to_dev(x) == "dev"
    assert type(seen[0]) is np.ndarray and seen[0].flags.c_contiguous and np.array_equal(seen[0], x)


# -- bench/bench_launch.py without a GPU -------------------------------------------------------


def emulate_elementwise(ins, outs, body, args):
    """A cupy.ElementwiseKernel's C body run as NumPy code on NumPy arrays (a check of its math):
    `T name = expr;` and `name = expr;` statements, outputs updated in place."""
    names = [p.split()[1] for p in (ins + ", " + outs).split(",")]
    env = dict(zip(names, args), sqrt=np.sqrt)
    for statement in filter(None, (s.strip() for s in body.split(";"))):
        target, expr = (part.strip() for part in re.sub(r"^T\s+", "", statement).split("=", 1))
        value = eval(expr, {}, env)  # noqa: S307 (the benchmark's own constant strings)
        if isinstance(env.get(target), np.ndarray):
            env[target][...] = value
        else:
            env[target] = value


def elementwise_on_numpy(op, arrays):
    emulate_elementwise(*bench_launch.ELEMENTWISE[op], bench_launch.elementwise_args(op, arrays))


@pytest.mark.parametrize("op", sorted(bench_launch.OPS))
def test_elementwise_peers_do_the_twins_update(op):
    host = bench_launch.host_arrays(op)
    want = bench_launch.expected(op, host)
    got = [a.copy() for a in host]
    elementwise_on_numpy(op, got)
    for g, w in zip(got, want):
        assert g.dtype == np.float32
        ok, _, detail = gpu_preflight.compare(g, w, rtol=2e-6, atol=1e-6)
        assert ok, detail
    assert not np.array_equal(got[0], host[0])  # it did update the parameters


def test_measure_times_blocks_of_launches_with_and_without_a_sync():
    events = []
    contenders = {name: (lambda name=name: events.append(name), lambda name=name: events.append("use " + name))
                  for name in ("a", "b")}
    times = bench_launch.measure(contenders, lambda: events.append("sync"), launches=5, repeats=4, warmup=1,
                                 rounds=2, pause_s=0)
    assert set(times) == {"a", "b"} and all(set(t) == {"host", "sync"} for t in times.values())
    for t in times.values():
        assert len(t["host"]) == len(t["sync"]) == 4 and min(t["host"] + t["sync"]) > 0
    # one host block of "a": selected once, 5 launches, no sync inside the timed block
    host_block = ["use a"] + ["a"] * 5
    sync_block = ["use a"] + ["a", "sync"] * 5
    text = ",".join(events)
    assert ",".join(["sync"] + host_block + ["sync"]) in text  # the timer: idle stream, block, drain
    assert ",".join(["sync"] + sync_block + ["sync"]) in text
    # warm-up 1 + settle 1 per round x 2 rounds + 4 timed, per mode: 7 blocks of 5 launches each
    assert events.count("use a") == events.count("use b") == 2 * 7
    assert events.count("a") == 2 * 7 * 5
    # microseconds per launch, not per block: launches that take 2 ms each read >= 2,000 us
    slow = bench_launch.measure({"slow": (lambda: time.sleep(0.002), lambda: None)}, lambda: None, launches=5,
                                repeats=3, warmup=0, rounds=1, pause_s=0)["slow"]
    assert 2000 <= statistics.median(slow["host"]) < 8000 and 2000 <= statistics.median(slow["sync"]) < 8000


def fake_result():
    per = {name: {"host": [2.0 + i, 3.0 + i, 4.0 + i], "sync": [9.0 + i, 10.0 + i, 12.0 + i]}
           for i, name in enumerate(bench_launch.CONTENDERS) if name != "cupy elementwise"}
    checks = {name: (name != "numba dispatcher", 0.0, "agrees" if name != "numba dispatcher" else "params: bad")
              for name in per}
    rows = bench_launch.summarize("sgd", per, checks, {"cupy elementwise": "CompileException: no nvrtc"})
    return dict(backend="cuda", device="Fake GPU (CUDA device 0)", elements=1024, dtype="float32", grid={},
                launches=200, repeats=3, floor=bench_launch.FLOOR, contenders=bench_launch.CONTENDERS, rows=rows,
                date="2026-01-02T00:00:00+00:00")


def test_summarize_format_and_report_of_a_launch_result(tmp_path, monkeypatch):
    result = fake_result()
    rows = {r["contender"]: r for r in result["rows"]}
    assert list(rows) == list(bench_launch.CONTENDERS)
    raw = rows["raw kernel"]
    assert (raw["host_us"], raw["host_us_min"], raw["host_us_max"], raw["x_floor"]) == (6.0, 5.0, 7.0, 1.0)
    assert rows["tinydae cupy"]["x_floor"] == 3.0 / 6.0 and rows["tinydae cupy"]["sync_us"] == 10.0
    assert rows["cupy elementwise"] == dict(op="sgd update", contender="cupy elementwise",
                                            error="CompileException: no nvrtc")
    table = bench_launch.format_table(result)
    assert "launch overhead on cuda: Fake GPU" in table
    assert "3.00 [2.00-4.00]" in table and "MISMATCH (params: bad)" in table and "failed: CompileException" in table

    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True)
    (results / "cuda-fake.json").write_text(json.dumps(dict(device=result["device"], backend="cuda", launch=result)))
    monkeypatch.setattr(report, "ROOT", str(tmp_path))
    md = report.launch_section(report.load_results())
    assert "**cuda: Fake GPU (CUDA device 0)**" in md and "`bench/results/cuda-fake.json`" in md
    assert "| sgd update | tinydae cupy | 3.00 [2.00–4.00] | 0.50 | 10.00 [9.00–12.00] | agrees |" in md
    assert "| MISMATCH |" in md and "failed: CompileException" in md
    # --write fills the launch section when README.md has its markers, and leaves it out if not
    sections = "".join(f"<!-- bench:{s}:begin -->\nold\n<!-- bench:{s}:end -->\n"
                       for s in ("kernels", "train", "chain"))
    (tmp_path / "README.md").write_text(sections)
    report.main(["--write"])
    assert "bench:launch" not in (tmp_path / "README.md").read_text()
    (tmp_path / "README.md").write_text(sections + "<!-- bench:launch:begin -->\nold\n<!-- bench:launch:end -->\n")
    report.main(["--write"])
    assert "| sgd update | raw kernel | 6.00 [5.00–7.00] | 1.00 |" in (tmp_path / "README.md").read_text()
    (tmp_path / "README.md").write_text("no markers")
    with pytest.raises(SystemExit):
        report.main(["--write"])  # the other sections stay required


# -- on a GPU ----------------------------------------------------------------------------------


@pytest.mark.gpu
def test_launch_benchmark_on_the_gpu():
    import tinydae.kernels.cuda as kc
    from tinydae.cli import cli

    before = kc.LAUNCHER
    lines = []
    result = bench_launch.run("cuda", repeats=3, launches=20, warmup=1, pause_s=0, log=lines.append)
    assert kc.LAUNCHER is before  # the benchmark leaves the launcher as it found it
    assert len(lines) == len(result["rows"]) == len(bench_launch.OPS) * len(bench_launch.CONTENDERS)
    for row in result["rows"]:
        assert "error" not in row, row
        assert row["agrees"], row  # every contender does the twin's work
        assert 0 < row["host_us_min"] <= row["host_us"] <= row["host_us_max"], row
        assert 0 < row["sync_us_min"] <= row["sync_us"] <= row["sync_us_max"], row
    assert {g["kernel"] for g in result["grid"].values()} == {"_sgd", "_adam"}
    r = CliRunner().invoke(cli, ["bench", "launch", "--repeats", "2", "--launches", "10", "--no-save", "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)["rows"]) == len(result["rows"])


@pytest.mark.gpu
def test_preflight_launcher_checks_pass_on_the_gpu(tmp_path):
    from tinydae.kernels import cuda_build

    checks = gpu_preflight.Report()
    gpu_preflight.launcher_checks(checks, cuda_build.cache_dir(), built=False)
    assert len(checks.checks) == len(gpu_preflight.LAUNCHERS) * len(gpu_preflight.CASES)
    assert not checks.failed, checks.failed


# -- bench/bench_launch_host.py: the launcher's host cost without a GPU ----------------------------


def test_the_host_launch_cost_benchmark_runs_in_the_simulator():
    """It records the twins' launches (SGD, Adam and a whole training step) and times the launcher
    on them; the timings are printed, never asserted.  Without the simulator: one error line."""
    r = run_python("bench/bench_launch_host.py", "--repeats", "2", "--launches", "20", "--hidden", "16",
                   env={"NUMBA_ENABLE_CUDASIM": "1", "PYTHONPATH": ROOT, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = {line.split("  ")[0]: line for line in r.stdout.splitlines()}
    assert set(rows) >= {"sgd update", "adam update"}
    step = next(line for line in r.stdout.splitlines() if line.startswith("train step 784-16-..."))
    assert step.split()[4] == "7"  # 784-16-784: corruption, 2 forward, loss, 2 backward, Adam (2 L + 3)
    assert re.search(r"^per training step \(7 launches\): before \d+ us, launcher \d+ us", r.stdout, re.M)
    r = run_python("bench/bench_launch_host.py", env={"NUMBA_ENABLE_CUDASIM": None, "PYTHONPATH": ROOT})
    assert r.returncode == 2 and r.stderr.startswith("error: run under NUMBA_ENABLE_CUDASIM=1")


# -- bash bench/run_on_gpu.sh smoke: stage budgets and what comes back -----------------------------


def smoke_budgets():
    text = open(SCRIPT).read()
    default = re.search(r'^SMOKE_BUDGETS=\$\{SMOKE_BUDGETS:-"([^"]*)"\}', text, re.M).group(1)
    return {name: int(b) for name, b in (part.split(":") for part in default.split())}


def test_smoke_stages_have_budgets_that_fit_one_device_call():
    budgets = smoke_budgets()
    assert list(budgets) == ["versions", "wheels", "bundle", "preflight", "train", "sample", "nccl", "pytest", "bench"]
    # the stages' own limits (plus up to 5 s each to die, and the GPU check and summary between
    # them) end the step before run_step's 470 s, well inside 8 minutes
    assert sum(budgets.values()) + 5 * len(budgets) <= 460 and all(b > 0 for b in budgets.values())
    text = open(SCRIPT).read()
    body = text[text.index("step_smoke() {"):]
    assert [m for m in re.findall(r"stage (\w+) ", body) if m in budgets] == list(budgets)
    assert re.search(r'^export STEP_TIMEOUT_S=\$\{STEP_TIMEOUT_S:-470\}', text, re.M)


@no_gpu_here
def test_smoke_without_a_gpu_stops_after_the_versions_with_two_files(tmp_path):
    r = run_script("smoke", out=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smoke-no-gpu.json", "smoke-no-gpu.log"]
    summary = json.loads((tmp_path / "smoke-no-gpu.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["versions"]
    assert "numba-cuda" in r.stdout and "error: no usable CUDA GPU here" in r.stdout + r.stderr


FAKE_PYTHON3 = """#!/usr/bin/env bash
# python3 for the smoke's dry run: a 'GPU' that answers every stage at once, except that the
# versions stage hangs past its budget; summaries are made by the real interpreter.
case "$*" in
  *"gpu_preflight.py --device-slug"*) echo fake-gpu ;;
  *"gpu_preflight.py --require-gpu"*) exit 0 ;;
  *"gpu_smoke.py versions"*) sleep 30 ;;
  *"gpu_smoke.py summary"*) exec REAL "$@" ;;
  *"gpu_smoke.py needs-wheels"*) echo "numba-cuda 0.30.4: nothing to install"; exit 1 ;;
  *"gpu_smoke.py bundle"*) echo "bundle $3: fake"; exit 0 ;;
  *) echo "fake python3 $*" ;;
esac
"""


def test_smoke_runs_every_stage_under_its_budget_and_writes_few_files(tmp_path):
    """A dry run with a stand-in python3: every stage runs in order, a stage past its budget is
    stopped and reported as TIMEOUT (exit 124) while the others go on, the stage table comes
    back as JSON, and $OUT holds at most 6 files."""
    bin_dir, out, work = tmp_path / "bin", tmp_path / "out", tmp_path / "work"
    bin_dir.mkdir()
    fake = bin_dir / "python3"
    fake.write_text(FAKE_PYTHON3.replace("REAL", sys.executable))
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", OUT=str(out), SMOKE_WORK=str(work),
               SMOKE_BUDGETS="versions:1 wheels:5 bundle:5 preflight:5 train:5 sample:5 nccl:5 pytest:5 bench:5")
    env.pop("TINYDAE_CUDA_CUBINS", None)
    t = time.time()
    r = subprocess.run(["bash", SCRIPT, "smoke"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert time.time() - t < 40, "the versions stage was not stopped at its budget"
    assert r.returncode == 1, r.stdout + r.stderr
    summary = json.loads((out / "smoke-fake-gpu.json").read_text())
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == list(smoke_budgets())
    assert stages["versions"]["timed_out"] and stages["versions"]["rc"] == 124
    assert all(s["ok"] for name, s in stages.items() if name != "versions"), summary
    assert "error: stage versions ran past its budget of 1 s" in r.stdout
    assert len(list(out.iterdir())) <= 6 and not (out / "cuda-build").exists()
    assert "fake python3 bench/gpu_preflight.py --out" in r.stdout and "--no-build" in r.stdout


def test_smoke_helpers_compare_wheels_and_bundles(cli_checkpoint, tmp_path, monkeypatch, capsys):
    """gpu_smoke: two runs compared (a run against itself passes, against another seed fails), when
    the carried wheels are needed, and a folder that is no bundle."""
    from bench import gpu_smoke
    from tinydae.cli import cli

    assert gpu_smoke.compare(str(cli_checkpoint), str(cli_checkpoint)) == 0
    other = tmp_path / "other"
    r = CliRunner().invoke(cli, ["train", "--limit", "300", "--hidden", "16", "--epochs", "1", "--seed", "9",
                                 "--backend", "cpu", "--out", str(other)])
    assert r.exit_code == 0, r.output
    assert gpu_smoke.compare(str(cli_checkpoint), str(other / "checkpoint.h5")) == 1
    out = capsys.readouterr().out
    assert "FAIL  parameters after training: max |cuda - cpu|" in out

    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "manifest.json").write_text(json.dumps({"numba_cuda": "0.30.4"}))
    for have, need in ((None, 0), ("0.28.1", 0), ("0.30.4", 1), ("0.31.0", 0)):
        monkeypatch.setattr(gpu_smoke, "_version", lambda pkg, have=have: have)
        assert gpu_smoke.needs_wheels(str(tmp_path / "bundle")) == need, have
    monkeypatch.setattr(gpu_smoke, "_version", lambda pkg: "0.31.0")
    assert gpu_smoke.needs_wheels(str(tmp_path / "no-bundle")) == 1  # new enough, no bundle to match
    assert gpu_smoke.bundle(str(tmp_path / "no-bundle")) == 1
    assert gpu_smoke.main(["compare", "one"]) == 2
