"""The denoising autoencoder: a stack of Linear layers, all parameters in one flat buffer.

Legend: B batch, D input width (pixels), H_k hidden widths.

    encoder  D -> H_1 -> ... -> H_k          (each Linear + activation)
    decoder  H_k -> ... -> H_1 -> D          (mirrored; the last layer gives logits)
    reconstruct(x) = sigmoid(logits(x))

Every parameter is a view into ``model.params`` and every gradient a view into
``model.grads`` (same offsets), so zeroing, the optimizer update and checkpointing are
each one operation over one buffer.  Tied weights: decoder layer j uses the transpose
view of encoder layer k-1-j's W, so there is literally one copy of the weights.
"""

import numpy as np

from tinydae.backend import get_backend
from tinydae.errors import ConfigError, DataError
from tinydae.layers import HIDDEN_ACTIVATIONS, Linear, flat_buffers, init_normal
from tinydae.losses import LOSSES, loss_sum_forward_backward

DTYPES = ("float32", "float64")


def check_config(input_dim, hidden, activation, tied, loss, dtype, seed):
    """Validate a model configuration; returns it normalised as a dict (JSON-safe)."""
    if not isinstance(input_dim, (int, np.integer)) or input_dim < 1:
        raise ConfigError(f"input_dim must be a positive integer, got {input_dim!r}")
    if isinstance(hidden, (int, np.integer)):
        hidden = (hidden,)
    hidden = tuple(hidden)
    if not hidden or not all(isinstance(h, (int, np.integer)) and h >= 1 for h in hidden):
        raise ConfigError(f"hidden must be one or more positive integers (e.g. 1000,500), got {hidden!r}")
    if activation not in HIDDEN_ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; choose one of {', '.join(HIDDEN_ACTIVATIONS)}")
    if loss not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    try:
        dtype = np.dtype(dtype).name
    except TypeError:
        dtype = str(dtype)
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be float32 or float64, got {dtype!r}")
    if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise ConfigError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return dict(input_dim=int(input_dim), hidden=[int(h) for h in hidden], activation=activation,
                tied=bool(tied), loss=loss, dtype=dtype, seed=int(seed))


def param_layout(config):
    """[(name, shape), ...] in flat-buffer order; tied decoders own only their biases."""
    dims = [config["input_dim"], *config["hidden"]]
    k = len(config["hidden"])
    layout = []
    for i in range(k):
        layout += [(f"enc{i}.W", (dims[i], dims[i + 1])), (f"enc{i}.b", (dims[i + 1],))]
    for j in range(k):
        fan_in, fan_out = dims[k - j], dims[k - 1 - j]
        if not config["tied"]:
            layout.append((f"dec{j}.W", (fan_in, fan_out)))
        layout.append((f"dec{j}.b", (fan_out,)))
    return layout


class DAE:
    """Denoising autoencoder trained with sigmoid-BCE (or MSE on the sigmoid output).

    >>> m = DAE(784, hidden=(100,), seed=1)
    >>> m
    DAE(784-100-784, relu, tied=False, bce, float32, cpu)
    >>> m.reconstruct(np.full((2, 784), 0.5, np.float32)).shape
    (2, 784)
    """

    def __init__(self, input_dim, hidden=(1000,), activation="relu", tied=False, loss="bce",
                 dtype="float32", seed=0, backend="cpu", params=None):
        """params: (num_params,) values to start from (a checkpoint's); None draws them
        (init_params).  Given, no initial weights are drawn: restoring a model then needs no
        second copy of them (the NumPy runtime's peak memory, issue 13)."""
        self.config = check_config(input_dim, hidden, activation, tied, loss, dtype, seed)
        self.backend = get_backend(backend)
        self.dtype = np.dtype(self.config["dtype"])
        xp = self.backend.xp
        self.layout = param_layout(self.config)
        self.params, self.grads, self.named_params, self.named_grads = flat_buffers(xp, self.layout, self.dtype)
        # what backward accumulates into (the bias kernels add; every dW is written)
        self._bias_grads = [g for name, g in self.named_grads.items() if name.endswith(".b")]
        self.layers = self._build_layers()
        self.corruption = None  # the training corruption, once fit() or a checkpoint sets it
        if params is None:
            self.init_params()
        else:
            with np.errstate(over="ignore", invalid="ignore"):  # reported below, as a DataError
                params = self.backend.as_array(params, "params", dtype=self.dtype)
                if params.shape != self.params.shape:
                    raise ConfigError(f"params must have shape {self.params.shape} for this "
                                      f"configuration, got {params.shape}")
                self.params[...] = params  # cast to the model's dtype in place
            if not bool(self.backend.xp.isfinite(self.params).all()):  # incl. float64 beyond float32's range
                raise DataError("params hold NaN or infinite values (in the model's dtype, "
                                f"{self.dtype.name})")

    # -- structure ---------------------------------------------------------------------

    def _build_layers(self):
        k = len(self.config["hidden"])
        P, G = self.named_params, self.named_grads
        act = self.config["activation"]
        # Backward runs the decoder first, so each weight's first use there writes its dW
        # (write_dW) and only a tied encoder, the second use, adds: zero_grad then clears
        # just the biases, which the bias kernels accumulate.
        tied = self.config["tied"]
        layers = [Linear(P[f"enc{i}.W"], P[f"enc{i}.b"], G[f"enc{i}.W"], G[f"enc{i}.b"], act, self.backend,
                         write_dW=not tied)
                  for i in range(k)]
        for j in range(k):
            if tied:
                W, dW = P[f"enc{k - 1 - j}.W"].T, G[f"enc{k - 1 - j}.W"].T
            else:
                W, dW = P[f"dec{j}.W"], G[f"dec{j}.W"]
            layers.append(Linear(W, P[f"dec{j}.b"], dW, G[f"dec{j}.b"],
                                 "identity" if j == k - 1 else act, self.backend, write_dW=True))
        return layers

    def init_params(self):
        """He-normal weights for (leaky) relu, Glorot-normal otherwise (and for the logits
        layer); zero biases.  Drawn from Philox stream STREAM_INIT, step = layer index."""
        logits_W = f"dec{len(self.config['hidden']) - 1}.W"
        relu = self.config["activation"] in ("relu", "leaky_relu")
        init_normal(self.named_params, self.layout, self.config["seed"],
                    he=lambda name: relu and name != logits_W,
                    to_device=lambda w: self.backend.to_device(w.astype(self.dtype)))

    @property
    def input_dim(self):
        return self.config["input_dim"]

    @property
    def num_params(self):
        return int(self.params.size)

    def __repr__(self):
        c = self.config
        h = c["hidden"]
        widths = "-".join(str(w) for w in [c["input_dim"], *h, *h[-2::-1], c["input_dim"]])
        return (f"DAE({widths}, {c['activation']}, tied={c['tied']}, {c['loss']}, "
                f"{c['dtype']}, {self.backend.name})")

    # -- forward -----------------------------------------------------------------------

    def as_input(self, x):
        """Check and convert a batch: (B, D) in the model's dtype on the model's device.
        x: any array (NumPy, PyTorch, CuPy ..., see Backend.as_array), shared without a copy
        when it already has the model's dtype, device and a C-contiguous layout."""
        # CPU: a view, so the shape is checked before any dtype copy; GPU: host memory is cast
        # on the host and uploaded once, device arrays are shared
        x = self.backend.as_array(x, dtype=self.dtype)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise DataError(f"expected a batch of shape (B, {self.input_dim}), got {x.shape}")
        return self.backend.to_device(x, dtype=self.dtype)

    def _checked(self, x, what, unit=False):
        """as_input, then the inference policy (check=True): values must be finite, and for a
        target in [0, 1] (what BCE is defined on; the CLI and fit() refuse the rest too).  On a
        GPU the check reads one flag back (a host sync): pass check=False where the data is
        known to be good, as fit() and chain() do after checking it once."""
        x = self.as_input(x)
        xp = self.backend.xp
        if not bool(xp.isfinite(x).all()):
            raise DataError(f"{what} holds NaN or infinite values; remove or replace them (check=False skips "
                            f"this check)")
        if unit and x.size and (float(x.min()) < 0 or float(x.max()) > 1):
            raise DataError(f"{what} lies in [{float(x.min()):g}, {float(x.max()):g}], outside [0, 1]: the "
                            f"{self.config['loss']} loss compares it with a sigmoid (rescale it, e.g. x / 255)")
        return x

    def _forward(self, x, layers):
        """Training forward: the output and each layer's cache for backward."""
        caches = []
        for layer in layers:
            x, cache = layer.forward(x)
            caches.append(cache)
        return x, caches

    def _infer(self, x, layers):
        """Inference forward: keeps nothing, so each activation can be freed at once."""
        for layer in layers:
            x = layer.forward(x)[0]
        return x

    def encode(self, x, check=True):
        """x: (B, D) -> code: (B, H_k).  check: refuse non-finite x (see _checked)."""
        k = len(self.config["hidden"])
        return self._infer(self._checked(x, "the batch") if check else self.as_input(x), self.layers[:k])

    def logits(self, x, check=True):
        """x: (B, D) -> logits: (B, D).  check: refuse non-finite x."""
        return self._infer(self._checked(x, "the batch") if check else self.as_input(x), self.layers)

    def _last_product(self, x):
        """x: (B, D) -> (x through every layer but the last) @ W_last: (B, D), before the bias."""
        return self.backend.xp.matmul(self._infer(self.as_input(x), self.layers[:-1]), self.layers[-1].W)

    def reconstruct(self, x, check=True):
        """x: (B, D) -> r(x) = sigmoid(logits(x)): (B, D), values in [0, 1]
        (the sigmoid is fused into the last layer's bias kernel).  check: refuse non-finite x
        (a NaN would come out as NaN); x may lie outside [0, 1] (a corrupted input does)."""
        y = self._last_product(self._checked(x, "the batch") if check else x)
        self.backend.kernels.bias_act_forward(y, y, self.layers[-1].b, "sigmoid")
        return y

    def chain_step(self, x_in, prev, change):
        """One step of a sampling chain: r(x_in), and how far each chain moved, in one pass.

        x_in: (B, D) the corrupted state; prev: (B, D) the state before this step (on the
        model's device); change: (B,) float64 on the model's device, receives
        sum_j |r(x_in)_ij - prev_ij| for each chain i.
        -> r(x_in): (B, D)
        """
        y = self._last_product(x_in)
        self.backend.kernels.bias_sigmoid_change(y, change, self.layers[-1].b, prev)
        return y

    # -- backward ----------------------------------------------------------------------

    def zero_grad(self):
        self.grads[...] = 0

    def _clear_accumulated(self):
        """Zero what backward accumulates into, before a backward pass.  On the CPU that is
        the biases only (every dW is written by its first GEMM, see _build_layers; zeroing the
        whole 3.6M-value buffer cost ~1 ms of a 12 ms batch-64 step); on a GPU one memset of
        the whole buffer is cheaper than a launch per bias."""
        if self.backend.xp is np:
            for g in self._bias_grads:
                g[...] = 0
        else:
            self.grads[...] = 0

    def loss_and_grad(self, x_in, target, check=True):
        """Loss of reconstructing `target` from `x_in`, and its gradient in ``self.grads``.

        x_in: (B, D) the (corrupted) input; target: (B, D) the clean data
        check: refuse non-finite x_in, and a target that is not finite or not in [0, 1]
        -> loss in nats per example (bce) or squared error per example (mse);
           ``self.grads`` holds d(loss)/d(params) on return.
        One host read (on a GPU, a wait for the whole pass); fit() uses loss_sum_and_grad.
        """
        if check:
            x_in, target = self._checked(x_in, "x_in"), self._checked(target, "the target", unit=True)
        target = self.as_input(target)  # for B below; converting twice copies nothing
        if self.as_input(x_in).shape != target.shape:
            raise DataError(f"x_in and the target must have one shape, got {tuple(self.as_input(x_in).shape)} "
                            f"and {tuple(target.shape)}")
        total = self.backend.xp.empty(1, np.float64)
        self.loss_sum_and_grad(x_in, target, total)
        return float(self.backend.to_host(total)[0]) / target.shape[0]  # checked: (B, D)

    def loss_sum_and_grad(self, x_in, target, total):
        """loss_and_grad without reading anything back: on a GPU the whole pass is only queued.

        x_in, target: (B, D) as in loss_and_grad; total: (1,) float64 on the model's device.
        total[0] receives the loss summed over the batch (divide by B for loss_and_grad's
        figure) and ``self.grads`` the gradient of the per-example mean, once the queued work
        has run.  Pass `total` to the optimizer's step(guard=total) to skip the update on the
        device if the loss is not finite.
        """
        x_in, target = self.as_input(x_in), self.as_input(target)
        self._clear_accumulated()
        logits, caches = self._forward(x_in, self.layers)
        dy = self.backend.xp.empty_like(logits)
        loss_sum_forward_backward(self.backend, self.config["loss"], dy, logits, target, total)
        for i in reversed(range(len(self.layers))):
            dy = self.layers[i].backward(dy, caches[i], need_dx=i > 0)  # no dx for the data
