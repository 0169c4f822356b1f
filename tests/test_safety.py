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
