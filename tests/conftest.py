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
