"""Export (issue 13): the ONNX graph run in ONNX Runtime, the npz run by a NumPy forward written
from its JSON description alone, and examples/embed/dae.c, each against tinydae's own forward.

Models get random biases (init makes them zero) and weights twice init's, so that pre-activations
of either sign and of order 1 reach every activation: a wrong activation, slope, bias or transpose
shows.  Inputs are never all zero.
"""
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

import tinydae
from tinydae.cli import cli
from tinydae.errors import ConfigError
from tinydae.export import WHATS, export_npz, export_onnx, onnx_graph
from tinydae.layers import HIDDEN_ACTIVATIONS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_PAGE = os.path.join(REPO, "examples", "embed", "dae.c")
CASES = [(act, tied, dtype) for act in HIDDEN_ACTIVATIONS for tied in (False, True)
         for dtype in ("float32", "float64")]
OUTPUT = {"reconstruct": "reconstruction", "encode": "code", "logits": "logits"}


def tolerance(dtype):
    """float32: a few ulps through three GEMMs; float64 far tighter, so that a slope rounded
    to float32 (LeakyRelu's alpha attribute) would fail."""
    return dict(rtol=1e-5, atol=2e-6) if dtype == "float32" else dict(rtol=1e-11, atol=1e-12)


def random_model(act, tied, dtype, input_dim=20, hidden=(16, 6), seed=0, arch=None, input_shape=None):
    """A DAE with its initial (He or Glorot) weights scaled up and random biases (init's are zero)."""
    model = tinydae.DAE(input_dim, None if arch else hidden, activation=act, tied=tied, dtype=dtype, seed=seed,
                        arch=arch, input_shape=input_shape)
    rng = np.random.default_rng(seed)
    for name, p in model.named_params.items():
        p[...] = rng.normal(0, 0.5, p.shape) if name.endswith(".b") else 2 * p
    return model


def random_rows(n, dim, dtype, seed=1):
    return np.random.default_rng(seed).uniform(0.05, 1, (n, dim)).astype(dtype)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_user_error(result, fragment):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def ort():
    pytest.importorskip("onnx", reason='the onnx package is not installed (pip install -e ".[onnx]")')
    return pytest.importorskip("onnxruntime", reason='onnxruntime is not installed (pip install -e ".[onnx]")')


def run_onnx(ort, path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.fixture
def trained(cli_checkpoint):
    """A checkpoint made by `python cli.py train` (conftest.cli_checkpoint)."""
    return cli_checkpoint


# ----------------------------------------------------------------------------------------
# ONNX
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("act,tied,dtype", CASES)
def test_onnx_matches_the_model_for_any_batch(ort, tmp_path, act, tied, dtype):
    model = random_model(act, tied, dtype)
    x = random_rows(7, model.input_dim, dtype)
    for what in WHATS:
        path = export_onnx(model, tmp_path / f"{what}.onnx", what=what)
        for rows in (x[:1], x):  # one file, batch 1 and 7
            y = run_onnx(ort, path, rows)
            assert y.dtype == model.dtype
            np.testing.assert_allclose(y, getattr(model, what)(rows), **tolerance(dtype), err_msg=what)


CONV_CASES = [("conv:3,4", "relu", False, "float32", (7, 5, 2)), ("conv:3k3,4", "tanh", True, "float32", (6, 6, 1)),
              ("conv:2,3,fc6", "softplus", True, "float32", (9, 7, 1)),
              ("conv:3k3,2,fc4,fc3", "leaky_relu", False, "float32", (5, 5, 3))]


@pytest.mark.parametrize("arch,act,tied,dtype,shape", CONV_CASES)
def test_onnx_of_conv_models_matches_the_model(ort, tmp_path, arch, act, tied, dtype, shape):
    """Conv and ConvTranspose (NCHW, the weight permuted once; output_padding for odd sizes),
    Transposes to and from tinydae's channels-last rows, the dense bottleneck between them."""
    model = random_model(act, tied, dtype, int(np.prod(shape)), arch=arch, input_shape=shape)
    x = random_rows(7, model.input_dim, dtype)
    for what in WHATS:
        path = export_onnx(model, tmp_path / f"{what}.onnx", what=what)
        for rows in (x[:1], x):
            np.testing.assert_allclose(run_onnx(ort, path, rows), getattr(model, what)(rows), **tolerance(dtype),
                                       err_msg=what)
    if tied:  # one initializer serves the convolution and its transposed twin
        names = [i.name for i in onnx_graph(model).graph.initializer]
        assert len(names) == len(set(names)) and not any(n.startswith("dec") and n.endswith(".W") for n in names)


def test_onnx_refuses_a_float64_conv_model_that_no_runtime_runs(ort, tmp_path):
    model = random_model("relu", False, "float64", 36, arch="conv:2")
    with pytest.raises(ConfigError, match="ONNX Runtime implements Conv and ConvTranspose for float32 only"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("act,tied,dtype", CASES)
def test_onnx_matches_the_model_on_mnist(ort, tmp_path, mnist_path, act, tied, dtype):
    x = tinydae.load_dataset(mnist_path, limit=7).x.astype(dtype)
    model = random_model(act, tied, dtype, input_dim=784, hidden=(48, 12))
    for what in WHATS:
        path = export_onnx(model, tmp_path / f"{what}.onnx", what=what)
        np.testing.assert_allclose(run_onnx(ort, path, x), getattr(model, what)(x), **tolerance(dtype),
                                   err_msg=what)


def test_onnx_graph_has_a_free_batch_one_copy_of_tied_weights_and_provenance(ort):
    import onnx

    model = random_model("leaky_relu", True, "float64")
    proto = onnx_graph(model, "reconstruct")
    onnx.checker.check_model(proto, full_check=True)
    (x,), (y,) = proto.graph.input, proto.graph.output
    assert [d.dim_param or d.dim_value for d in x.type.tensor_type.shape.dim] == ["batch", 20]
    assert y.name == "reconstruction" and x.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert not any(name.startswith("dec") and name.endswith(".W") for name in inits)  # tied: no copy
    for name, value in inits.items():
        assert value.dtype == np.float64, name
        if name in model.named_params:
            np.testing.assert_array_equal(value, model.named_params[name])
    gemms = [n for n in proto.graph.node if n.op_type == "Gemm"]
    assert [n.input[1] for n in gemms] == ["enc0.W", "enc1.W", "enc1.W", "enc0.W"]
    assert [onnx.helper.get_attribute_value(n.attribute[0]) for n in gemms] == [0, 0, 1, 1]  # transB
    ops = [n.op_type for n in proto.graph.node]  # float64 leaky_relu: Max(z,0) + slope*Min(z,0)
    assert ops.count("Min") == 3 and ops.count("PRelu") == 0  # hidden layers only
    float32 = [n.op_type for n in onnx_graph(random_model("leaky_relu", True, "float32")).graph.node]
    assert float32.count("PRelu") == 3 and float32.count("Min") == 0
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["model_config"]) == model.config and props["what"] == "reconstruct"
    assert props["tinydae_version"] == tinydae.__version__


def test_onnx_runs_at_the_oldest_opset_offered(ort, tmp_path):
    model = random_model("softplus", True, "float64")  # the composed softplus: the most ops
    x = random_rows(3, model.input_dim, "float64")
    path = export_onnx(model, tmp_path / "m.onnx", opset=tinydae.export.MIN_OPSET)
    np.testing.assert_allclose(run_onnx(ort, path, x), model.reconstruct(x), **tolerance("float64"))


def test_onnx_bad_requests_are_config_errors(ort, tmp_path):
    model = random_model("relu", False, "float32")
    with pytest.raises(ConfigError, match="what"):
        export_onnx(model, tmp_path / "m.onnx", what="decode")
    with pytest.raises(ConfigError, match="opset"):
        export_onnx(model, tmp_path / "m.onnx", opset=5)
    with pytest.raises(ConfigError, match="format"):
        tinydae.export.export(model, tmp_path / "m.tflite", "tflite")
    assert os.listdir(tmp_path) == []


def test_missing_onnx_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[onnx\]"'):
        export_onnx(random_model("relu", False, "float32"), tmp_path / "m.onnx")


# ----------------------------------------------------------------------------------------
# npz: a NumPy forward written from the description alone
# ----------------------------------------------------------------------------------------

NUMPY_ACTIVATIONS = {
    "relu": lambda z, s: np.maximum(z, 0),
    "leaky_relu": lambda z, s: np.where(z > 0, z, s * z),
    "tanh": lambda z, s: np.tanh(z),
    "sigmoid": lambda z, s: 1 / (1 + np.exp(-z)),
    "softplus": lambda z, s: np.logaddexp(0, z),
    "silu": lambda z, s: z / (1 + np.exp(-z)),
    "identity": lambda z, s: z,
}


def npz_forward(path, x):
    """-> (encode(x), reconstruct(x)) computed from the npz and its JSON description only."""
    z = np.load(path)
    desc = json.loads(z["model.json"].tobytes())
    assert desc["format"] == "tinydae-npz" and desc["format_version"] == 1
    h, code = x.astype(desc["dtype"]), None
    for n, layer in enumerate(desc["layers"]):
        W = z[layer["W"]]
        assert W.dtype == desc["dtype"] and W.flags.c_contiguous
        W = W.T if layer["transposed"] else W
        assert W.shape == (layer["fan_in"], layer["fan_out"]) and z[layer["b"]].shape == (layer["fan_out"],)
        h = NUMPY_ACTIVATIONS[layer["activation"]](h @ W + z[layer["b"]], desc["leaky_slope"])
        if n + 1 == desc["encoder_layers"]:
            code = h
    assert desc["output"] == "sigmoid"
    return code, 1 / (1 + np.exp(-h))


@pytest.mark.parametrize("act,tied,dtype", CASES)
def test_npz_runs_from_its_description(tmp_path, act, tied, dtype):
    model = random_model(act, tied, dtype)
    x = random_rows(7, model.input_dim, dtype)
    path = export_npz(model, tmp_path / "m.npz")
    code, r = npz_forward(path, x)
    np.testing.assert_allclose(code, model.encode(x), **tolerance(dtype))
    np.testing.assert_allclose(r, model.reconstruct(x), **tolerance(dtype))
    with zipfile.ZipFile(path) as zf:  # STORED members: what dae.c (and a JS reader) slices out
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        names = [i.filename for i in zf.infolist()]
    assert names[0] == "model.json.npy" and ("dec0.W.npy" in names) == (not tied)
    desc = json.loads(np.load(path)["model.json"].tobytes())
    assert desc["tied"] == tied and desc["activation"] == act and desc["model_config"] == model.config
    assert list(desc)[-1] == "layers"  # dae.c scans from "layers" on


def test_npz_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    path.write_bytes(b"the previous export")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        export_npz(random_model("relu", False, "float32"), path)
    assert path.read_bytes() == b"the previous export" and os.listdir(tmp_path) == ["m.npz"]


# ----------------------------------------------------------------------------------------
# The page of C
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dae_c(tmp_path_factory):
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler (cc) on PATH: examples/embed/dae.c is not built")
    exe = tmp_path_factory.mktemp("c") / "dae"
    r = subprocess.run([cc, "-O2", "-std=c99", C_PAGE, "-lm", "-o", str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr  # the README's command, with -o
    return str(exe)


def run_c(exe, npz, x, tmp_path):
    rows = tmp_path / "rows.txt"
    np.savetxt(rows, x, fmt="%.17g")  # exact for float32 and float64 alike
    r = subprocess.run([exe, str(npz), str(rows)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr, r.stderr
    return np.loadtxt(r.stdout.splitlines(), ndmin=2)


def test_c_page_matches_a_trained_checkpoint(dae_c, trained, tmp_path, rng):
    npz = tmp_path / "model.npz"
    r = invoke("export", trained, "--format", "npz", "--out", npz)
    assert r.exit_code == 0, r.output
    model = tinydae.load_model(trained)
    x = np.concatenate([tinydae.load_dataset("glyphs", limit=5).x, rng.uniform(0.05, 1, (2, 784))])
    y = run_c(dae_c, npz, x, tmp_path)
    np.testing.assert_allclose(y, model.reconstruct(x), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("act,tied,dtype", CASES)
def test_c_page_runs_every_activation_tied_and_dtype(dae_c, tmp_path, act, tied, dtype):
    model = random_model(act, tied, dtype)
    x = random_rows(3, model.input_dim, dtype)
    y = run_c(dae_c, export_npz(model, tmp_path / "m.npz"), x, tmp_path)
    np.testing.assert_allclose(y, model.reconstruct(x), rtol=1e-5, atol=2e-6)  # it prints 9 digits


def test_c_page_refuses_a_compressed_npz(dae_c, tmp_path):
    z = np.load(export_npz(random_model("relu", False, "float32"), tmp_path / "m.npz"))
    np.savez_compressed(tmp_path / "c.npz", **{k: z[k] for k in z.files})
    r = subprocess.run([dae_c, str(tmp_path / "c.npz")], input="0.5\n", capture_output=True, text=True)
    assert r.returncode == 1 and "compressed" in r.stderr


# ----------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------


def test_cli_exports_onnx_for_each_what(ort, trained, tmp_path):
    model = tinydae.load_model(trained)
    x = tinydae.load_dataset("glyphs", limit=3).x
    for what in WHATS:
        out = tmp_path / f"{what}.onnx"
        r = invoke("export", trained, "--format", "onnx", "--what", what, "--out", out)
        assert r.exit_code == 0, r.output
        assert str(out) in r.stdout and what in r.stdout
        np.testing.assert_allclose(run_onnx(ort, out, x), getattr(model, what)(x), **tolerance("float32"))


def test_cli_exports_npz_and_overwrites_only_when_asked(trained, tmp_path):
    out = tmp_path / "sub" / "model.npz"
    assert invoke("export", trained, "--format", "npz", "--out", out).exit_code == 0
    model = tinydae.load_model(trained)
    x = tinydae.load_dataset("glyphs", limit=3).x
    np.testing.assert_allclose(npz_forward(out, x)[1], model.reconstruct(x), **tolerance("float32"))
    before = out.read_bytes()
    assert_user_error(invoke("export", trained, "--format", "npz", "--out", out), "--overwrite")
    out.write_bytes(b"old")
    assert invoke("export", trained, "--format", "npz", "--out", out, "--overwrite").exit_code == 0
    assert out.read_bytes() == before  # same checkpoint, same bytes


def test_cli_user_errors_are_one_line(trained, tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    assert_user_error(invoke("export", trained, "--format", "tflite", "--out", out), "unknown export format")
    assert_user_error(invoke("export", trained, "--what", "decode", "--out", out), "unknown --what")
    assert_user_error(invoke("export", trained, "--format", "npz", "--what", "encode", "--out", out),
                      "--format onnx")
    assert_user_error(invoke("export", tmp_path / "nope.h5", "--format", "npz", "--out", out), "nope.h5")
    # options are checked before the checkpoint is read
    assert_user_error(invoke("export", tmp_path / "nope.h5", "--format", "tflite", "--out", out), "format")
    assert_user_error(invoke("export", trained, "--format", "npz", "--out", tmp_path), "is a directory")
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert_user_error(invoke("export", trained, "--out", out), 'pip install -e ".[onnx]"')
    assert not out.exists()


def test_readme_shows_the_c_page_as_it_is():
    """The README shows the C page (issue 13); the copy there must be the file the tests build."""
    import re

    with open(os.path.join(REPO, "README.md")) as f:
        blocks = re.findall(r"^```c\n(.*?)^```", f.read(), flags=re.S | re.M)
    assert len(blocks) == 1, f"expected one ```c block in README.md, found {len(blocks)}"
    with open(C_PAGE) as f:
        assert blocks[0] == f.read()


def test_cli_never_writes_over_its_checkpoint(trained, tmp_path):
    """Review findings: --out naming the checkpoint (directly or through a link) is refused even
    with --overwrite, the checkpoint unchanged; an empty or missing --out is one error line."""
    import shutil as _shutil

    ckpt = tmp_path / "ck.h5"
    _shutil.copy(trained, ckpt)
    before = ckpt.read_bytes()
    for fmt in ("onnx", "npz"):
        assert_user_error(invoke("export", ckpt, "--format", fmt, "--out", ckpt, "--overwrite"), "itself")
    link = tmp_path / "link.h5"
    link.symlink_to(ckpt)
    assert_user_error(invoke("export", ckpt, "--format", "npz", "--out", link, "--overwrite"), "itself")
    assert ckpt.read_bytes() == before
    tinydae.load_model(ckpt)  # still a checkpoint
    assert_user_error(invoke("export", ckpt, "--format", "npz", "--out", ""), "--out")
    assert_user_error(invoke("export", ckpt, "--format", "npz"), "--out")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_leaky_relu_runs_at_every_opset(ort, dtype, tmp_path):
    """Review finding: double PRelu runs in ONNX Runtime only at opsets 16-18, so a float64
    leaky_relu layer is composed from Max, Min and Mul instead; every opset the onnx package
    offers from 13 on must load and agree."""
    import onnx

    model = random_model("leaky_relu", False, dtype)
    x = np.random.default_rng(3).standard_normal((5, model.input_dim)).astype(dtype)
    for opset in range(13, onnx.defs.onnx_opset_version() + 1):
        path = tmp_path / f"m{opset}.onnx"
        export_onnx(model, path, "logits", opset=opset)
        np.testing.assert_allclose(run_onnx(ort, path, x), model.logits(x), **tolerance(dtype),
                                   err_msg=f"opset {opset}")


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "softplus"])
def test_c_page_passes_nan_on_as_tinydae_does(dae_c, tmp_path, act):
    """Review finding: `z > 0 ? z : 0` turned a NaN input into an ordinary-looking number; the
    C page now gives NaN where tinydae does (and ordinary numbers elsewhere)."""
    model = random_model(act, False, "float32")
    x = random_rows(2, model.input_dim, "float32")
    x[0, 3] = np.nan
    want = model.reconstruct(x, check=False)  # NaN passed on: the unchecked path
    assert np.isnan(want[0]).all() and np.isfinite(want[1]).all()
    y = run_c(dae_c, export_npz(model, tmp_path / "m.npz"), x, tmp_path)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    np.testing.assert_allclose(y[1], want[1], rtol=1e-5, atol=2e-6)
