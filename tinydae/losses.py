"""Losses on logits, via the backend's fused kernels.

Legend: B batch, D pixels.  Losses are reported in nats per example (sum over pixels,
mean over the batch); divide by D for nats per pixel.
"""
LOSSES = ("bce", "mse")


def loss_forward_backward(backend, loss, dlogits, logits, targets):
    """Writes dlogits = d(mean over batch of per-example loss)/dlogits and returns that loss.

    dlogits, logits, targets: (B, D) -> float, nats (bce) or squared error (mse) per example
    """
    B = logits.shape[0]
    if loss == "bce":
        total = backend.kernels.sigmoid_bce_forward_backward(dlogits, logits, targets, 1.0 / B)
    elif loss == "mse":
        total = backend.kernels.sigmoid_mse_forward_backward(dlogits, logits, targets, 1.0 / B)
    else:
        raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
    return total / B


def bce(backend, logits, targets):
    """Binary cross-entropy in nats per example (no gradient kept).

    logits, targets: (B, D) -> float
    """
    scratch = backend.xp.empty_like(logits)
    return loss_forward_backward(backend, "bce", scratch, logits, targets)
