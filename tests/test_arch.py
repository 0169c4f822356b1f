"""The architecture spec (tinydae/arch.py) and the DAE built from it through the layer protocol:
the spec's grammar and errors, the mlp spec's layout (that of every earlier checkpoint), conv
DAEs' gradients (float64 central differences, and PyTorch autograd where torch is installed),
tied conv weights, and the fused last layer of a conv model."""
import math

import numpy as np
import pytest

import tinydae as td
from tinydae import DAE, arch
from tinydae.errors import ConfigError, DataError
from tinydae.gradcheck import check_model, random_model
from tinydae.rng import STREAM_INIT, host_normal

SPECS = ["conv:2,3", "conv:2k3,3", "conv:2,fc4", "conv:3k3,2,fc5,fc3"]


@pytest.mark.parametrize("spec,canonical", [("mlp:1000,500", "mlp:1000,500"), (" CONV:32, 64K3 ", "conv:32,64k3"),
                                            ("conv:32,64,FC128", "conv:32,64,fc128")])
def test_specs_have_one_written_form(spec, canonical):
    assert arch.canonical(spec) == canonical and arch.canonical(canonical) == canonical


@pytest.mark.parametrize("spec,message", [
    ("dense:10", "unknown architecture kind 'dense'"), ("mlp", "a string such as"), ("mlp:", "one or more"),
    ("mlp:10,,5", "one or more"), ("mlp:10k3", "'10k3' is not a width"), ("conv:fc8", "starts with a convolution"),
    ("conv:8,fc4,8", "dense entries (fc...) must come after"), ("conv:0", "sizes must be >= 1"),
    ("conv:8x", "'8x' is not filters")])
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        arch.parse_arch(spec)


def test_a_conv_spec_too_deep_for_the_image_is_refused_before_any_work():
    with pytest.raises(ConfigError, match=r"conv:4,4,4 on 4x4x1 images: layer 3 \(a 4x4 window \(pad 1\) does not fit "
                                          r"a 1x1 image\); use fewer stride-2 layers"):
        DAE(16, arch="conv:4,4,4")
    with pytest.raises(ConfigError, match=r"15 values are not a square image; train it on images .* give input_shape"):
        DAE(15, arch="conv:4")
    with pytest.raises(ConfigError, match=r"input_shape \(3, 4\) holds 12 values, not input_dim = 15"):
        DAE(15, arch="conv:4", input_shape=(3, 4))
    with pytest.raises(ConfigError, match="give arch or hidden"):
        DAE(16, hidden=(4,), arch="mlp:4")


def old_param_layout(input_dim, hidden, tied):
    """The layout every checkpoint before the layer protocol was written with (model.py, v0.3)."""
    dims, k = [input_dim, *hidden], len(hidden)
    layout = []
    for i in range(k):
        layout += [(f"enc{i}.W", (dims[i], dims[i + 1])), (f"enc{i}.b", (dims[i + 1],))]
    for j in range(k):
        if not tied:
            layout.append((f"dec{j}.W", (dims[k - j], dims[k - 1 - j])))
        layout.append((f"dec{j}.b", (dims[k - 1 - j],)))
    return layout


@pytest.mark.parametrize("hidden", [(5,), (7, 3), (9, 4, 2)])
@pytest.mark.parametrize("tied", [False, True])
def test_the_mlp_spec_has_the_layout_of_earlier_checkpoints(hidden, tied):
    m = DAE(11, hidden, tied=tied)
    assert m.layout == old_param_layout(11, hidden, tied)
    assert m.config["arch"] == "mlp:" + ",".join(map(str, hidden)) and m.hidden == list(hidden)
    # and the values of the earlier init rule, bit for bit: N(0, 1) from Philox stream STREAM_INIT
    # at step = the index in the layout, times He's std before a relu and Glorot's for the logits
    logits_W = f"dec{len(hidden) - 1}.W"
    for index, (name, shape) in enumerate(old_param_layout(11, hidden, tied)):
        if name.endswith(".b"):
            assert not m.named_params[name].any()
            continue
        std = math.sqrt(2.0 / shape[0]) if name != logits_W else math.sqrt(2.0 / sum(shape))
        want = (host_normal(shape, 0, index, STREAM_INIT) * std).astype(np.float32)
        np.testing.assert_array_equal(m.named_params[name], want)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("activation", ["tanh", "softplus", "silu"])
def test_conv_dae_gradients_match_central_differences(spec, tied, activation):
    """Every parameter of the whole conv DAE (BCE through the sigmoid), float64; odd image sizes,
    stride 2 and 1, pad 1, batch 1 and 2, dense bottlenecks, tied and untied."""
    shape = (5, 7, 2) if "fc" in spec else (7, 5, 1)
    model = random_model(math.prod(shape), activation=activation, tied=tied, arch=spec, input_shape=shape, seed=3)
    rng = np.random.default_rng(4)
    for batch in (1, 2):
        x = rng.random((batch, model.input_dim))
        errors = check_model(model, x + rng.normal(0, 0.3, x.shape), x)
        assert max(errors.values()) < 1e-6, errors


def test_a_wrong_conv_gradient_is_caught():
    """The check above can fail: a transposed convolution that drops col2im's overlap sums."""
    model = random_model(49, activation="tanh", arch="conv:2", input_shape=(7, 7, 1), seed=3)
    x = np.random.default_rng(5).random((2, 49))
    layer = model.layers[2]
    real = layer.backward

    def wrong(dy, cache, need_dx=True):
        dx = real(dy, cache, need_dx)
        layer.dW *= 1.001  # a 0.1% error in one weight gradient
        return dx

    layer.backward = wrong
    assert check_model(model, x, x)["dec0.W"] > 1e-4


def test_tied_conv_uses_one_weight_and_sums_both_gradients():
    m = DAE(64, arch="conv:3,4", tied=True, dtype="float64", seed=2)
    assert [n for n, _ in m.layout] == ["enc0.W", "enc0.b", "enc1.W", "enc1.b", "dec0.b", "dec1.b"]
    assert np.shares_memory(m.layers[1].W, m.layers[4].W) and m.layers[1].W.shape == m.layers[4].W.shape
    untied = DAE(64, arch="conv:3,4", dtype="float64", seed=2, params=None)
    assert untied.num_params == m.num_params + m.layers[1].W.size + m.layers[2].W.size


@pytest.mark.parametrize("spec", SPECS)
def test_conv_reconstruct_is_the_sigmoid_of_the_logits_and_chains_agree(spec):
    shape = (5, 7, 2) if "fc" in spec else (7, 5, 1)
    m = DAE(math.prod(shape), arch=spec, input_shape=shape, seed=1)
    for name, view in m.named_params.items():  # nonzero biases: the fused bias row is exercised
        if name.endswith(".b"):
            view[...] = np.random.default_rng(len(name)).normal(0, 0.5, view.shape)
    x = np.random.default_rng(2).random((3, m.input_dim)).astype(np.float32)
    r, z = m.reconstruct(x), m.logits(x)
    np.testing.assert_allclose(r, 1 / (1 + np.exp(-z.astype(np.float64))), rtol=1e-6, atol=1e-7)
    change = np.zeros(3)
    np.testing.assert_allclose(m.chain_step(x, x, change), r, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(change, np.abs(r - x).sum(axis=1), rtol=1e-5)
    assert m.encode(x).ndim == 2


def torch_dae(torch, model):
    """The same conv DAE in PyTorch (NCHW, weights permuted from ours): -> (forward(x_rows), {name: tensor})."""
    F_ = torch.nn.functional
    act = {"tanh": torch.tanh, "softplus": F_.softplus, "relu": torch.relu, "silu": F_.silu}[model.config["activation"]]
    tensors = {n: torch.tensor(np.array(v), requires_grad=True) for n, v in model.named_params.items()}

    def logits(x):
        h = x  # rows (B, N), or images NCHW between a Reshape to (H, W, C) and one back to rows
        for name, layer in zip(model.net.names, model.layers):
            kind = type(layer).__name__
            if kind == "Reshape":  # our rows are NHWC images read row-major
                h = (h.reshape(len(h), *layer.shape).permute(0, 3, 1, 2) if len(layer.shape) == 3
                     else h.permute(0, 2, 3, 1).reshape(len(h), -1))
                continue
            a = act if layer.activation != "identity" else (lambda z: z)
            W, b = tensors[f"{layer.tie or name}.W"], tensors[f"{name}.b"]
            if kind == "Linear":
                h = a(h @ (W.T if layer.tie else W) + b)
                continue
            k, s, p = layer.kh, layer.stride, layer.pad
            w = W.reshape(k, k, W.shape[0] // (k * k), W.shape[1]).permute(3, 2, 0, 1)  # (F, C, k, k)
            if kind == "Conv2d":
                h = a(F_.conv2d(h, w, b, stride=s, padding=p))
            else:
                extra = tuple(out - ((n - 1) * s - 2 * p + k) for out, n in zip(layer.out_hw, h.shape[2:]))
                h = a(F_.conv_transpose2d(h, w, b, stride=s, padding=p, output_padding=extra))
        return h

    return logits, tensors


@pytest.mark.parametrize("spec", SPECS + ["mlp:6,4"])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("activation", ["softplus", "silu"])
def test_dae_agrees_with_pytorch_autograd(spec, tied, activation):
    """Conv DAEs, and SiLU (whose gradient reads z) in conv and dense models, against PyTorch."""
    torch = pytest.importorskip("torch", reason="torch is not installed: the PyTorch cross-check is skipped")
    shape = (5, 7, 2) if "fc" in spec else (7, 5, 1)
    model = random_model(math.prod(shape), activation=activation, tied=tied, arch=spec, input_shape=shape, seed=6)
    rng = np.random.default_rng(7)
    x = rng.random((3, model.input_dim))
    x_in = x + rng.normal(0, 0.3, x.shape)
    loss = model.loss_and_grad(x_in, x)
    logits, tensors = torch_dae(torch, model)
    z = logits(torch.tensor(x_in))
    np.testing.assert_allclose(z.detach().numpy(), model.logits(x_in), rtol=1e-12, atol=1e-12)
    theirs = torch.nn.functional.binary_cross_entropy_with_logits(z, torch.tensor(x), reduction="sum") / len(x)
    theirs.backward()
    assert abs(loss - theirs.item()) < 1e-12 * abs(loss)
    for name, t in tensors.items():
        np.testing.assert_allclose(model.named_grads[name], t.grad.numpy(), rtol=1e-10, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("spec", ["mlp:8", "conv:2,3", "unet:2,3", "conv:2,fc4"])
def test_an_empty_batch_gives_empty_outputs(spec):
    m = DAE(49, arch=spec, seed=1)
    x = np.zeros((0, 49), np.float32)
    assert m.reconstruct(x).shape == m.logits(x).shape == (0, 49) and m.encode(x).shape[0] == 0


def test_one_model_in_two_threads_gives_each_its_own_results():
    """The conv layers reuse their temporaries (layers._scratch); per thread, since NumPy releases
    the GIL in matmul (the numpy backend: numba's workqueue takes one thread at a time)."""
    import threading

    m = DAE(784, arch="unet:4,8", seed=1, backend="numpy")
    xs = [np.random.default_rng(k).random((16, 784)).astype(np.float32) for k in range(2)]
    want = [m.reconstruct(x) for x in xs]
    wrong = [0, 0]

    def work(k):
        for _ in range(40):
            wrong[k] += not np.array_equal(m.reconstruct(xs[k]), want[k])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == [0, 0]


@pytest.mark.parametrize("shape,message", [(28.0, "input_shape must be"), ((28.0, 28), "input_shape must be"),
                                           ((True, 784), "input_shape must be"), (("28", "28"), "input_shape must be"),
                                           ((0, 784), "input_shape must be"), ((2, 2, 2, 98), "input_shape must be")])
def test_bad_input_shapes_are_config_errors(shape, message):
    from tinydae.classifier import Classifier

    with pytest.raises(ConfigError, match=message):
        DAE(784, arch="conv:4", input_shape=shape)
    with pytest.raises(ConfigError, match=message):
        Classifier(784, arch="conv:4", input_shape=shape)


def test_images_of_another_shape_with_as_many_values_are_refused():
    from tinydae.data import Dataset

    m = DAE(432, arch="conv:4", input_shape=(12, 12, 3))
    wide = Dataset(np.random.default_rng(0).random((20, 432)).astype(np.float32), (12, 36), "wide")
    with pytest.raises(DataError, match="the training data holds 12x36x1 images; this conv:4 model takes 12x12x3 ones"):
        td.fit(m, wide, None, epochs=1, handle_sigint=False)


def test_a_one_level_unet_is_refused():
    with pytest.raises(ConfigError, match="a U-Net needs two levels or more"):
        DAE(784, arch="unet:8")
