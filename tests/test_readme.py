"""Every shell command and Python snippet in README.md runs, verbatim (issue 10).

Commands come from the ```bash blocks and from inline code spans that start with
`python cli.py`; snippets from the ```python blocks.  They run in README order in one temporary
working directory (so `runs/latest/checkpoint.h5` from the first `train` serves the later
commands), with `../shared` pointing at the real shared folder (MNIST commands skip with the
reason where it is absent) and bench results redirected away from bench/results/.

Each command must match a RULE: run as written; run with a suffix that only makes it smaller
(click takes the last occurrence of an option, so `--epochs 1` appended wins); run only the part
after the README's install command (CI has just done that install); or skip, with the reason and
the test that covers it instead.  A command no rule matches fails the test, so a new README
command cannot escape.
"""
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
# TINYDAE_MNIST_DIR as in conftest.py (set it to a missing folder to run as a fresh clone would)
MNIST = os.path.join(os.environ.get("TINYDAE_MNIST_DIR", os.path.join(SHARED, "data", "mnist")),
                     "t10k-images-idx3-ubyte.gz")
INSTALL = 'python -m pip install -e ".[test]" && '

# (pattern, action, argument): first match wins.  Actions: "run" (argument: a suffix that makes
# it smaller, or ""), "after-install" (run what follows the README's install command, with the
# suffix), "skip" (argument: why, and what covers it).
RULES = [
    (r'^python -m pip install -e "\.\[test\]" && python -m pytest$', "skip",
     "the README's test command is what .ci/run runs; running it here would recurse"),
    (r'^python -m pip install -e "\.\[test\]" && python cli\.py train$', "after-install", " --epochs 1 --limit 1500"),
    (r'^python -m pip install -e "\.\[cuda13\]" && python cli\.py build-cuda', "skip",
     ".ci/run installs the cuda13 extra into its Python 3.12 environment and runs this build there "
     "(tests/test_cuda_build.py)"),
    (r'^python -m venv ', "skip", "creates an environment; .ci/run does the same"),
    (r'^python3 -m pip download ', "skip", "downloads a wheel for the GPU machine (network); the smoke's wheel "
     "stage that installs it is tested in tests/test_gpu_scripts.py"),
    (r"^bash bench/run_on_gpu\.sh", "skip", "needs a GPU (tests/test_gpu_scripts.py covers the script)"),
    (r"--backend cuda", "skip", "needs a GPU (tests/test_gpu.py)"),
    (r"^python cli\.py bench launch", "skip", "needs a GPU (tests/test_gpu_scripts.py)"),
    (r"^python cli\.py COMMAND$", "skip", "a placeholder in prose, not a command"),
    (r"^python cli\.py build-cuda", "skip", "needs numba-cuda: .ci/run builds in its cuda13 environment "
     "(tests/test_cuda_build.py)"),
    (r"^python cli\.py train --resume ", "run", " --epochs 2"),
    (r"^python cli\.py train", "run", " --epochs 1 --limit 1500"),
    (r"^python cli\.py --threads \d+ train", "run", " --epochs 1 --limit 1500 --out runs/threads"),
    (r"^python cli\.py bench kernels", "run", " --sizes 4K --repeats 1"),
    (r"^python cli\.py bench train", "run", " --batches 8 --repeats 1 --no-compile"),
    (r"^python cli\.py bench chain", "run", " --chains 4:2 --repeats 1 --no-compile"),
    (r"^python cli\.py bench all", "skip", "minutes of timing; each section is run above with small sizes"),
    (r"^python cli\.py reproduce --quick$", "skip",
     "the same run as `python cli.py reproduce`, which runs here with --quick appended"),
    (r"^python cli\.py reproduce", "run", " --quick"),
    (r"^python cli\.py classifier train", "run", " --epochs 1 --limit 1500"),
    (r"^python cli\.py classifier evaluate", "run", ""),
    (r"^python cli\.py evaluate --theorem", "run", " --epochs 1"),
    (r'^python -m pip install -e "\.\[onnx\]"$', "skip",
     "installs the onnx extra, which the test extra includes: CI has installed it"),
    (r'^python -m pip install numpy h5py && python -m pip install --no-deps \.$', "skip",
     "installs into the running environment; tests/test_embed_runtime.py::"
     "test_no_deps_install_runs_on_numpy_and_h5py_alone installs the same way beside numpy and h5py alone"),
    (r"^python bench/bench_embed\.py", "run", " --repeats 1 --quick"),
    (r"^python cli\.py export", "run", ""),
    (r"^(cc |runs/dae )", "skip", "needs a C compiler and examples/ (not linked into the README's working "
     "folder); tests/test_export.py builds examples/embed/dae.c and checks its output against "
     "model.reconstruct"),
    (r"^python cli\.py (sample|improve|evaluate|info|gradcheck|--help)\b", "run", ""),
    (r"^python bench/report\.py", "run", ""),
    (r"^python bench/bench_arch_quality\.py", "run", " --seconds 1 --seeds 0 --data glyphs"),
    (r'^python -m pip install -e "\.\[mpi\]"$', "skip",
     "installs the mpi extra, which the test extra includes: CI has installed it"),
    (r"^srun ", "skip", "needs a Slurm cluster; the same command under mpiexec runs above and in tests/test_distributed.py"),
    (r"^mpiexec -n \d+ python cli\.py train", "run", " --epochs 1 --limit 1500"),
    (r"^mpiexec -n \d+ python cli\.py (sample|improve)\b", "run", ""),
    (r"^python cli\.py bench scale", "run", " --ranks 1,2 --steps 2 --repeats 2 --arch mlp:16"),
]


def _blocks():
    """-> [(language, first line number, text)] of README.md's fenced blocks."""
    out, lang, start, lines = [], None, 0, []
    with open(README) as f:
        for n, line in enumerate(f, 1):
            fence = re.match(r"^```(\w*)\s*$", line)
            if fence and lang is None:
                lang, start, lines = fence.group(1) or "text", n + 1, []
            elif fence:
                out.append((lang, start, "".join(lines)))
                lang = None
            elif lang is not None:
                lines.append(line)
    return out


def _shell_lines(text):
    """A bash block -> its commands: continuations joined, comments and blank lines dropped."""
    text = re.sub(r"\\\n\s*", " ", text)
    commands = []
    for line in text.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def _effective(command):
    """What the test actually runs for a README command (None for a skip)."""
    action, arg = rule_for(command) or ("fail", "")
    if action == "skip":
        return None
    if action == "after-install" and command.startswith(INSTALL):
        command = command[len(INSTALL):]
    return command + arg


def readme_commands():
    """-> [(where, command)] in README order: bash blocks and inline `python cli.py ...` spans."""
    found = []
    for lang, start, text in _blocks():
        if lang == "bash":
            found += [(f"README.md:{start} (bash block, command {i})", c) for i, c in enumerate(_shell_lines(text), 1)]
    with open(README) as f:
        body = f.read()
    prose = re.sub(r"^```.*?^```", "", body, flags=re.S | re.M)
    for m in re.finditer(r"`(python cli\.py [^`]+)`", prose):
        line = body[:body.index(m.group(0))].count("\n") + 1
        found.append((f"README.md:{line} (inline)", m.group(1)))
    seen, unique = set(), []
    for where, command in found:
        if command not in seen:
            seen.add(command)
            unique.append((where, command))
    return unique


def python_snippets():
    return [(f"README.md:{start}", text) for lang, start, text in _blocks() if lang == "python"]


def rule_for(command):
    for pattern, action, arg in RULES:
        if re.search(pattern, command):
            return action, arg
    return None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """An empty working directory with ../shared and cli.py as the README assumes."""
    base = tmp_path_factory.mktemp("readme")
    work = base / "work"
    work.mkdir()
    if os.path.isdir(SHARED):
        os.symlink(SHARED, base / "shared")
    os.symlink(os.path.join(ROOT, "cli.py"), work / "cli.py")
    os.symlink(os.path.join(ROOT, "bench"), work / "bench")
    return work


def _env(workdir):
    env = dict(os.environ, TINYDAE_BENCH_RESULTS=str(workdir / "bench-results"), PYTHONUNBUFFERED="1")
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    return env


def test_every_readme_command_has_a_rule():
    commands = readme_commands()
    assert len(commands) >= 15, commands  # the parser found the README's commands
    unmatched = [f"{where}: {c}" for where, c in commands if rule_for(c) is None]
    assert not unmatched, "README commands with no rule in tests/test_readme.py:\n" + "\n".join(unmatched)


def _first_runs():
    """{effective command: where it first appears}: a command the README repeats runs once."""
    first = {}
    for where, command in readme_commands():
        effective = _effective(command)
        if effective is not None:
            first.setdefault(effective, where)
    return first


FIRST = _first_runs()


@pytest.mark.parametrize("where,command", readme_commands(), ids=lambda v: v[:60] if isinstance(v, str) else v)
def test_readme_command_runs(workdir, where, command):
    action, arg = rule_for(command) or ("fail", None)
    assert action != "fail", f"{where}: no rule for {command}"
    if action == "skip":
        pytest.skip(arg)
    if FIRST[_effective(command)] != where:
        pytest.skip(f"runs as {FIRST[_effective(command)]}")
    if "../shared/" in command and not os.path.exists(MNIST):
        pytest.skip(f"MNIST is not at {MNIST}")
    if "runs/mnist" in command and not os.path.exists(MNIST):  # resumes what an MNIST command made
        pytest.skip(f"continues an MNIST run, and MNIST is not at {MNIST}")
    if action == "after-install":
        assert command.startswith(INSTALL), command
        command = command[len(INSTALL):]
    # `python` here is the interpreter running the tests (the venv the README's install made)
    argv = shlex.split(command + arg)
    if argv[0] == "mpiexec":  # the mpi extra's mpiexec, beside this python; its `python` is this one
        if importlib.util.find_spec("mpi4py") is None:
            pytest.skip("mpi4py is not installed (the test extra brings it)")
        beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
        argv[0] = beside if os.path.exists(beside) else argv[0]
        argv = [sys.executable if a == "python" else a for a in argv]
    if argv[0] == "python":
        argv[0] = sys.executable
    r = subprocess.run(argv, cwd=workdir, env=_env(workdir), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{where}: {command}{arg}\nexit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


@pytest.mark.parametrize("where,code", python_snippets())
def test_readme_python_snippet_runs(workdir, where, code):
    """Each ```python block runs as a script, after the commands above (it may use their runs/)."""
    r = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=_env(workdir), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, f"{where}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
