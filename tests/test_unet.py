"""The small U-Net (tinydae/unet.py, arch "unet:..."): skip connections wired by hand from
protocol layers.  Its gradients against central differences (float64) and PyTorch autograd,
tied and untied, odd sizes and channels; trained, resumed and sampled from the CLI."""
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

import tinydae as td
from tinydae.cli import cli
from tinydae.errors import ConfigError
from tinydae.gradcheck import check_model, random_model

CASES = [("unet:2,3", (7, 5, 1)), ("unet:2,3,2", (9, 8, 2))]


@pytest.mark.parametrize("spec,shape", CASES)
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("activation", ["tanh", "silu"])
def test_unet_gradients_match_central_differences(spec, shape, tied, activation):
    model = random_model(math.prod(shape), activation=activation, tied=tied, arch=spec, input_shape=shape, seed=1)
    x = np.random.default_rng(2).random((2, model.input_dim))
    errors = check_model(model, x + np.random.default_rng(3).normal(0, 0.3, x.shape), x)
    assert max(errors.values()) < 1e-6, errors


def test_a_dropped_skip_gradient_is_caught():
    """The check above can fail: backward without the skip's share of the gradient."""
    model = random_model(35, activation="tanh", arch="unet:2,3", input_shape=(7, 5, 1), seed=1)
    x = np.random.default_rng(2).random((2, 35))
    real = model.net.xp.ascontiguousarray

    def drop_skip(a):  # the skip's slice of the concatenation's gradient comes through here first
        out = real(a)
        if not hasattr(drop_skip, "seen"):
            drop_skip.seen = True
            out[...] = 0
        return out

    model.net.xp = type("xp", (), {"ascontiguousarray": staticmethod(drop_skip),
                                   "concatenate": staticmethod(np.concatenate)})
    assert max(check_model(model, x, x).values()) > 1e-3


@pytest.mark.parametrize("spec,shape", CASES)
@pytest.mark.parametrize("tied", [False, True])
def test_unet_agrees_with_pytorch_autograd(spec, shape, tied):
    torch = pytest.importorskip("torch", reason="torch is not installed: the PyTorch cross-check is skipped")
    F = torch.nn.functional
    model = random_model(math.prod(shape), activation="softplus", tied=tied, arch=spec, input_shape=shape, seed=4)
    t = {n: torch.tensor(np.array(v), requires_grad=True) for n, v in model.named_params.items()}
    L = model.net.by_name

    def weight(name):
        layer = L[name]
        W = t[f"{layer.tie or name}.W"]
        return W.reshape(layer.kh, layer.kw, W.shape[0] // (layer.kh * layer.kw), W.shape[1]).permute(3, 2, 0, 1)

    def up(name, h):
        layer = L[name]
        extra = tuple(o - ((n - 1) * 2 - 2 + 4) for o, n in zip(layer.out_hw, h.shape[2:]))
        return F.conv_transpose2d(h, weight(name), t[f"{name}.b"], stride=2, padding=1, output_padding=extra)

    x = np.random.default_rng(5).random((3, model.input_dim))
    H, W, C = shape
    h = torch.tensor(x).reshape(3, H, W, C).permute(0, 3, 1, 2)
    skips = []
    for i in range(model.net.k):
        h = F.softplus(F.conv2d(h, weight(f"enc{i}"), t[f"enc{i}.b"], stride=2, padding=1))
        skips.append(h)
    for i in range(model.net.k - 1, 0, -1):
        cat = torch.cat([F.softplus(up(f"up{i}", h)), skips[i - 1]], dim=1)
        h = F.softplus(F.conv2d(cat, weight(f"mix{i}"), t[f"mix{i}.b"], stride=1, padding=1))
    z = up("dec", h).permute(0, 2, 3, 1).reshape(3, -1)
    np.testing.assert_allclose(z.detach().numpy(), model.logits(x), rtol=1e-12, atol=1e-12)
    loss = model.loss_and_grad(x, x)
    theirs = F.binary_cross_entropy_with_logits(z, torch.tensor(x), reduction="sum") / 3
    theirs.backward()
    assert abs(loss - theirs.item()) < 1e-12 * loss
    for name, tensor in t.items():
        np.testing.assert_allclose(model.named_grads[name], tensor.grad.numpy(), rtol=1e-10, atol=1e-13, err_msg=name)


def test_unet_from_the_cli_trains_resumes_exactly_and_samples(tmp_path):
    run = ["train", "--arch", "unet:4,8", "--limit", "200", "--batch-size", "32", "--backend", "cpu",
           "--checkpoint-every", "0"]
    invoke = CliRunner().invoke
    assert invoke(cli, run + ["--epochs", "2", "--out", str(tmp_path / "a")]).exit_code == 0
    assert invoke(cli, run + ["--epochs", "1", "--out", str(tmp_path / "b")]).exit_code == 0
    r = invoke(cli, ["train", "--resume", str(tmp_path / "b" / "checkpoint.h5"), "--epochs", "2", "--out",
                     str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    a, b = (td.load_checkpoint(tmp_path / d / "checkpoint.h5") for d in "ab")
    assert a.model_config["arch"] == "unet:4,8"
    np.testing.assert_array_equal(a.params, b.params)
    r = invoke(cli, ["sample", str(tmp_path / "a" / "checkpoint.h5"), "--n", "4", "--steps", "2", "--out",
                     str(tmp_path / "s.png"), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["png"]
    r = invoke(cli, ["export", str(tmp_path / "a" / "checkpoint.h5"), "--format", "npz", "--out",
                     str(tmp_path / "u.npz")])
    assert r.exit_code == 2 and r.stderr.startswith("error: --format npz describes dense (mlp) models only")
    assert "export it with --format onnx" in r.stderr
    r = invoke(cli, ["export", str(tmp_path / "a" / "checkpoint.h5"), "--out", str(tmp_path / "u.onnx")])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("spec,shape,tied", [("unet:2,3", (7, 5, 1), False), ("unet:2,3,2", (9, 8, 2), True)])
def test_unet_onnx_matches_the_model(tmp_path, spec, shape, tied):
    """Its skips as Concat nodes (NCHW, channels axis 1), for reconstruct, encode and logits."""
    ort = pytest.importorskip("onnxruntime", reason='onnxruntime is not installed (pip install -e ".[onnx]")')
    from tinydae.export import WHATS, export_onnx

    model = random_model(math.prod(shape), activation="silu", tied=tied, arch=spec, input_shape=shape, seed=2)
    model = td.DAE(math.prod(shape), arch=spec, activation="silu", tied=tied, input_shape=shape, seed=2,
                   params=model.params.astype(np.float32))
    x = np.random.default_rng(3).random((4, model.input_dim)).astype(np.float32)
    for what in WHATS:
        path = export_onnx(model, tmp_path / f"{what}.onnx", what=what)
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, getattr(model, what)(x), rtol=1e-5, atol=2e-6, err_msg=what)


def test_unet_specs_that_do_not_fit_say_so():
    with pytest.raises(ConfigError, match="unet:4,4,4 on 4x4x1 images: level 3"):
        td.DAE(16, arch="unet:4,4,4")
    with pytest.raises(ConfigError, match="'4k3' is not filters such as 32"):
        td.DAE(16, arch="unet:4k3")
