"""The denoising autoencoder: encoder and decoder layers built from an architecture spec
(tinydae/arch.py: "mlp:1000,500", "conv:32,64", ...), all parameters in one flat buffer.

Legend: B batch, D input width (pixels, H*W*C for images), H_k hidden widths.

    mlp:H_1,..,H_k   encoder  D -> H_1 -> ... -> H_k   (each Linear + activation)
                     decoder  H_k -> ... -> H_1 -> D   (mirrored; the last layer gives logits)
    conv:F_1,..      Conv2d layers down, ConvTranspose2d layers back up (channels last)
    unet:F_1,..      the same, with skip connections (tinydae/unet.py)
    reconstruct(x) = sigmoid(logits(x))
    unet:F_1,..,sigma  noise-conditional: reconstruct(x, sigma), the noise level of x entering
                     as one more input channel, noise_channel(sigma) in every pixel

The model reads and writes rows (B, D); a conv model reshapes them to images (B, H, W, C) and
back, which costs nothing (C-contiguous, channels last).  Every parameter is a view into
``model.params`` and every gradient a view into ``model.grads`` (same offsets; see
layers.Sequential), so zeroing, the optimizer update and checkpointing are each one operation
over one buffer.  Tied weights: decoder layer j uses encoder layer k-1-j's W (transposed for a
dense layer), so there is literally one copy of the weights.
"""


import numpy as np

from tinydae import arch as arch_spec
from tinydae.backend import get_backend
from tinydae.errors import ConfigError, DataError
from tinydae.layers import HIDDEN_ACTIVATIONS, Sequential, plan, stack_cost
from tinydae.losses import LOSSES, loss_sum_forward_backward

DTYPES = ("float32", "float64")
DEFAULT_HIDDEN = (1000,)


def noise_channel(sigma):
    """The value a noise-conditional network reads for noise level sigma: 1 + log10(sigma) / 2,
    so the ladder 0.01 .. 1 maps to 0 .. 1 (pixels' own range; log because the levels are
    log-uniform), and levels outside it extend the line.  sigma: > 0, scalar or array."""
    return 1.0 + np.log10(sigma) / 2.0


def check_config(input_dim, hidden=None, activation="relu", tied=False, loss="bce", dtype="float32", seed=0,
                 arch=None, input_shape=None):
    """Validate a model configuration; returns it normalised as a dict (JSON-safe):
    input_dim, input_shape ([D] or [H, W, C]), arch (the canonical spec), activation, tied,
    loss, dtype, seed.  hidden=(1000, 500) is shorthand for arch="mlp:1000,500" (and how
    checkpoints before format 4 store it)."""
    arch, input_shape = arch_spec.resolve(input_dim, hidden, arch, input_shape, DEFAULT_HIDDEN)
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
    config = dict(input_dim=int(input_dim), input_shape=list(input_shape), arch=arch, activation=activation,
                  tied=bool(tied), loss=loss, dtype=dtype, seed=int(seed))
    model_layers(config)  # a spec that does not fit the images is refused here, before any work
    return config


def model_layers(config):
    """The model's layers for a normalised config: [(name, layer), ...] (not yet bound); a U-Net
    (not a stack): its unet.unet_entries."""
    filters = arch_spec.unet_filters(config["arch"])
    if filters is not None:
        from tinydae.unet import unet_entries

        return [(n, layer) for n, layer, _ in unet_entries(filters, tuple(config["input_shape"]), config["activation"],
                                                            config["tied"], arch_spec.noise_conditional(config["arch"]))]
    return arch_spec.dae_layers(config["arch"], tuple(config["input_shape"]), config["activation"], config["tied"])


def build_net(config, backend, dtype):
    """The bound network of a normalised config: a layers.Sequential, or a unet.UNet."""
    filters = arch_spec.unet_filters(config["arch"])
    if filters is not None:
        from tinydae.unet import UNet

        return UNet(filters, tuple(config["input_shape"]), config["activation"], config["tied"], backend, dtype,
                    arch_spec.noise_conditional(config["arch"]))
    return Sequential(model_layers(config), net_in_shape(config), backend, dtype)


def net_in_shape(config):
    """What a Sequential network reads per example: (D,), or (D + 1,) for a noise-conditional mlp."""
    return (config["input_dim"] + int(arch_spec.noise_conditional(config["arch"])),)


def describe(config):
    """"784-1000-784" for an mlp, "conv:32,64 on 28x28x1" for the rest."""
    h = arch_spec.mlp_widths(config["arch"])
    if h is not None:
        told = " told sigma" if arch_spec.noise_conditional(config["arch"]) else ""
        return "-".join(str(w) for w in [config["input_dim"], *h, *h[-2::-1], config["input_dim"]]) + told
    return f"{config['arch']} on {'x'.join(map(str, config['input_shape']))}"


def normalised(config):
    """A config as check_config returns it, from a normalised one (returned as is) or a partial
    one (input_dim and hidden or arch, maybe dtype ...; the rest defaults), e.g. the estimates'."""
    if "arch" in config and "input_shape" in config:
        return config
    keys = ("hidden", "activation", "tied", "loss", "dtype", "seed", "arch", "input_shape")
    return check_config(config["input_dim"], **{k: config[k] for k in keys if k in config})


def model_cost(config):
    """(forward FLOPs, values a training step holds) per example (layers.Sequential.cost), from
    a config, normalised or partial (see normalised)."""
    config = normalised(config)
    filters = arch_spec.unet_filters(config["arch"])
    if filters is not None:
        from tinydae.unet import unet_cost

        return unet_cost(filters, tuple(config["input_shape"]), config["activation"], config["tied"],
                         arch_spec.noise_conditional(config["arch"]))
    return stack_cost(model_layers(config), net_in_shape(config))


def param_layout(config):
    """[(name, shape), ...] in flat-buffer order; tied decoders own only their biases."""
    filters = arch_spec.unet_filters(config["arch"])
    if filters is not None:
        from tinydae.unet import unet_layout

        return unet_layout(filters, tuple(config["input_shape"]), config["activation"], config["tied"],
                           arch_spec.noise_conditional(config["arch"]))
    return plan(model_layers(config), net_in_shape(config))[1]


class DAE:
    """Denoising autoencoder trained with sigmoid-BCE (or MSE on the sigmoid output).

    >>> m = DAE(784, hidden=(100,), seed=1)
    >>> m
    DAE(784-100-784, relu, tied=False, bce, float32, cpu)
    >>> m.reconstruct(np.full((2, 784), 0.5, np.float32)).shape
    (2, 784)
    >>> DAE(784, arch="conv:8,16", seed=1)
    DAE(conv:8,16 on 28x28x1, relu, tied=False, bce, float32, cpu)
    """

    def __init__(self, input_dim, hidden=None, activation="relu", tied=False, loss="bce",
                 dtype="float32", seed=0, backend="cpu", params=None, arch=None, input_shape=None):
        """hidden=(1000,) is shorthand for arch="mlp:1000" (the default); arch: a spec of
        tinydae/arch.py; input_shape: (H, W) or (H, W, C) of an image (a conv model of a square
        D guesses (sqrt D, sqrt D, 1)).  params: (num_params,) values to start from (a
        checkpoint's); None draws them (init_params).  Given, no initial weights are drawn:
        restoring a model then needs no second copy of them (the NumPy runtime's peak memory,
        issue 13)."""
        self.config = check_config(input_dim, hidden, activation, tied, loss, dtype, seed, arch, input_shape)
        self.backend = get_backend(backend)
        self.dtype = np.dtype(self.config["dtype"])
        self.net = build_net(self.config, self.backend, self.dtype)
        self.layers, self.layout = self.net.layers, self.net.layout
        self.params, self.grads = self.net.params, self.net.grads
        self.named_params, self.named_grads = self.net.named_params, self.net.named_grads
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

    def init_params(self):
        """Each layer's declared rule (layers.Param): He-normal weights before a (leaky) relu,
        Glorot-normal otherwise (and for the logits layer); zero biases.  Drawn from Philox
        stream STREAM_INIT, step = the parameter's index in the layout."""
        self.net.init_params(self.config["seed"], lambda w: self.backend.to_device(w.astype(self.dtype)))

    @property
    def input_dim(self):
        return self.config["input_dim"]

    @property
    def num_params(self):
        return int(self.params.size)

    @property
    def hidden(self):
        """The hidden widths of an mlp model (None for other kinds)."""
        return arch_spec.mlp_widths(self.config["arch"])

    @property
    def input_shape(self):
        """One example's shape: (D,) or (H, W, C)."""
        return tuple(self.config["input_shape"])

    @property
    def noise_conditional(self):
        """True when the network reads the noise level of its input (arch "unet:...,sigma"): every
        forward call then takes sigma=."""
        return arch_spec.noise_conditional(self.config["arch"])

    def __repr__(self):
        c = self.config
        return (f"DAE({describe(c)}, {c['activation']}, tied={c['tied']}, {c['loss']}, "
                f"{c['dtype']}, {self.backend.name})")

    def check_image_shape(self, image_shape, what):
        """Refuse images of another shape with as many values (arch.check_image_shape)."""
        arch_spec.check_image_shape(self.config, image_shape, what)

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

    def net_input(self, x, sigma=None):
        """What the network reads for a batch x: (B, D) on the model's device: x itself, or for a
        noise-conditional model x with the noise-level channel: (B, H*W*(C+1)), channels last.
        sigma: the noise level of x, a number or one per row (B,), > 0; a noise-blind model
        ignores it, a noise-conditional one needs it."""
        if not self.noise_conditional:
            return x
        if sigma is None:
            raise ConfigError(f"{self.config['arch']} is noise-conditional: pass the noise level of the input, "
                              f"sigma= (a number, or one per row)")
        xp = self.backend.xp
        if xp is not np and isinstance(sigma, xp.ndarray):  # levels drawn on the device (fit): no host sync
            level = sigma
        else:
            if isinstance(sigma, (bool, str, np.bool_)):
                raise DataError(f"sigma must be a number or one per row, got {sigma!r}")
            level = np.asarray(sigma, np.float64)
            if level.ndim > 1 or (level.ndim == 1 and level.shape != (len(x),)):
                raise DataError(f"sigma must be a number or one per row ({len(x)},), got shape {level.shape}")
            if not (np.isfinite(level).all() and (level > 0).all()):
                raise DataError("sigma must be finite and > 0")
            if level.ndim == 1:  # one per row: uploaded once; a single level is written as a scalar
                level = self.backend.to_device(level)
        if arch_spec.parse_arch(self.config["arch"])[0] == "mlp":  # an mlp (of rows or images): one more input
            out = xp.empty((len(x), self.input_dim + 1), self.dtype)
            out[:, :-1] = x
            out[:, -1] = self.dtype.type(noise_channel(level)) if np.ndim(level) == 0 else \
                noise_channel(level).astype(self.dtype)
            return out
        H, W, C = self.input_shape
        out = xp.empty((len(x), H, W, C + 1), self.dtype)
        out[..., :C] = x.reshape(len(x), H, W, C)
        out[..., C] = self.dtype.type(noise_channel(level)) if np.ndim(level) == 0 else \
            noise_channel(level).astype(self.dtype)[:, None, None]
        return out.reshape(len(x), H * W * (C + 1))

    def encode(self, x, check=True, sigma=None):
        """x: (B, D) -> code: (B, code size), the encoder's output as rows (an image code
        (Ho, Wo, F) flattened channels last).  check: refuse non-finite x (see _checked).
        sigma: the noise level of x (a noise-conditional model needs it; see net_input)."""
        return self.net.code(self.net_input(self._checked(x, "the batch") if check else self.as_input(x), sigma))

    def logits(self, x, check=True, sigma=None):
        """x: (B, D) -> logits: (B, D).  check: refuse non-finite x.  sigma: see net_input."""
        return self.net.infer(self.net_input(self._checked(x, "the batch") if check else self.as_input(x), sigma))

    def reconstruct(self, x, check=True, sigma=None):
        """x: (B, D) -> r(x) = sigmoid(logits(x)): (B, D), values in [0, 1]
        (the sigmoid is fused into the last layer's bias kernel).  check: refuse non-finite x
        (a NaN would come out as NaN); x may lie outside [0, 1] (a corrupted input does).
        sigma: the noise level of x, for a noise-conditional model (see net_input)."""
        # the logits before the last bias: one fused kernel adds it and applies the sigmoid
        x = self._checked(x, "the batch") if check else self.as_input(x)
        y, bias = self.net.logits_parts(self.net_input(x, sigma))
        self.backend.kernels.bias_act_forward(y, y, bias, "sigmoid")
        return y

    def chain_step(self, x_in, prev, change, sigma=None):
        """One step of a sampling chain: r(x_in), and how far each chain moved, in one pass.

        x_in: (B, D) the corrupted state; prev: (B, D) the state before this step (on the
        model's device); change: (B,) float64 on the model's device, receives
        sum_j |r(x_in)_ij - prev_ij| for each chain i; sigma: see net_input.
        -> r(x_in): (B, D)
        """
        y, bias = self.net.logits_parts(self.net_input(self.as_input(x_in), sigma))
        self.backend.kernels.bias_sigmoid_change(y, change, bias, prev)
        return y

    # -- backward ----------------------------------------------------------------------

    def zero_grad(self):
        self.grads[...] = 0

    def loss_and_grad(self, x_in, target, check=True, sigma=None):
        """Loss of reconstructing `target` from `x_in`, and its gradient in ``self.grads``.

        x_in: (B, D) the (corrupted) input; target: (B, D) the clean data; sigma: the noise level
        of x_in, for a noise-conditional model (see net_input)
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
        self.loss_sum_and_grad(x_in, target, total, sigma)
        return float(self.backend.to_host(total)[0]) / target.shape[0]  # checked: (B, D)

    def loss_sum_and_grad(self, x_in, target, total, sigma=None, mean_over=None, done=None):
        """loss_and_grad without reading anything back: on a GPU the whole pass is only queued.

        x_in, target: (B, D) as in loss_and_grad; total: (1,) float64 on the model's device.
        total[0] receives the loss summed over the batch (divide by B for loss_and_grad's
        figure) and ``self.grads`` the gradient of the per-example mean, once the queued work
        has run.  Pass `total` to the optimizer's step(guard=total) to skip the update on the
        device if the loss is not finite.
        mean_over: the number of rows the gradient is a mean over (default B): a rank of a
        data-parallel run holds part of a global batch, and sums with the others (distributed.py)
        done: called with each layer's name once its backward is queued (the overlapped
        all-reduce of distributed.GradientBuckets starts the buckets that became final)
        """
        x_in, target = self.as_input(x_in), self.as_input(target)
        self.net.clear_accumulated()
        logits, caches = self.net.forward(self.net_input(x_in, sigma))
        dy = self.backend.xp.empty_like(logits)
        loss_sum_forward_backward(self.backend, self.config["loss"], dy, logits, target, total, mean_over)
        self.net.backward(dy, caches, done)
