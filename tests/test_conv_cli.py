"""A conv DAE from the command line: train --arch, resume exactly, sample and improve from its
checkpoint, the architecture recorded in the checkpoint, and one error line for each mistake."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from tinydae import load_checkpoint, load_model
from tinydae.cli import cli

from cli_helpers import one_error_line

CONV = ["--arch", "conv:4,8", "--limit", "200", "--batch-size", "32", "--backend", "cpu",
        "--checkpoint-every", "0"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("conv")
    r = invoke("train", *CONV, "--epochs", "2", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout)


def test_train_records_the_spec_and_image_shape(trained):
    out, summary = trained
    ck = load_checkpoint(out / "checkpoint.h5")
    assert ck.model_config["arch"] == "conv:4,8" and ck.model_config["input_shape"] == [28, 28, 1]
    assert ck.state["step"] == summary["step"] == 2 * 6  # 180 train rows / 32 -> 6 steps
    assert [n for n, _ in ck.layout] == ["enc0.W", "enc0.b", "enc1.W", "enc1.b", "dec0.W", "dec0.b", "dec1.W",
                                         "dec1.b"]
    assert 0 < summary["final"]["val_bce_denoise"] < 544  # below a constant 0.5 guess (784 ln 2)
    assert repr(load_model(out / "checkpoint.h5")).startswith("DAE(conv:4,8 on 28x28x1, relu")


def test_resume_is_bit_identical(trained, tmp_path):
    out, _ = trained
    assert invoke("train", *CONV, "--epochs", "1", "--out", tmp_path).exit_code == 0
    r = invoke("train", "--resume", tmp_path / "checkpoint.h5", "--epochs", "2", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    straight, resumed = load_checkpoint(out / "checkpoint.h5"), load_checkpoint(tmp_path / "checkpoint.h5")
    np.testing.assert_array_equal(resumed.params, straight.params)
    for k in straight.optimizer["buffers"]:
        np.testing.assert_array_equal(resumed.optimizer["buffers"][k], straight.optimizer["buffers"][k])
    assert [h["val_bce_denoise"] for h in resumed.history] == [h["val_bce_denoise"] for h in straight.history]


def test_resume_with_another_architecture_says_what_differs(trained):
    out, _ = trained
    r = invoke("train", "--resume", out / "checkpoint.h5", "--arch", "conv:4,16", "--epochs", "3", "--out", out)
    one_error_line(r, "arch: checkpoint 'conv:4,8' vs requested 'conv:4,16'")
    r = invoke("train", "--resume", out / "checkpoint.h5", "--hidden", "16", "--epochs", "3", "--out", out)
    one_error_line(r, "arch: checkpoint 'conv:4,8' vs requested 'mlp:16'")


def test_sample_and_improve_run_the_conv_model(trained, tmp_path):
    out, _ = trained
    r = invoke("sample", out / "checkpoint.h5", "--n", "8", "--steps", "3", "--out", tmp_path / "s.png",
               "--backend", "cpu")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s.png").stat().st_size > 0


@pytest.mark.parametrize("args,fragments", [
    (["--arch", "conv:4", "--hidden", "16"], ["give --arch or --hidden"]),
    (["--arch", "conv:4,x"], ["'x' is not filters"]),
    (["--arch", "conv:8,8,8,8,8"], ["layer 5", "use fewer stride-2 layers"]),
])
def test_arch_mistakes_are_one_error_line(tmp_path, args, fragments):
    r = invoke("train", "--limit", "50", "--epochs", "1", "--backend", "cpu", *args, "--out", tmp_path / "run")
    one_error_line(r, *fragments)
    assert not (tmp_path / "run" / "checkpoint.h5").exists()


def test_export_writes_onnx_and_refuses_npz_in_one_line(trained, tmp_path):
    out, _ = trained
    r = invoke("export", out / "checkpoint.h5", "--format", "npz", "--out", tmp_path / "m.npz")
    one_error_line(r, "--format npz describes dense (mlp) models only", "export it with --format onnx")
    assert not (tmp_path / "m.npz").exists()
    ort = pytest.importorskip("onnxruntime", reason='onnxruntime is not installed (pip install -e ".[onnx]")')
    r = invoke("export", out / "checkpoint.h5", "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert r.exit_code == 0, r.output
    model = load_model(out / "checkpoint.h5")
    x = np.random.default_rng(0).random((3, 784), dtype=np.float32)
    got = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, model.reconstruct(x), rtol=1e-5, atol=2e-6)
