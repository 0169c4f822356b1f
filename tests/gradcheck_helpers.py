"""Central differences for tests (float64)."""
import numpy as np

H = 3e-5


def numeric_grad(f, x, h=H):
    """d f / d x for scalar f() reading x (perturbed in place)."""
    g = np.zeros(x.shape)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        fp = f()
        x[i] = old - h
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


def rel_error(a, b, floor=1e-300):
    """max |a - b| / max(|a|, |b|, floor).  floor: where the gradients are all tiny (a saturated
    tanh), central differences still err by ~1e-11 in absolute terms (rounding of the loss over
    the step), which would read as a large relative error."""
    scale = max(np.abs(a).max(initial=0), np.abs(b).max(initial=0), floor)
    return np.abs(a - b).max(initial=0) / scale
