"""Issue 19, full disks and long names: every write path ends in one `error:` line naming the
path and the bytes it needed, leaves no temporary behind and keeps the previous file; names near
the file system's limit work, and a name over it is refused before the work.

A full disk is simulated without mounting anything: the CLI runs in a subprocess whose
RLIMIT_FSIZE is small and which ignores SIGXFSZ, so a write past the limit fails with EFBIG
("File too large"), as a write to a full disk fails with ENOSPC: both are OSErrors of one write
(checkpoint.atomic_write treats every OSError alike).  Before issue 19 an HDF5 save to a full
tmpfs crashed the process (segfault, abort in free()); HDF5 now builds the file in memory.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from tinydae.cli import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = ["cli.py"] + sys.argv[2:]
from tinydae.cli import main
main()
"""


def limited_cli(limit, *args, cwd):
    """python cli.py ARGS with files limited to `limit` bytes each."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", LIMITED, str(limit), *[str(a) for a in args]],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def one_error_line(r, *fragments):
    assert r.returncode == 2, (r.returncode, r.stdout[-1000:], r.stderr[-3000:])
    lines = r.stderr.strip().splitlines()  # progress lines may come first; the error is the last
    assert "Traceback" not in r.stderr and "HDF5-DIAG" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:], r.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def no_temporaries(folder):
    return not [p for p in folder.rglob("*") if ".tmp-" in p.name]


TRAIN = ["train", "--kernels", "reference", "--limit", "300", "--hidden", "64", "--epochs", "1", "--backend", "cpu"]


def test_a_checkpoint_that_does_not_fit_is_one_error_line_and_no_crash(tmp_path):
    r = limited_cli(200_000, *TRAIN, "--out", tmp_path / "run", cwd=tmp_path)
    line = one_error_line(r, f"{tmp_path / 'run' / 'checkpoint.h5'}: not written (", "bytes needed): File too large",
                          "nothing was written")
    assert int(line.split("(")[1].split()[0].replace(",", "")) > 200_000  # the bytes it needed
    assert no_temporaries(tmp_path)


def test_a_second_save_that_does_not_fit_keeps_the_first(tmp_path, cli_checkpoint):
    """Resuming a run whose next checkpoint cannot be written: the previous checkpoint survives, byte
    for byte, and still loads."""
    run = tmp_path / "run"
    run.mkdir()
    ck = run / "checkpoint.h5"
    ck.write_bytes(open(cli_checkpoint, "rb").read())
    before = ck.read_bytes()
    r = limited_cli(len(before) // 2, "train", "--resume", ck, "--epochs", "2", "--out", run, "--backend", "cpu",
                    cwd=tmp_path)
    one_error_line(r, f"{ck}: not written (", "the previous file is kept")
    assert ck.read_bytes() == before and no_temporaries(tmp_path)
    from tinydae.checkpoint import load_checkpoint
    assert load_checkpoint(ck).state["step"] > 0


@pytest.mark.parametrize("what", ["png", "h5", "npz", "bench", "classifier"])
def test_every_other_write_path_ends_in_one_line(tmp_path, cli_checkpoint, what):
    if what == "png":
        args = ["sample", cli_checkpoint, "--n", "64", "--steps", "30", "--keep-every", "1", "--backend", "cpu",
                "--out", tmp_path / "s.png"]
        limit, target = 20_000, tmp_path / "s.png"
    elif what == "h5":
        args = ["sample", cli_checkpoint, "--n", "64", "--steps", "30", "--backend", "cpu", "--out",
                tmp_path / "s.png", "--h5", tmp_path / "chain.h5"]
        limit, target = 150_000, tmp_path / "chain.h5"
    elif what == "npz":
        args = ["export", cli_checkpoint, "--format", "npz", "--out", tmp_path / "m.npz"]
        limit, target = 10_000, tmp_path / "m.npz"
    elif what == "bench":
        args = ["bench", "kernels", "--backend", "cpu", "--sizes", "4K", "--repeats", "1", "--out", tmp_path / "b.json"]
        limit, target = 500, tmp_path / "b.json"
    else:
        args = ["classifier", "train", "--limit", "300", "--epochs", "1", "--hidden", "64,32", "--out",
                tmp_path / "c.h5"]
        limit, target = 20_000, tmp_path / "c.h5"
    r = limited_cli(limit, *args, cwd=tmp_path)
    one_error_line(r, f"{target}: not written (", "bytes needed): File too large")
    assert not target.exists() and no_temporaries(tmp_path)


def test_a_name_near_the_limit_works_and_one_over_it_is_refused_before_the_work(tmp_path, cli_checkpoint):
    long_png = tmp_path / ("s" * 248 + ".png")  # 252 bytes: legal; its temporary must not be longer
    r = CliRunner().invoke(cli, ["sample", str(cli_checkpoint), "--n", "4", "--steps", "2", "--backend", "cpu",
                                 "--out", str(long_png)])
    assert r.exit_code == 0, r.output
    assert long_png.exists() and no_temporaries(tmp_path)
    long_npz = tmp_path / ("e" * 248 + ".npz")
    r = CliRunner().invoke(cli, ["export", str(cli_checkpoint), "--format", "npz", "--out", str(long_npz)])
    assert r.exit_code == 0, r.output
    assert np.load(long_npz)  # a valid archive
    too_long = tmp_path / ("x" * 296 + ".png")
    r = CliRunner().invoke(cli, ["sample", str(cli_checkpoint), "--n", "4", "--steps", "2", "--backend", "cpu",
                                 "--out", str(too_long)])
    assert r.exit_code == 2 and r.stderr.strip().startswith("error: --out ")
    assert "its name is 300 bytes, longer than the 255 the file system allows" in r.stderr
    assert "ran 4 chains" not in r.output  # refused before the chains


def test_train_refuses_before_the_work_when_its_checkpoints_cannot_fit(tmp_path, monkeypatch):
    """A disk already (nearly) full: the free space is compared with the checkpoint's size first."""
    import collections

    Stat = collections.namedtuple("Stat", "f_bavail f_frsize")
    monkeypatch.setattr(os, "statvfs", lambda path: Stat(100, 4096))  # 400 KiB free
    r = CliRunner().invoke(cli, TRAIN + ["--out", str(tmp_path / "run")])
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("error: saving the checkpoints of a 784-64-784 DAE (adam) needs about ")
    assert "of disk space in" in r.stderr and "but only 400.0 KiB is free" in r.stderr
    assert "epoch" not in r.output and not (tmp_path / "run" / "checkpoint.h5").exists()
