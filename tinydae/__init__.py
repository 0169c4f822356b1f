"""tinydae: denoising autoencoders trained with binary cross-entropy, from scratch.

Hand-written forward/backward passes, fused kernels, a CPU backend (NumPy) and, later,
a CUDA backend.  See README.md for the tour.
"""
__version__ = "0.1.0"


def _kernels_from_checkout():
    """Installed, kernels/ is the subpackage tinydae.kernels (pyproject's package-dir; an
    editable install maps it too).  Run from a bare checkout (PYTHONPATH=., as on the offline
    GPU machines) nothing maps it, so load the checkout's kernels/ under that name here."""
    import importlib.util
    import os
    import sys

    if importlib.util.find_spec("tinydae.kernels") is not None:
        return
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
    if not os.path.isfile(os.path.join(src, "__init__.py")):
        return  # nothing to map: the import below fails and names tinydae.kernels
    spec = importlib.util.spec_from_file_location(
        "tinydae.kernels", os.path.join(src, "__init__.py"), submodule_search_locations=[src])
    module = importlib.util.module_from_spec(spec)
    sys.modules["tinydae.kernels"] = module
    spec.loader.exec_module(module)
    sys.modules[__name__].kernels = module  # as the import system does for a found subpackage


_kernels_from_checkout()

from tinydae.backend import Backend, get_backend
from tinydae.checkpoint import load_checkpoint, load_model, restore_model, save_checkpoint
from tinydae.corruption import Corruption, gaussian, masking, none, salt_pepper
from tinydae.data import Dataset, glyphs, load_dataset
from tinydae.errors import (BackendUnavailable, CheckpointError, ConfigError, DataError,
                            TinyDAEError, TrainingDiverged, TrainingInterrupted)
from tinydae.model import DAE
from tinydae.optim import SGD, Adam, AdamW, make_optimizer
from tinydae.sampling import SAMPLERS, chain, improve, make_sampler
from tinydae.train import TrainState, evaluate_reconstruction, fit
from tinydae import arch, checkpoint, images, layers  # noqa: E402  (modules the CLI reaches through)

__all__ = [
    "Adam", "AdamW", "Backend", "BackendUnavailable", "CheckpointError", "ConfigError",
    "Corruption", "DAE", "DataError", "Dataset", "SAMPLERS", "SGD", "TinyDAEError", "TrainState",
    "TrainingDiverged", "TrainingInterrupted", "chain", "evaluate_reconstruction", "fit", "gaussian",
    "get_backend", "glyphs", "improve", "load_checkpoint", "load_dataset", "load_model",
    "make_optimizer", "make_sampler", "masking", "none", "restore_model", "salt_pepper",
    "save_checkpoint",
]
