import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("ci", deadline=None, print_blob=True)
settings.load_profile("ci")

REPO = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("TINYDAE_MNIST_DIR", REPO.parent / "shared" / "data" / "mnist"))
MNIST_IMAGES = MNIST_DIR / "t10k-images-idx3-ubyte.gz"


def gpu_unavailable_reason():
    try:
        import cupy
    except ImportError:
        return "cupy is not installed (pip install -e '.[cuda12]')"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return "no CUDA device present"
    except Exception as e:  # no driver, no device
        return f"no usable CUDA device ({e})"
    return None


def pytest_collection_modifyitems(config, items):
    reason = None
    for item in items:
        if "gpu" in item.keywords:
            reason = reason or gpu_unavailable_reason() or ""
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"gpu test: {reason}"))


@pytest.fixture(scope="session")
def mnist_path():
    if not MNIST_IMAGES.exists():
        pytest.skip(f"MNIST test split not found at {MNIST_IMAGES} (set TINYDAE_MNIST_DIR)")
    return MNIST_IMAGES


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def cli_checkpoint(tmp_path_factory):
    """A small checkpoint made by `python cli.py train` (glyphs, 784-16-784, one epoch), shared
    by the modules that only need a real trained file; none of them may write to it."""
    from click.testing import CliRunner

    from tinydae.cli import cli

    out = tmp_path_factory.mktemp("cli-run")
    r = CliRunner().invoke(cli, ["train", "--limit", "300", "--hidden", "16", "--epochs", "1",
                                 "--backend", "cpu", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out / "checkpoint.h5"
