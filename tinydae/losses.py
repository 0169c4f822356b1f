"""Losses on logits, via the backend's fused kernels.

Legend: B batch, D pixels.  Losses are reported in nats per example (sum over pixels,
mean over the batch); divide by D for nats per pixel.
"""
import numpy as np

LOSSES = ("bce", "mse")
KERNELS = {"bce": "sigmoid_bce_forward_backward", "mse": "sigmoid_mse_forward_backward"}


def loss_sum_forward_backward(backend, loss, dlogits, logits, targets, total, mean_over=None):
    """The training step's loss: writes dlogits = d(mean over the batch of per-example loss)/dlogits
    and total[0] = the loss summed over the batch, and reads nothing back (on a GPU both are
    only queued; fit reads total once per step, after the optimizer update).

    dlogits, logits, targets: (B, D); total: (1,) float64 on the backend
    mean_over: the rows the mean is over (default B; a data-parallel rank's part of a batch
    divides by the global batch size)
    """
    if loss not in KERNELS:
        raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
    getattr(backend.kernels, KERNELS[loss])(dlogits, logits, targets, 1.0 / (mean_over or logits.shape[0]), total=total)


def loss_forward_backward(backend, loss, dlogits, logits, targets):
    """Writes dlogits = d(mean over batch of per-example loss)/dlogits and returns that loss.

    dlogits, logits, targets: (B, D) -> float, nats (bce) or squared error (mse) per example
    (one host read)
    """
    total = backend.xp.empty(1, np.float64)
    loss_sum_forward_backward(backend, loss, dlogits, logits, targets, total)
    return float(backend.to_host(total)[0]) / logits.shape[0]


def bce(backend, logits, targets):
    """Binary cross-entropy in nats per example (no gradient kept).

    logits, targets: (B, D) -> float
    """
    scratch = backend.xp.empty_like(logits)
    return loss_forward_backward(backend, "bce", scratch, logits, targets)
