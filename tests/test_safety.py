"""tinydae.safety: the checks made before work (output paths, memory) and JSON without NaN."""
import json
import os

import numpy as np
import pytest

from tinydae import safety
from tinydae.errors import ConfigError


def test_output_file_checks(tmp_path):
    assert safety.check_output_file(tmp_path / "new" / "a.h5") == str(tmp_path / "new" / "a.h5")
    assert (tmp_path / "new").is_dir()  # the folder was made
    with pytest.raises(ConfigError, match="is a directory"):
        safety.check_output_file(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="which is a file"):
        safety.check_output_file(tmp_path / "f" / "sub" / "a.h5")


def test_output_dir_checks(tmp_path):
    assert os.path.isdir(safety.check_output_dir(tmp_path / "d" / "e"))
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        safety.check_output_dir(tmp_path / "f")
    with pytest.raises(ConfigError, match="which is a file"):
        safety.check_output_dir(tmp_path / "f" / "g")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot write"):
            safety.check_output_file(ro / "a.h5")
    finally:
        ro.chmod(0o700)


def test_memory_check_names_need_and_fix():
    have = safety.available_memory()
    assert have is None or have > 0
    safety.check_memory(1024, "a tiny model", "nothing")
    if have:
        with pytest.raises(ConfigError, match="needs about .* only .* available; use a smaller --hidden"):
            safety.check_memory(2 * have, "a model", "use a smaller --hidden")


def test_json_never_holds_nan():
    text = safety.dumps({"a": float("nan"), "b": [1.5, np.float64("-inf")], "c": np.float32(2)})
    obj = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
    assert obj == {"a": None, "b": [1.5, None], "c": 2.0, "non_finite": ["a", "b[1]"]}
    assert json.loads(safety.dumps({"x": 1.0})) == {"x": 1.0}


def test_out_of_memory_becomes_one_config_error():
    with pytest.raises(ConfigError, match="ran out of memory running 9 chains; use a smaller --n"):
        with safety.out_of_memory("running 9 chains", "use a smaller --n"):
            raise MemoryError("Unable to allocate 584. GiB")  # as NumPy's _ArrayMemoryError
    with safety.out_of_memory("x", "y"):
        pass  # no error, nothing raised


def test_exclusive_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
    import signal
    import subprocess
    import sys

    with safety.exclusive_lock(tmp_path) as path:  # a second lock, even in this process, is refused
        assert open(path).read().strip() == str(os.getpid())
        with pytest.raises(ConfigError, match=rf"in use by another run \(pid {os.getpid()}\)"):
            with safety.exclusive_lock(tmp_path):
                pass
    assert not (tmp_path / ".lock").exists()  # removed on release
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from tinydae import safety\n"
                               f"with safety.exclusive_lock({str(tmp_path)!r}):\n"
                               "    print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"pid {holder.pid}\)"):
            with safety.exclusive_lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup runs: the .lock file stays behind
        holder.wait()
    assert (tmp_path / ".lock").exists()
    with safety.exclusive_lock(tmp_path):  # but its lock died with the process
        pass
