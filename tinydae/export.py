"""Export a trained DAE for use outside tinydae: an ONNX graph, or plain arrays in an .npz.

Legend: B batch, D input width (pixels), H_k hidden widths, k = len(hidden).

The network (tinydae/model.py), as 2k layers in forward order, n = 0 .. 2k-1:

    h_0 = x                                   (B, D)
    h_(n+1) = act_n(h_n @ W_n + b_n)          W_n: (fan_in, fan_out), b_n: (fan_out,)
    encode(x)      = h_k                      (after the last hidden activation)
    logits(x)      = h_2k                     (act_(2k-1) is identity)
    reconstruct(x) = sigmoid(logits(x))

act_n is the model's hidden activation for n < 2k-1:
    relu        max(z, 0)
    leaky_relu  z if z > 0 else leaky_slope * z          (leaky_slope = 0.01)
    tanh        tanh(z)
    sigmoid     1 / (1 + exp(-z))
    softplus    max(z, 0) + log1p(exp(-|z|))             (= log(1 + exp(z)), without overflow)
    silu        z / (1 + exp(-z))                        (= z sigmoid(z))
    identity    z
With tied weights the decoder's layer k+j uses the transpose of the encoder's layer k-1-j
weight: W_(k+j) = W_(k-1-j)^T.  Both formats keep that one copy, as the model does.

Conv models (arch "conv:..."): a chain of Reshape, Conv2d, ConvTranspose2d and Linear layers
(tinydae/arch.py), the image channels last inside tinydae and NCHW in ONNX; the npz format and
the C page take mlp models only (a conv model is refused in one line), ONNX takes both.

ONNX (export_onnx)
------------------
One input "x": (batch, D) and one output, "reconstruction" (batch, D), "code" (batch, H_k) or
"logits" (batch, D) for what = reconstruct, encode, logits.  The batch size is symbolic, so one
file serves any batch.  Weights are initializers named as in the checkpoint (enc0.W, dec0.b, ...)
in the model's dtype, float32 or float64 (tensor(float) or tensor(double) throughout).  Each
layer is one Gemm (h @ W + b); a tied decoder layer is Gemm(h, enc{k-1-j}.W, b, transB=1), which
reads the shared initializer transposed: no Transpose node at run time and no second copy in
the file.  Activations: Relu, Tanh, Sigmoid; leaky_relu is PRelu with a (1,) slope initializer
for float32 and, for float64, Max(z, 0) + slope * Min(z, 0), exact with the slope in float64
(LeakyRelu's alpha is a 32-bit float attribute: a float64 model would get 0.0099999998; and ONNX
Runtime 1.32 runs double PRelu only at opsets 16-18); softplus is Softplus for float32 and, for float64 (which ONNX Runtime does not
implement), the composition Max(z, 0) + Log(1 + Exp(-Abs(z))); silu is Mul(z, Sigmoid(z)).
Each activation's nodes come from its record in kernels/activations.py.  A conv model's rows are reshaped to
(batch, H, W, C) and transposed to NCHW (and back, channels last, for its rows or its code); each
convolution is Conv and each transposed one ConvTranspose (its output size fixed by
output_padding), both reading the weight as (F, C, kh, kw), tinydae's (kh*kw*C, F) matrix
permuted once, so a tied pair shares one initializer; dense layers between them are Gemm.
A U-Net (tinydae/unet.py) is the same layers in its wiring, each skip a Concat on the channel axis; a
noise-conditional one (unet:...,sigma) takes a second input, sigma (batch,), and builds the
noise-level channel (1 + log10(sigma) / 2) as DAE.net_input does.
ONNX Runtime implements Conv for float32 only: a float64 conv model is refused.  The model's metadata_props hold
tinydae_version, what and the model config (JSON).

npz (export_npz)
----------------
An uncompressed .npz (np.savez: every member a STORED, i.e. not compressed, zip entry holding a
.npy file) with:

    "model.json"      (L,) uint8: the description below, UTF-8 JSON text
    "enc{i}.W"        (fan_in, fan_out) C-order, float32 or float64 (little-endian: '<f4', '<f8')
    "enc{i}.b"        (fan_out,)
    "dec{j}.W"        (fan_in, fan_out), only when the weights are not tied
    "dec{j}.b"        (fan_out,)

Python: ``z = np.load(path); desc = json.loads(z["model.json"].tobytes())``.  The description:

    {"format": "tinydae-npz", "format_version": 1, "tinydae_version": "0.1.0",
     "dtype": "float32", "input_dim": 784, "hidden": [32], "activation": "relu",
     "tied": false, "leaky_slope": 0.01, "output": "sigmoid", "encoder_layers": 1,
     "model_config": {...the checkpoint's model config...},
     "layers": [
      {"W": "enc0.W", "transposed": false, "b": "enc0.b", "fan_in": 784, "fan_out": 32, "activation": "relu"},
      {"W": "dec0.W", "transposed": false, "b": "dec0.b", "fan_in": 32, "fan_out": 784, "activation": "identity"}]}

"layers" lists the 2k layers in forward order: h = activation(h @ W + b), where W is the array
named "W", used as stored (fan_in, fan_out) when "transposed" is false, and as the transpose of
the stored (fan_out, fan_in) array when true (a tied decoder layer names its encoder's W): element
(i, o) of the layer's weight is W[i * fan_out + o] when not transposed, W[o * fan_in + i] when
transposed.  The first "encoder_layers" layers give encode(x); after the last layer apply "output"
(sigmoid) to get reconstruct(x).  "layers" is the last key, and each layer's keys come in the
order shown, so a reader without a JSON parser may scan for them in order (examples/embed/dae.c
does, in a page of C that also finds the .npy members by walking the zip's local headers).
A reader should refuse a format_version it does not know.

Both writes are atomic (checkpoint.atomic_write): a killed export leaves no partial file.
"""
import json
import math
from types import SimpleNamespace

import numpy as np

from tinydae.checkpoint import atomic_write
from tinydae.errors import ConfigError
from tinydae.kernels.activations import BY_NAME, LEAKY_SLOPE

FORMATS = ("onnx", "npz")
WHATS = ("reconstruct", "encode", "logits")
OUTPUT_NAMES = {"reconstruct": "reconstruction", "encode": "code", "logits": "logits"}
NPZ_FORMAT, NPZ_FORMAT_VERSION = "tinydae-npz", 1
DESCRIPTION = "model.json"  # the npz member that holds the JSON description
DEFAULT_OPSET = 17  # old enough for every current runtime; every op used here is older still
MIN_OPSET = 13
PROTOBUF_LIMIT = 2**31 - 2**24  # an ONNX file is one protobuf message: < 2 GiB, with room for the graph
INSTALL_ONNX = 'pip install -e ".[onnx]"'


def check_options(fmt, what=None):
    """Validate an export request before any work.  -> what, defaulted for ONNX.

    fmt: "onnx" or "npz"; what: reconstruct | encode | logits, or None (reconstruct).  An npz
    holds the whole model, so it takes no `what`; ONNX needs the onnx package.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if what is not None and what not in WHATS:
        raise ConfigError(f"unknown --what {what!r}; choose one of {', '.join(WHATS)}")
    if fmt == "npz":
        if what not in (None, "reconstruct"):
            raise ConfigError(f"--what {what} is for --format onnx; an npz holds the whole model, and its "
                              f"description's encoder_layers says which layers encode")
        return what
    require_onnx()
    return what or "reconstruct"


def require_mlp(model):
    """The npz description (and the C page that reads it) holds dense layers only: a conv model
    is one ConfigError that names the formats that do take it."""
    if model.noise_conditional:
        raise ConfigError(f"--format npz describes dense (mlp) models only, of one input, for the C page; "
                          f"{model.config['arch']} also reads the noise level: export it with --format onnx (inputs x "
                          f"and sigma), or run it in tinydae's NumPy-only runtime (load_model(..., backend='numpy'))")
    if model.hidden is None:
        raise ConfigError(f"--format npz describes dense (mlp) models only, for the C page; {model.config['arch']} "
                          f"is not one: export it with --format onnx, or run it in tinydae's NumPy-only runtime "
                          f"(load_model(..., backend='numpy'))")


def layer_table(model):
    """The model's 2k layers in forward order, as [dict(W, transposed, b, fan_in, fan_out,
    activation)], W and b naming parameters of model.named_params (each Linear's npz())."""
    require_mlp(model)
    return [layer.npz() for layer in model.layers]


def _host_params(model):
    """{name: C-contiguous host copy} of every parameter, in buffer order."""
    return {name: np.ascontiguousarray(model.backend.to_host(model.named_params[name]))
            for name, _ in model.layout}


def _metadata(model):
    from tinydae import __version__

    return dict(tinydae_version=__version__, model_config=model.config)


# ----------------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------------


def require_onnx():
    """-> (onnx, onnx.helper, onnx.numpy_helper), or a ConfigError saying how to install them."""
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError as e:
        raise ConfigError(f"ONNX export needs the onnx package ({e}): {INSTALL_ONNX}") from None
    return onnx, helper, numpy_helper


def onnx_graph(model, what="reconstruct", opset=DEFAULT_OPSET):
    """-> the checked onnx.ModelProto computing model.<what>(x) for x: (batch, D)."""
    what = check_options("onnx", what)
    onnx, helper, numpy_helper = require_onnx()
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, (int, np.integer)) or not MIN_OPSET <= opset <= newest:
        raise ConfigError(f"opset must be an integer from {MIN_OPSET} to {newest} (this onnx package's "
                          f"newest), got {opset!r}")
    params = _host_params(model)
    if sum(a.nbytes for a in params.values()) > PROTOBUF_LIMIT:
        raise ConfigError("the model's weights exceed ONNX's 2 GiB file limit; export --format npz instead")
    elem = helper.np_dtype_to_tensor_dtype(model.dtype)
    if model.hidden is None and model.dtype != np.float32:
        raise ConfigError(f"ONNX export of a {model.dtype.name} conv model: ONNX Runtime implements Conv and "
                          f"ConvTranspose for float32 only (1.32); train the conv model in float32 to export it")
    end = model.net._code if what == "encode" and hasattr(model.net, "_code") else len(model.layers)
    inits = {}  # name -> TensorProto, each parameter once (a tied W serves two layers)
    nodes = []

    def node(op, inputs, **attrs):
        out = f"t{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], name=f"{op.lower()}{len(nodes)}", **attrs))
        return out

    def const(name, value, dtype=model.dtype):
        if name not in inits:
            inits[name] = numpy_helper.from_array(np.asarray(value, dtype), name)
        return name

    emit = SimpleNamespace(node=node, const=const, dtype=model.dtype)

    def activate(h, act):  # each activation's record says how (kernels/activations.py)
        return BY_NAME[act].onnx(emit, h)

    def to_rows(h, width):
        """NCHW images -> rows (batch, H*W*C) in tinydae's channels-last order"""
        return node("Reshape", [node("Transpose", [h], perm=[0, 2, 3, 1]), const(f"rows{width}", [-1, width], np.int64)])

    g = SimpleNamespace(node=node, const=const, params=params, activate=activate, to_rows=to_rows)

    def layer_nodes(name, layer, shape, h):
        """One layer's nodes (the layer's own onnx()): h (NCHW images or rows) -> h"""
        return layer.onnx(g, h, shape)

    net = model.net
    rows = "x"
    if model.noise_conditional:  # rows with the noise-level channel, as DAE.net_input builds them
        level = node("Add", [const("one", 1.0), node("Mul", [node("Log", ["sigma"]),
                                                             const("half_over_ln10", 0.5 / math.log(10))])])
        if model.hidden is not None:  # an mlp (of rows or images): one more column
            rows = node("Concat", ["x", node("Reshape", [level, const("b1", [-1, 1], np.int64)])], axis=1)
        else:
            H, W, C = model.input_shape
            plane = node("Mul", [node("Reshape", [level, const("b111", [-1, 1, 1, 1], np.int64)]),
                                 const("ones_hw", np.ones((1, H, W, 1)))])               # (batch, H, W, 1)
            image = node("Reshape", ["x", const("bhwc", [-1, H, W, C], np.int64)])
            rows = node("Reshape", [node("Concat", [image, plane], axis=3),
                                    const("rows_in", [-1, H * W * (C + 1)], np.int64)])
    if model.config["arch"].startswith("unet:"):  # the U-Net's wiring (tinydae/unet.py), Concat for its skips
        shape_of = {name: shape for name, _, shape in net.entries}
        h, skips = layer_nodes("in", net.by_name["in"], shape_of["in"], rows), []
        for i in range(net.k):
            h = layer_nodes(f"enc{i}", net.by_name[f"enc{i}"], shape_of[f"enc{i}"], h)
            skips.append(h)
        if what == "encode":
            end, h = net.k + 1, to_rows(h, math.prod(net.shapes[net.k + 1]))
        else:
            for i in range(net.k - 1, 0, -1):
                up = layer_nodes(f"up{i}", net.by_name[f"up{i}"], shape_of[f"up{i}"], h)
                h = layer_nodes(f"mix{i}", net.by_name[f"mix{i}"], shape_of[f"mix{i}"],
                         node("Concat", [up, skips[i - 1]], axis=1))
            h = layer_nodes("out", net.by_name["out"], shape_of["out"], layer_nodes("dec", net.by_name["dec"], shape_of["dec"], h))
        image = False
    else:
        h = rows
        for name, layer, shape in list(zip(net.names, model.layers, net.shapes))[:end]:
            h = layer_nodes(name, layer, shape, h)
        image = len(net.shapes[end]) == 3  # encode of a conv model ends on an image
    width = math.prod(net.shapes[end])
    if image:  # encode of a conv model: the code as rows, channels last, as DAE.encode gives it
        h = to_rows(h, width)
    if what == "reconstruct":
        h = node("Sigmoid", [h])
    output = OUTPUT_NAMES[what]
    nodes[-1].output[0] = output  # the last node writes the graph's output
    inputs = [helper.make_tensor_value_info("x", elem, ["batch", model.input_dim])]
    if model.noise_conditional:
        inputs.append(helper.make_tensor_value_info("sigma", elem, ["batch"]))
    graph = helper.make_graph(
        nodes, f"tinydae_{what}", inputs,
        [helper.make_tensor_value_info(output, elem, ["batch", width])],
        list(inits.values()))
    meta = _metadata(model)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", int(opset))],
                              producer_name="tinydae", producer_version=meta["tinydae_version"],
                              doc_string=f"{model!r}: {what}(x), x (batch, {model.input_dim}) in [0, 1]"
                              + (", sigma (batch,) > 0: the noise level of each row" if model.noise_conditional else ""))
    # The oldest IR version that can hold this opset, so older runtimes load the file too.
    proto.ir_version = helper.find_min_ir_version_for(list(proto.opset_import))
    helper.set_model_props(proto, dict(tinydae_version=meta["tinydae_version"], what=what,
                                       model_config=json.dumps(meta["model_config"])))
    onnx.checker.check_model(proto, full_check=True)  # full_check: also infers and checks every shape
    return proto


def export_onnx(model, path, what="reconstruct", opset=DEFAULT_OPSET):
    """Write model.<what> as an ONNX file (see the module docstring), atomically.  -> path"""
    proto = onnx_graph(model, what, opset)
    data = proto.SerializeToString()

    atomic_write(path, lambda f: f.write(data))
    return path


# ----------------------------------------------------------------------------------------
# npz
# ----------------------------------------------------------------------------------------


def npz_description(model):
    """The JSON-able description stored in the npz (see the module docstring)."""
    require_mlp(model)
    meta = _metadata(model)
    c = model.config
    return dict(format=NPZ_FORMAT, format_version=NPZ_FORMAT_VERSION, tinydae_version=meta["tinydae_version"],
                dtype=c["dtype"], input_dim=c["input_dim"], hidden=list(model.hidden), activation=c["activation"],
                tied=c["tied"], leaky_slope=LEAKY_SLOPE, output="sigmoid", encoder_layers=len(model.hidden),
                model_config=meta["model_config"], layers=layer_table(model))  # layers last: see above


def export_npz(model, path):
    """Write the model's weights and description as an uncompressed .npz, atomically.  -> path"""
    desc = json.dumps(npz_description(model))
    arrays = {DESCRIPTION: np.frombuffer(desc.encode(), np.uint8)}
    arrays.update((name, a.astype(a.dtype.newbyteorder("<"), copy=False)) for name, a in _host_params(model).items())

    atomic_write(path, lambda f: np.savez(f, **arrays))  # a file object: np.savez adds no .npz
    return path


def export(model, path, fmt="onnx", what=None, opset=DEFAULT_OPSET):
    """export_onnx or export_npz by name; `what` is for ONNX only (see check_options).  -> path"""
    what = check_options(fmt, what)
    if fmt == "npz":
        return export_npz(model, path)
    return export_onnx(model, path, what, opset)
