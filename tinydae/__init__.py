"""tinydae: denoising autoencoders trained with binary cross-entropy, from scratch.

Hand-written forward/backward passes, fused kernels, a CPU backend (NumPy) and, later,
a CUDA backend.  See README.md for the tour.
"""
__version__ = "0.1.0"

from tinydae.backend import Backend, get_backend
from tinydae.checkpoint import load_checkpoint, load_model, restore_model, save_checkpoint
from tinydae.corruption import Corruption, gaussian, masking, none, salt_pepper
from tinydae.data import Dataset, glyphs, load_dataset
from tinydae.errors import (BackendUnavailable, CheckpointError, ConfigError, DataError,
                            TinyDAEError, TrainingDiverged, TrainingInterrupted)
from tinydae.model import DAE
from tinydae.optim import SGD, Adam, AdamW, make_optimizer
from tinydae.train import TrainState, evaluate_reconstruction, fit
from tinydae import checkpoint, images, layers  # noqa: E402  (modules the CLI reaches through)

__all__ = [
    "Adam", "AdamW", "Backend", "BackendUnavailable", "CheckpointError", "ConfigError",
    "Corruption", "DAE", "DataError", "Dataset", "SGD", "TinyDAEError", "TrainState",
    "TrainingDiverged", "TrainingInterrupted", "evaluate_reconstruction", "fit", "gaussian",
    "get_backend", "glyphs", "load_checkpoint", "load_dataset", "load_model", "make_optimizer",
    "masking", "none", "restore_model", "salt_pepper", "save_checkpoint",
]
