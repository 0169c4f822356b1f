"""The architecture spec: one string that the CLI (`train --arch`), the API (`DAE(arch=...)`)
and checkpoints (the model config's "arch") share.

    mlp:1000,500       dense encoder D -> 1000 -> 500, mirrored decoder 500 -> 1000 -> D
                       (`--hidden 1000,500` is shorthand for it; the only network before v0.4)
    conv:32,64         a Conv2d per entry, 4x4 window, stride 2, pad 1 (halves H and W:
                       28 -> 14 -> 7), mirrored by ConvTranspose2d layers back to H x W x C
    conv:16k3,32,64    "k3": a 3x3 window, stride 1, pad 1 (keeps the size)
    conv:32,64,fc128   after the convolutions, flatten and a dense bottleneck of 128
                       (mirrored by a dense layer and a reshape back to the image)
    unet:16,32         a small U-Net (tinydae/unet.py): conv:16,32's encoder, and a decoder whose
                       every level also reads the encoder's output at that size (skip connections)
    unet:16,32,sigma   noise-conditional: the noise level of the input enters the network as one
                       more input channel (model.noise_channel(sigma) in every pixel), so one
                       network denoises well at every level of an annealing ladder
    mlp:256,256,sigma  the same for a dense DAE: one more input, the noise channel's value

Every hidden layer uses the model's activation; the last decoder layer gives logits (identity),
and the DAE applies the sigmoid.  With tied weights each decoder layer uses its encoder
layer's weight: transposed for dense layers, as is for convolutions (a transposed convolution
with a convolution's weight is exactly its adjoint).  Parameters are named enc0, enc1, ... in
encoder order and dec0, dec1, ... in decoder order, so an mlp spec has the flat-buffer layout of
every earlier checkpoint.

Images are channels last: input_shape (H, W, C); a model reads rows (B, H*W*C) and reshapes them
(a view), so chains, metrics and PNG grids work on rows as before.
"""
import math
import re

import numpy as np

from tinydae.errors import ConfigError, DataError
from tinydae.layers import ConvTranspose2d, Conv2d, Linear, Reshape

KINDS = ("mlp", "conv", "unet")
_CONV_ENTRY = re.compile(r"^(\d+)(k3)?$")
_FC_ENTRY = re.compile(r"^fc(\d+)$")
EXAMPLES = "mlp:1000,500, conv:32,64, conv:16k3,32,64, conv:32,64,fc128, unet:16,32 or unet:16,32,sigma"
SIGMA = "sigma"  # the last entry of a noise-conditional U-Net's spec


def parse_arch(spec):
    """Validate a spec; -> (kind, entries), entries as dicts:
    mlp: {"width": N}; conv: {"filters": F, "kernel": 4|3, "stride": 2|1, "pad": 1} or {"width": N}
    (the dense bottleneck, after every convolution).  A U-Net's trailing "sigma" is not an entry
    (noise_conditional tells it)."""
    return _parse(spec)[:2]


def noise_conditional(spec):
    """Does the network read the noise level as an input channel ("unet:16,32,sigma")?"""
    return _parse(spec)[2]


def _parse(spec):
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"an architecture is a string such as {EXAMPLES}; got {spec!r}")
    kind, _, body = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ConfigError(f"unknown architecture kind {kind!r} in {spec!r}; choose one of {', '.join(KINDS)} "
                          f"(e.g. {EXAMPLES})")
    tokens = [t.strip().lower() for t in body.split(",")]
    if not tokens or not all(tokens):
        raise ConfigError(f"{spec!r}: give one or more comma-separated layer sizes (e.g. {EXAMPLES})")
    sigma = tokens[-1] == SIGMA
    if sigma:
        tokens = tokens[:-1]
        if not tokens:
            raise ConfigError(f"{spec!r}: give one or more layer sizes before 'sigma' (e.g. {kind}:32,64,sigma)")
    if SIGMA in tokens or (sigma and kind == "conv"):
        raise ConfigError(f"{spec!r}: 'sigma' (the noise level as an input) is a U-Net or mlp option, written "
                          f"last: e.g. unet:32,64,sigma or mlp:256,256,sigma")
    entries = []
    for t in tokens:
        if kind in ("mlp", "unet"):
            m = re.fullmatch(r"\d+", t)
            entry = (dict(width=int(t)) if kind == "mlp" else dict(filters=int(t), kernel=4, stride=2, pad=1)) \
                if m else None
        elif _FC_ENTRY.match(t):
            entry = dict(width=int(_FC_ENTRY.match(t).group(1)))
        elif _CONV_ENTRY.match(t):
            if entries and "width" in entries[-1]:
                raise ConfigError(f"{spec!r}: dense entries (fc...) must come after every convolution")
            m = _CONV_ENTRY.match(t)
            k3 = bool(m.group(2))
            entry = dict(filters=int(m.group(1)), kernel=3 if k3 else 4, stride=1 if k3 else 2, pad=1)
        else:
            entry = None
        if entry is None:
            want = {"mlp": "a width such as 1000", "unet": "filters such as 32"}.get(kind, "filters such as 32, 32k3, "
                                                                                         "or fc128")
            raise ConfigError(f"{spec!r}: {t!r} is not {want}")
        if entry.get("width", 1) < 1 or entry.get("filters", 1) < 1:
            raise ConfigError(f"{spec!r}: layer sizes must be >= 1, got {t!r}")
        entries.append(entry)
    if kind == "unet" and len(entries) < 2:
        raise ConfigError(f"{spec!r}: a U-Net needs two levels or more (unet:F alone has no skip: it is conv:F)")
    if kind == "conv" and "width" in entries[0]:
        raise ConfigError(f"{spec!r}: a conv architecture starts with a convolution (for dense only: mlp:...)")
    return kind, entries, sigma


def canonical(spec):
    """The spec in its one written form ("conv:32,64k3", lower case, no spaces)."""
    kind, entries, sigma = _parse(spec)
    parts = []
    for e in entries:
        if "filters" in e:
            parts.append(f"{e['filters']}{'k3' if e['kernel'] == 3 else ''}")
        else:
            parts.append(f"fc{e['width']}" if kind == "conv" else str(e["width"]))
    return f"{kind}:{','.join(parts + [SIGMA] * sigma)}"


def mlp_spec(hidden):
    """--hidden 1000,500 -> "mlp:1000,500" """
    hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    return canonical("mlp:" + ",".join(str(h) for h in hidden))


def mlp_widths(spec):
    """The hidden widths of an mlp spec, or None for any other kind."""
    kind, entries = parse_arch(spec)
    return [e["width"] for e in entries] if kind == "mlp" else None


def resolve(input_dim, hidden, spec, input_shape, default_hidden):
    """What a model config names: hidden widths (shorthand for "mlp:...", and how older files
    store it; default_hidden when neither is given) or a spec, with the image shape.
    -> (the canonical spec, input_shape_for's shape); ConfigError for anything invalid."""
    if not isinstance(input_dim, (int, np.integer)) or isinstance(input_dim, bool) or input_dim < 1:
        raise ConfigError(f"input_dim must be a positive integer, got {input_dim!r}")
    if spec is not None and hidden is not None:
        raise ConfigError("give arch or hidden (shorthand for arch='mlp:...'), not both")
    if spec is None:
        hidden = default_hidden if hidden is None else hidden
        hidden = (hidden,) if isinstance(hidden, (int, np.integer)) else tuple(hidden)
        if not hidden or not all(isinstance(h, (int, np.integer)) and h >= 1 for h in hidden):
            example = ",".join(map(str, default_hidden))
            raise ConfigError(f"hidden must be one or more positive integers (e.g. {example}), got {hidden!r}")
        spec = mlp_spec([int(h) for h in hidden])
    spec = canonical(spec)
    return spec, input_shape_for(spec, int(input_dim), input_shape)


def input_shape_for(spec, input_dim, input_shape=None):
    """One example's shape: (D,) rows for mlp (or the given image shape), (H, W, C) for conv.
    input_shape: (H, W) or (H, W, C) or None (conv: a square single-channel image if D is a square)."""
    kind = parse_arch(spec)[0]
    image = kind in ("conv", "unet")
    if input_shape is not None:
        ok = isinstance(input_shape, (tuple, list)) and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v >= 1 for v in input_shape)
        if not ok or not 1 <= len(input_shape) <= 3:
            raise ConfigError(f"input_shape must be (D,), (H, W) or (H, W, C) positive integers, got {input_shape!r}")
        shape = tuple(int(v) for v in input_shape)
        if math.prod(shape) != input_dim:
            raise ConfigError(f"input_shape {shape} holds {math.prod(shape)} values, not input_dim = {input_dim}")
        if len(shape) == 2:
            shape += (1,)
    elif image:
        side = math.isqrt(input_dim)
        if side * side != input_dim:
            raise ConfigError(f"a {kind} model needs the image shape: {input_dim} values are not a square image; "
                              f"train it on images (IDX, or .npz/.h5 arrays of (N, H, W) or (N, H, W, C)) or, "
                              f"from Python, give input_shape=(H, W) or (H, W, C)")
        shape = (side, side, 1)
    else:
        shape = (input_dim,)
    if image and len(shape) != 3:
        raise ConfigError(f"a {kind} model needs an image shape (H, W) or (H, W, C), got {shape}")
    return shape


def dae_layers(spec, input_shape, activation, tied):
    """The DAE's layers for a spec: [(name, layer), ...], encoder then decoder, the last
    layer giving logits (B, D).  input_shape: from input_shape_for."""
    kind, entries = parse_arch(spec)
    if kind == "unet":
        raise ConfigError(f"{spec}: a U-Net is not a stack of layers; build it with tinydae.unet.UNet")
    D = math.prod(input_shape)
    if kind == "mlp":
        sigma = noise_conditional(spec)
        if sigma and tied:
            raise ConfigError(f"{spec}: a noise-conditional mlp cannot be tied: its first layer reads the noise "
                              f"input, which the last layer does not write")
        dims = [D] + [e["width"] for e in entries]
        k = len(entries)
        if sigma:  # the first layer reads D + 1 values; the last still writes D
            layers = [("enc0", Linear(dims[1], activation))] + [(f"enc{i}", Linear(dims[i + 1], activation))
                                                                for i in range(1, k)]
            layers += [(f"dec{j}", Linear(dims[k - 1 - j], "identity" if j == k - 1 else activation)) for j in range(k)]
            return layers
        layers = [(f"enc{i}", Linear(dims[i + 1], activation)) for i in range(k)]
        layers += [(f"dec{j}", Linear(dims[k - 1 - j], "identity" if j == k - 1 else activation,
                                      tie=f"enc{k - 1 - j}" if tied else None)) for j in range(k)]
        return layers
    layers, shape = [("in", Reshape(input_shape))], tuple(input_shape)
    encoders = []  # (name, entry, the layer's input shape, its output shape)
    for i, e in enumerate(entries):
        name = f"enc{i}"
        if "filters" in e:
            layer = Conv2d(e["filters"], e["kernel"], e["stride"], e["pad"], activation)
        else:
            if not encoders or "filters" in encoders[-1][1]:
                layers.append(("flat", Reshape((math.prod(shape),))))
            layer = Linear(e["width"], activation)
        try:
            out = layer.output_shape(shape)
        except ValueError as err:
            raise ConfigError(f"{spec} on {'x'.join(map(str, input_shape))} images: layer {i + 1} ({err}); "
                              f"use fewer stride-2 layers (or k3 ones)") from None
        layers.append((name, layer))
        encoders.append((name, e, shape, out))
        shape = out
    n = len(encoders)
    for j, (enc, e, enc_in, enc_out) in enumerate(reversed(encoders)):
        act = "identity" if j == n - 1 else activation
        tie = enc if tied else None
        if "filters" in e:
            if j and "width" in encoders[n - j][1]:  # the first convolution after the dense part
                layers.append(("unflat", Reshape(enc_out)))
            layer = ConvTranspose2d(enc_in[2], e["kernel"], e["stride"], e["pad"], enc_in[:2], act, tie)
        else:
            layer = Linear(math.prod(enc_in), act, tie)
        layers.append((f"dec{j}", layer))
    layers.append(("out", Reshape((D,))))
    return layers


def classifier_layers(spec, input_shape, classes):
    """A classifier's layers for a spec: the spec's encoder (relu; conv entries, then fc ones),
    flattened, then the logits layer "out" of `classes` units.  mlp:256,128 is the dense
    classifier of every earlier version (layers fc0, fc1, out: the same layout)."""
    kind, entries = parse_arch(spec)
    if kind == "unet":
        raise ConfigError(f"{spec}: a U-Net classifier makes no sense (it maps images to images); use conv:...")
    if kind == "mlp":
        return [(f"fc{i}", Linear(e["width"], "relu")) for i, e in enumerate(entries)] + [("out", Linear(classes))]
    layers, shape, flat = [("in", Reshape(input_shape))], tuple(input_shape), False
    for i, e in enumerate(entries):
        if "filters" in e:
            layer = Conv2d(e["filters"], e["kernel"], e["stride"], e["pad"], "relu")
            try:
                shape = layer.output_shape(shape)
            except ValueError as err:
                raise ConfigError(f"{spec} on {'x'.join(map(str, input_shape))} images: layer {i + 1} ({err}); "
                                  f"use fewer stride-2 layers (or k3 ones)") from None
            layers.append((f"conv{i}", layer))
        else:
            if not flat:
                layers.append(("flat", Reshape((math.prod(shape),))))
                flat = True
            layers.append((f"fc{i}", Linear(e["width"], "relu")))
            shape = (e["width"],)
    if not flat:
        layers.append(("flat", Reshape((math.prod(shape),))))
    return layers + [("out", Linear(classes))]


def unet_filters(spec):
    """The filters of a unet spec, or None for any other kind."""
    kind, entries = parse_arch(spec)
    return [e["filters"] for e in entries] if kind == "unet" else None


def check_image_shape(config, image_shape, what):
    """Refuse images of another shape with the same number of values for an image model (a conv
    or U-Net model would read 12x36 images as 12x12x3 without a word).  config: a model's (DAE or
    classifier); image_shape: (H, W), (H, W, C) or None (rows: nothing to compare)."""
    want = tuple(config["input_shape"])
    if image_shape is None or len(want) != 3 or parse_arch(config["arch"])[0] == "mlp":
        return
    got = (*tuple(image_shape), 1)[:3]
    if got != want:
        raise DataError(f"{what} holds {'x'.join(map(str, got))} images; this {config['arch']} model takes "
                        f"{'x'.join(map(str, want))} ones")
