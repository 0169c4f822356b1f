"""A small U-Net from protocol layers, wired by hand (arch "unet:16,32"): an encoder-decoder whose
decoder also sees each encoder level's output (a skip connection), so fine detail need not pass
through the bottleneck.  The DAE builds it from the spec as it builds a Sequential; both offer
the same few methods (forward, infer, backward, logits_parts, code, ...).

Legend: F_i the filters of level i (the spec's entries), H_i x W_i its image size.

    x (H, W, C)
    enc_i:  Conv2d(F_i, 4x4, stride 2, pad 1)           (H_i, W_i, F_i), i = 0 .. k-1
    up_i:   ConvTranspose2d(F_(i-1), 4x4, stride 2)     back to (H_(i-1), W_(i-1)), i = k-1 .. 1
    cat:    [up_i's output, enc_(i-1)'s output]         channels concatenated: 2 F_(i-1)
    mix_i:  Conv2d(F_(i-1), 3x3, stride 1, pad 1)       (H_(i-1), W_(i-1), F_(i-1))
    dec:    ConvTranspose2d(C, 4x4, stride 2) -> (H, W, C) logits (identity)

Noise-conditional ("unet:16,32,sigma"): the input has one more channel, the noise level of the
image (model.noise_channel(sigma), the same in every pixel), so x is (H, W, C + 1) and only the
logits are (H, W, C).  A channel rather than a per-channel bias from an embedding: it needs no
new layer, the first convolution learns its own use of it at every pixel, and ONNX / the
NumPy runtime see a plain input; on MNIST-sized images a level map as input is enough for one
network to denoise across a ladder.  It cannot be tied: dec would have to emit C + 1 channels.

Every hidden layer uses the model's activation.  Tied: up_i and dec read enc_i's and enc0's
weights (the adjoint of each convolution); the mix layers have their own.  The concatenation is
the one op here that is not a layer: forward copies both inputs side by side (channels last),
backward hands each its slice of the gradient; no general graph engine.
"""
import math

from tinydae.errors import ConfigError
from tinydae.layers import Conv2d, ConvTranspose2d, FlatNet, Reshape, as_rows, declared, entries_cost, flat_buffers


def unet_entries(filters, input_shape, activation, tied, sigma=False):
    """-> [(name, layer, its input shape), ...] in forward order (not bound).  input_shape: the
    image's (H, W, C); sigma: one more input channel, the noise level (not the output's)."""
    H, W, C = input_shape
    if sigma and tied:
        raise ConfigError("a noise-conditional U-Net (unet:...,sigma) cannot be tied: its first convolution "
                          "reads the noise channel, which the last layer does not write")
    Cin = C + int(bool(sigma))
    entries, shape, outs = [("in", Reshape((H, W, Cin)), (H * W * Cin,))], (H, W, Cin), []
    for i, F in enumerate(filters):
        layer = Conv2d(F, 4, 2, 1, activation)
        try:
            out = layer.output_shape(shape)
        except ValueError as err:
            raise ConfigError(f"unet:{','.join(map(str, filters))}{',sigma' * bool(sigma)} on {H}x{W}x{C} images: "
                              f"level {i + 1} ({err}); "
                              f"use fewer levels") from None
        entries.append((f"enc{i}", layer, shape))
        outs.append(out)
        shape = out
    for i in range(len(filters) - 1, 0, -1):
        skip = outs[i - 1]
        up = ConvTranspose2d(skip[2], 4, 2, 1, skip[:2], activation, tie=f"enc{i}" if tied else None)
        entries.append((f"up{i}", up, shape))
        mix = Conv2d(skip[2], 3, 1, 1, activation)
        entries.append((f"mix{i}", mix, skip[:2] + (2 * skip[2],)))
        shape = skip
    entries.append(("dec", ConvTranspose2d(C, 4, 2, 1, (H, W), "identity", tie="enc0" if tied else None), shape))
    entries.append(("out", Reshape((H * W * C,)), (H, W, C)))
    return entries


class UNet(FlatNet):
    """The bound U-Net: parameters and gradients views into one flat buffer each (as Sequential)."""

    def __init__(self, filters, input_shape, activation, tied, backend, dtype, sigma=False):
        self.entries = unet_entries(filters, input_shape, activation, tied, sigma)
        self.k = len(filters)
        self.names = [name for name, _, _ in self.entries]
        self.layers = [layer for _, layer, _ in self.entries]
        self.shapes = [shape for _, _, shape in self.entries] + [(math.prod(input_shape),)]
        self.by_name = {name: layer for name, layer, _ in self.entries}
        self.layout, self.param_specs = declared(self.entries)
        self.params, self.grads, self.named_params, self.named_grads = flat_buffers(backend.xp, self.layout, dtype)
        self.backend, self.xp = backend, backend.xp
        # backward runs dec, mix1, up1, ..., up_(k-1), enc_(k-1), ..., enc0: a weight's first use
        # there writes its gradient, a later one (a tied encoder) adds
        order = ["dec"] + [n for i in range(1, self.k) for n in (f"mix{i}", f"up{i}")] + \
            [f"enc{i}" for i in reversed(range(self.k))] + ["in", "out"]
        written, shape_of = set(), {name: shape for name, _, shape in self.entries}
        for name in order:
            layer, shape = self.by_name[name], shape_of[name]
            layer.name, layer.in_shape = name, shape
            weight = f"{getattr(layer, 'tie', None) or name}.W"
            layer.bind(self.named_params, self.named_grads, backend, write_dW=weight not in written)
            written.add(weight)
        self.accumulated = [self.named_grads[n] for n, p in self.param_specs.items() if p.kind == "bias"]
        self.first_trained = 1  # enc0: no layer before it has parameters

    def _concat(self, a, b):
        """(B, h, w, Fa), (B, h, w, Fb) -> (B, h, w, Fa + Fb), channels side by side"""
        return self.xp.concatenate([a, b], axis=3)

    def _run(self, x, caches=None, last=True):
        """x rows -> logits rows (last=True), or the input of dec (last=False); caches: a list to
        fill for backward (None: inference)."""
        L = self.by_name

        def step(name, h):
            h, cache = L[name].forward(h)
            if caches is not None:
                caches[name] = cache
            return h

        h = step("in", x)
        skips = []
        for i in range(self.k):
            h = step(f"enc{i}", h)
            skips.append(h)
        for i in range(self.k - 1, 0, -1):
            h = step(f"mix{i}", self._concat(step(f"up{i}", h), skips[i - 1]))
        return step("out", step("dec", h)) if last else h

    def forward(self, x, layers=None):
        """Training forward: (logits rows, caches)."""
        caches = {}
        return self._run(x, caches), caches

    def infer(self, x, layers=None):
        return self._run(x)

    @property
    def backward_order(self):
        """The layers with parameters in the order backward runs them (see Sequential's)."""
        return ["dec"] + [n for i in range(1, self.k) for n in (f"mix{i}", f"up{i}")] + \
            [f"enc{i}" for i in reversed(range(self.k))]

    def backward(self, dy, caches, done=None):
        """done: called with each layer's name once its backward has been queued (or None)."""
        L = self.by_name
        done = done or (lambda name: None)
        dh = L["dec"].backward(L["out"].backward(dy, caches["out"]), caches["dec"])
        done("dec")
        dskips = {}
        for i in range(1, self.k):
            dcat = L[f"mix{i}"].backward(dh, caches[f"mix{i}"])
            done(f"mix{i}")
            F = dcat.shape[3] // 2
            dskips[i - 1] = self.xp.ascontiguousarray(dcat[..., F:])
            dh = L[f"up{i}"].backward(self.xp.ascontiguousarray(dcat[..., :F]), caches[f"up{i}"])
            done(f"up{i}")
        for i in reversed(range(self.k)):
            dh = L[f"enc{i}"].backward(dh, caches[f"enc{i}"], need_dx=i > 0)
            done(f"enc{i}")
            if i > 0:
                dh = dh + dskips[i - 1]  # enc_(i-1)'s output feeds enc_i and, skipped, mix_i

    def logits_parts(self, x):
        """x rows -> (the logits before dec's bias (B, D), that bias as a (D,) row)"""
        dec = self.by_name["dec"]
        return dec.pre_bias(self._run(x, last=False)), dec.bias_row()

    def code(self, x):
        """The bottom level's output, enc_(k-1), as rows (the skips carry the rest)."""
        h = self.by_name["in"].forward(x)[0]
        for i in range(self.k):
            h = self.by_name[f"enc{i}"].forward(h)[0]
        return as_rows(h)

    def cost(self):
        return _cost(self.entries)


def _cost(entries):
    """(forward FLOPs, values a training step holds) per example: the layers', and the
    concatenations (a copy of both inputs, and the split of its gradient)."""
    flops, values = entries_cost(entries)
    return flops, values + sum(2 * math.prod(shape) for name, _, shape in entries if name.startswith("mix"))


def unet_cost(filters, input_shape, activation, tied, sigma=False):
    """UNet.cost without building it (no allocation): for size checks."""
    return _cost(unet_entries(filters, input_shape, activation, tied, sigma))


def unet_layout(filters, input_shape, activation, tied, sigma=False):
    return declared(unet_entries(filters, input_shape, activation, tied, sigma))[0]
