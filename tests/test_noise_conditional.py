"""The noise-conditional U-Net (arch "unet:...,sigma", issue 21 item 2): the noise level of the
input enters as one more input channel.  Its gradients (float64, central differences and PyTorch
autograd), the channel's value, fit telling each row its own level, the samplers telling each
step its ladder level, ONNX with a sigma input, checkpoints, the CLI, and the errors."""
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

import tinydae as td
from tinydae.cli import cli
from tinydae.corruption import Corruption
from tinydae.errors import ConfigError, DataError
from tinydae.gradcheck import check_model, random_model
from tinydae.model import noise_channel
from tinydae.sampling import chain, make_sampler, noise_start
from tinydae.train import fit


@pytest.mark.parametrize("spec,shape", [("unet:2,3,sigma", (7, 5, 1)), ("unet:2,3,2,sigma", (9, 8, 2))])
@pytest.mark.parametrize("activation", ["tanh", "silu"])
def test_gradients_match_central_differences(spec, shape, activation):
    model = random_model(math.prod(shape), activation=activation, arch=spec, input_shape=shape, seed=1)
    assert model.noise_conditional and model.net.by_name["enc0"].in_shape == shape[:2] + (shape[2] + 1,)
    x = np.random.default_rng(2).random((2, model.input_dim))
    errors = check_model(model, x + np.random.default_rng(3).normal(0, 0.3, x.shape), x, sigma=np.array([0.02, 0.7]))
    assert max(errors.values()) < 1e-6, errors


def test_the_level_reaches_the_network_so_a_wrong_level_changes_the_output():
    model = random_model(35, activation="tanh", arch="unet:2,3,sigma", input_shape=(7, 5, 1), seed=1)
    x = np.random.default_rng(2).random((3, 35))
    a, b = model.reconstruct(x, sigma=0.1), model.reconstruct(x, sigma=np.array([0.1, 0.1, 0.5]))
    np.testing.assert_array_equal(a[:2], b[:2])
    assert np.abs(a[2] - b[2]).max() > 1e-6
    rows = model.net_input(x, np.array([0.01, 0.1, 1.0])).reshape(3, 7, 5, 2)
    np.testing.assert_array_equal(rows[..., 0], x.reshape(3, 7, 5))
    np.testing.assert_allclose(rows[:, :, :, 1], np.array([0.0, 0.5, 1.0])[:, None, None] * np.ones((3, 7, 5)),
                               atol=1e-15)
    assert noise_channel(0.01) == pytest.approx(0) and noise_channel(1.0) == 1


def test_agrees_with_pytorch_autograd():
    torch = pytest.importorskip("torch", reason="torch is not installed: the PyTorch cross-check is skipped")
    F = torch.nn.functional
    shape = (7, 5, 1)
    model = random_model(35, activation="softplus", arch="unet:2,3,sigma", input_shape=shape, seed=4)
    t = {n: torch.tensor(np.array(v), requires_grad=True) for n, v in model.named_params.items()}
    L = model.net.by_name

    def weight(name):
        layer, W = L[name], t[f"{name}.W"]
        return W.reshape(layer.kh, layer.kw, W.shape[0] // (layer.kh * layer.kw), W.shape[1]).permute(3, 2, 0, 1)

    def up(name, h):
        extra = tuple(o - ((n - 1) * 2 - 2 + 4) for o, n in zip(L[name].out_hw, h.shape[2:]))
        return F.conv_transpose2d(h, weight(name), t[f"{name}.b"], stride=2, padding=1, output_padding=extra)

    x = np.random.default_rng(5).random((3, 35))
    sigma = np.array([0.01, 0.3, 0.9])
    level = 1 + torch.log10(torch.tensor(sigma))[:, None, None, None] / 2
    h = torch.cat([torch.tensor(x).reshape(3, 1, 7, 5), level.expand(3, 1, 7, 5)], dim=1)
    h1 = F.softplus(F.conv2d(h, weight("enc0"), t["enc0.b"], stride=2, padding=1))
    h2 = F.softplus(F.conv2d(h1, weight("enc1"), t["enc1.b"], stride=2, padding=1))
    cat = torch.cat([F.softplus(up("up1", h2)), h1], dim=1)
    h = F.softplus(F.conv2d(cat, weight("mix1"), t["mix1.b"], stride=1, padding=1))
    z = up("dec", h).permute(0, 2, 3, 1).reshape(3, -1)
    np.testing.assert_allclose(z.detach().numpy(), model.logits(x, sigma=sigma), rtol=1e-12, atol=1e-12)
    loss = model.loss_and_grad(x, x, sigma=sigma)
    theirs = F.binary_cross_entropy_with_logits(z, torch.tensor(x), reduction="sum") / 3
    theirs.backward()
    assert abs(loss - theirs.item()) < 1e-12 * loss
    for name, tensor in t.items():
        np.testing.assert_allclose(model.named_grads[name], tensor.grad.numpy(), rtol=1e-10, atol=1e-13, err_msg=name)


def test_fit_tells_each_row_the_level_it_was_corrupted_with():
    """fit's first step equals loss_and_grad on the same corrupted batch with each row's own level
    (Corruption.row_sigmas); with one level for all rows it would differ."""
    d = td.load_dataset("glyphs", limit=64)
    c = Corruption.parse("gaussian:0.01..1")
    model = td.DAE(d.dim, arch="unet:4,8,sigma", input_shape=d.image_shape, seed=3, dtype="float64")
    twin = td.DAE(d.dim, arch="unet:4,8,sigma", input_shape=d.image_shape, seed=3, dtype="float64")
    opt = td.SGD(model, lr=0.1)
    fit(model, d, optimizer=opt, corruption=c, epochs=1, batch_size=64, seed=5)
    order = np.random.default_rng([5, 0, 0xBA7C4]).permutation(64)  # fit's epoch-0 order
    x = d.x[order].astype(np.float64)
    x_in = c.apply(twin.backend, x, 5, 0)
    sigma = c.row_sigmas(twin.backend, 64, 5, 0)
    assert sigma.min() < 0.05 and sigma.max() > 0.5  # the levels differ by row
    twin.loss_and_grad(x_in, x, sigma=sigma)
    np.testing.assert_allclose(model.params, twin.params - 0.1 * twin.grads, rtol=1e-12, atol=1e-14)
    twin.loss_and_grad(x_in, x, sigma=float(np.median(sigma)))
    assert np.abs(model.params - (twin.params - 0.1 * twin.grads)).max() > 1e-9


def test_annealed_chain_tells_each_step_its_ladder_level():
    d = td.load_dataset("glyphs", limit=64)
    model = td.DAE(d.dim, arch="unet:4,8,sigma", input_shape=d.image_shape, seed=0)
    told = []
    real = model.net_input

    def spy(x, sigma=None):
        told.append(float(np.asarray(sigma)))
        return real(x, sigma)

    model.net_input = spy
    chain(model, noise_start(8, d.dim, 0), 8, corruption="gaussian:0.01..1", sampler="annealed", levels=4)
    s = make_sampler("annealed", "gaussian:0.01..1", levels=4)
    # r(x_0) at the first level, then after step t the next step's level (the last: the final denoising)
    assert told == [s.sigmas[0]] + [s.sigma(min(t + 1, 8), 8) for t in range(1, 9)]
    assert told[-1] == pytest.approx(0.01) and told[0] == pytest.approx(1.0)


def test_onnx_takes_sigma_and_matches_the_model(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason='onnxruntime is not installed (pip install -e ".[onnx]")')
    from tinydae.export import WHATS, export_onnx

    model = td.DAE(63, arch="unet:3,4,sigma", activation="silu", input_shape=(7, 9), seed=2)
    x = np.random.default_rng(3).random((4, 63)).astype(np.float32)
    sigma = np.array([0.01, 0.05, 0.4, 1.0], np.float32)
    for what in WHATS:
        session = ort.InferenceSession(str(export_onnx(model, tmp_path / f"{what}.onnx", what=what)),
                                       providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["x", "sigma"]
        got = session.run(None, {"x": x, "sigma": sigma})[0]
        np.testing.assert_allclose(got, getattr(model, what)(x, sigma=sigma), rtol=1e-5, atol=2e-6, err_msg=what)


def test_cli_trains_a_noise_conditional_unet_on_a_ladder_and_samples_annealed(tmp_path):
    invoke = CliRunner().invoke
    r = invoke(cli, ["train", "--arch", "unet:4,8,sigma", "--corruption", "gaussian:0.01..1", "--limit", "200",
                     "--epochs", "1", "--batch-size", "32", "--backend", "cpu", "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    ck = td.load_checkpoint(tmp_path / "a" / "checkpoint.h5")
    assert ck.model_config["arch"] == "unet:4,8,sigma" and ck.train_config["corruption"] == "gaussian:0.01..1"
    model, plain = (td.load_model(tmp_path / "a" / "checkpoint.h5", backend=b) for b in ("cpu", "numpy"))
    x = np.random.default_rng(0).random((3, model.input_dim)).astype(np.float32)
    assert model.noise_conditional and plain.noise_conditional  # the NumPy-only runtime too
    np.testing.assert_allclose(plain.reconstruct(x, sigma=0.05), model.reconstruct(x, sigma=0.05), rtol=1e-5, atol=1e-6)
    r = invoke(cli, ["sample", str(tmp_path / "a" / "checkpoint.h5"), "--sampler", "annealed", "--n", "4",
                     "--steps", "4", "--out", str(tmp_path / "s.png"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["png"]
    r = invoke(cli, ["sample", str(tmp_path / "a" / "checkpoint.h5"), "--n", "4", "--steps", "2",
                     "--out", str(tmp_path / "m.png")])
    assert r.exit_code == 2 and r.stderr.startswith("error: a noise-conditional model is told the noise level")
    assert len(r.stderr.strip().splitlines()) == 1


def test_mistakes_are_clear_errors():
    with pytest.raises(ConfigError, match="cannot be tied"):
        td.DAE(784, arch="unet:4,8,sigma", tied=True)
    with pytest.raises(ConfigError, match="a U-Net or mlp option, written last"):
        td.DAE(784, arch="conv:4,sigma")
    model = td.DAE(784, arch="unet:4,8,sigma")
    x = np.full((2, 784), 0.5, np.float32)
    with pytest.raises(ConfigError, match="pass the noise level of the input, sigma="):
        model.reconstruct(x)
    for bad in (0.0, -1.0, np.nan, np.array([0.1, 0.2, 0.3])):
        with pytest.raises(DataError, match="sigma must"):
            model.reconstruct(x, sigma=bad)
    with pytest.raises(ConfigError, match="has none: use gaussian"):
        fit(model, np.full((4, 784), 0.5, np.float32), corruption="masking:0.3", epochs=1)
    blind = td.DAE(784, arch="unet:4,8")
    np.testing.assert_array_equal(blind.reconstruct(x), blind.reconstruct(x, sigma=0.3))  # a blind model ignores it


def test_ddim_steps_are_the_deterministic_update_down_the_ladder():
    """ddim: the start put at the top level (x + sigma_1 n, one draw), then x0 = r(x, sigma_t),
    x <- x0 + (sigma_(t+1) / sigma_t) (x - x0), sigma geometric from the range's top to its
    bottom, sigma_(T+1) = 0; the sample is the last x0; no draw after the start."""
    from tinydae.corruption import gaussian
    from tinydae.rng import STREAM_LANGEVIN

    d = td.load_dataset("glyphs", limit=64)
    model = td.DAE(d.dim, arch="unet:4,8,sigma", input_shape=d.image_shape, seed=0, dtype="float64")
    x = noise_start(5, d.dim, 0).astype(np.float64)
    got = chain(model, x, 3, corruption="gaussian:0.01..1", sampler="ddim", keep_chains=5, seed=1)
    want, shown = gaussian(1.0).apply(model.backend, x, 1, 0, STREAM_LANGEVIN), [x]
    for t, (s, s_next) in enumerate([(1.0, 0.1), (0.1, 0.01), (0.01, 0.0)]):
        x0 = model.reconstruct(want, sigma=s)
        want = x0 + (s_next / s) * (want - x0)
        shown.append(x0)
    np.testing.assert_allclose(got.samples, want, rtol=1e-6, atol=1e-7)  # float32 copies of float64 states
    np.testing.assert_allclose(got.trajectory, np.stack(shown, 1), rtol=1e-6, atol=1e-7)
    other = chain(model, x, 3, corruption="gaussian:0.01..1", sampler="ddim", keep_chains=0, seed=1, batch_size=2)
    np.testing.assert_allclose(other.samples, got.samples, rtol=1e-6, atol=1e-7)  # any batch size: the same draw
    moved = chain(model, x, 3, corruption="gaussian:0.01..1", sampler="ddim", keep_chains=0, seed=2)
    assert np.abs(moved.samples - got.samples).max() > 1e-4  # the seed draws the start's noise
    with pytest.raises(ConfigError, match="walks a range of Gaussian levels"):
        chain(model, x, 3, corruption="gaussian:0.3", sampler="ddim")
    with pytest.raises(ConfigError, match="step_size applies to the langevin and annealed samplers"):
        make_sampler("ddim", "gaussian:0.01..1", step_size=0.1)


def test_a_noise_conditional_mlp_gradchecks_exports_and_refuses_npz(tmp_path):
    """mlp:...,sigma (the claim-1 ladder's DAEs): the level as one more input; float64 gradients,
    ONNX with its sigma input, and the npz / C page refused in one line (it has one input)."""
    from tinydae.export import export_npz, export_onnx

    model = random_model(7, None, "tanh", arch="mlp:5,3,sigma", seed=1)
    assert model.layout[0] == ("enc0.W", (8, 5)) and model.layout[-1] == ("dec1.b", (7,))
    x = np.random.default_rng(1).random((3, 7))
    assert max(check_model(model, x + 0.1, x, sigma=np.array([0.02, 0.3, 1.0])).values()) < 1e-6
    with pytest.raises(ConfigError, match="cannot be tied"):
        td.DAE(7, arch="mlp:5,3,sigma", tied=True)
    m32 = td.DAE(7, arch="mlp:5,3,sigma", seed=2)
    with pytest.raises(ConfigError, match="also reads the noise level"):
        export_npz(m32, tmp_path / "m.npz")
    ort = pytest.importorskip("onnxruntime", reason='onnxruntime is not installed (pip install -e ".[onnx]")')
    xs, sg = x.astype(np.float32), np.array([0.02, 0.3, 1.0], np.float32)
    session = ort.InferenceSession(str(export_onnx(m32, tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": xs, "sigma": sg})[0], m32.reconstruct(xs, sigma=sg),
                               rtol=1e-5, atol=1e-6)


def test_review_findings_stay_fixed(tmp_path):
    """A second reviewer's findings: an mlp told sigma on image data (the plane of a U-Net was
    built for it), an empty 'mlp:sigma', a classifier told sigma, evaluate and sample of a model
    trained on a range, spearman of a NaN figure, unknown claim-1 options, a string sigma."""
    from tinydae.classifier import Classifier
    from tinydae.science.densities import run_claim1
    from tinydae.science.experiments import evaluate_checkpoint
    from tinydae.science.features import spearman

    d = td.load_dataset("glyphs", limit=80)
    m = td.DAE(d.dim, arch="mlp:16,sigma", input_shape=d.image_shape, seed=0)
    fit(m, d, corruption="gaussian:0.01..1", epochs=1, batch_size=40, seed=0)  # images, one more input
    assert m.reconstruct(d.x[:3], sigma=0.1).shape == (3, d.dim)
    with pytest.raises(ConfigError, match="layer sizes before 'sigma'"):
        td.DAE(16, arch="mlp:sigma")
    with pytest.raises(ConfigError, match="a classifier reads images alone"):
        Classifier(784, arch="mlp:32,sigma", classes=10)
    nc = td.DAE(d.dim, arch="unet:4,8,sigma", input_shape=d.image_shape, seed=0)
    fit(nc, d, corruption="gaussian:0.01..1", epochs=1, batch_size=40, seed=0)
    out = evaluate_checkpoint(nc, d, n_samples=20, steps=2)
    assert out["sampler"] == "ddim" and out["steps"] == 2
    assert all(np.isfinite(v) for v in out["chain"].values() if isinstance(v, float))
    assert math.isnan(spearman([np.nan, 1, 2], [1, 2, 3])) and math.isnan(spearman([1, 2, 3], [1, np.inf, 3]))
    with pytest.raises(ConfigError, match="got sigma"):
        run_claim1("ladder", quick=True, sigma=(0.1,))
    with pytest.raises(DataError, match="sigma must be a number"):
        nc.reconstruct(d.x[:2], sigma="0.3")
