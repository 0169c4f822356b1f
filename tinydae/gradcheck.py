"""Central finite differences in float64: the check that backprop is right.

For each parameter tensor: max relative error
    max_i |g_i - n_i| / max(max_i |g_i|, max_i |n_i|, 1e-2 * G)
between the analytic gradient g (loss_and_grad) and the numerical one
n_i = (L(p_i + h) - L(p_i - h)) / 2h.  h = 3e-5 balances float64 roundoff (~1e-16 L / h)
against truncation (~h^2 L'''): measured worst case 4e-8 on small random models.
G is the largest gradient anywhere in the model: a tensor whose gradient is tiny next to
the rest (three leaky-relu layers all on their 0.01 slope give 1e-6 of it) cannot be
resolved to 1e-6 *of itself* by float64 differences, so it is measured against 1e-2 G
(1e-3 G still failed about once in 3,000 random models, on roundoff alone); a wrong
gradient still shows up as an error of order 1.

Limitation: roundoff in the numerical gradient is ~1e-16 |L| / h.  Where every gradient is far
below the loss (a saturated sigmoid: gradients of 1e-8 against a loss of 0.24), the check
reports errors of 1e-4 and more although backprop is right; check a less saturated model.
"""
import numpy as np

from tinydae.errors import ConfigError


def relative_error(analytic, numeric, floor=1e-300):
    scale = max(np.abs(analytic).max(initial=0.0), np.abs(numeric).max(initial=0.0), floor)
    return float(np.abs(analytic - numeric).max(initial=0.0) / scale)


def numeric_grad(f, p, h=3e-5):
    """f: () -> float evaluated with p perturbed in place; p: (N,) float64 -> (N,) float64"""
    g = np.empty(p.size)
    flat = p.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g.reshape(p.shape)


def random_model(input_dim=7, hidden=(5, 3), activation="relu", tied=False, loss="bce", seed=0, arch=None,
                 input_shape=None):
    """A small float64 DAE with random, nonzero biases (arch=: any spec, hidden then unused).

    Zero biases (the training init) put a pre-activation exactly on ReLU's kink whenever
    every unit of the layer below is off; finite differences are meaningless there.
    """
    from tinydae.model import DAE

    model = DAE(input_dim, None if arch else hidden, activation, tied, loss, "float64", seed, arch=arch,
                input_shape=input_shape)
    rng = np.random.default_rng([seed, 0xB1A5])
    for name, view in model.named_params.items():
        if name.endswith(".b"):
            view[...] = rng.normal(0.0, 0.5, view.shape)
    return model


def check_model(model, x_in, target, h=3e-5, sigma=None):
    """-> {param name: max relative error} for a float64 model on one batch.  sigma: the rows'
    noise levels for a noise-conditional model (default: log-uniform in [0.01, 1), seeded)."""
    if model.dtype != np.float64:
        raise ConfigError("gradcheck needs a float64 model (DAE(..., dtype='float64'))")
    if getattr(model, "noise_conditional", False) and sigma is None:
        sigma = 0.01 * 100 ** np.random.default_rng([len(x_in), 0x51C]).random(len(x_in))
    kw = {"sigma": sigma} if sigma is not None else {}
    model.loss_and_grad(x_in, target, **kw)
    analytic = model.backend.to_host(model.grads).copy()
    params = model.params

    def loss():
        return model.loss_and_grad(x_in, target, **kw)

    numeric = numeric_grad(loss, params, h)
    model.loss_and_grad(x_in, target, **kw)  # leave grads consistent with params
    floor = 1e-2 * max(np.abs(analytic).max(), 1e-300)
    errors = {}
    offset = 0
    for name, shape in model.layout:
        size = int(np.prod(shape))
        errors[name] = relative_error(analytic[offset:offset + size], numeric[offset:offset + size], floor)
        offset += size
    return errors
