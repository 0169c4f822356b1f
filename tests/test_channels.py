"""Images with channels (issue 20, item 5): (N, H, W, C) arrays in .npz / .h5 keep their shape
through loading, a conv DAE's spec, training, PNG grids (drawn grey: the channels' mean),
chains and the blur of the feature-map checks."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

import tinydae as td
from tinydae.cli import cli
from tinydae.errors import DataError
from tinydae.science.features import box_blur

from png_reader import read_gray_png


def rgb(n=60, H=8, W=6, seed=0):
    return np.random.default_rng(seed).random((n, H, W, 3)).astype(np.float32)


def test_channels_last_arrays_keep_their_shape(tmp_path):
    x = rgb()
    np.savez(tmp_path / "rgb.npz", x=x)
    ds = td.load_dataset(str(tmp_path / "rgb.npz"))
    assert ds.image_shape == (8, 6, 3) and ds.dim == 144
    np.testing.assert_array_equal(ds.x[1].reshape(8, 6, 3), x[1])  # rows are the images, channels last
    np.savez(tmp_path / "one.npz", x=x[..., :1])
    assert td.load_dataset(str(tmp_path / "one.npz")).image_shape == (8, 6)  # C = 1: plain images, as before
    np.savez(tmp_path / "n1hw.npz", x=np.moveaxis(x[..., :1], -1, 1))  # (N, 1, H, W), PyTorch's layout
    one = td.load_dataset(str(tmp_path / "n1hw.npz"))
    assert one.image_shape == (8, 6)
    np.testing.assert_array_equal(one.x[1], x[1, ..., 0].reshape(-1))


def test_channels_first_arrays_are_refused_not_misread(tmp_path):
    np.savez(tmp_path / "nchw.npz", x=np.moveaxis(rgb(), -1, 1))
    with pytest.raises(DataError, match=r"look like channels first \(N, C, H, W\).*np.moveaxis\(a, 1, -1\)"):
        td.load_dataset(str(tmp_path / "nchw.npz"))


def test_box_blur_blurs_each_channel_apart():
    x = rgb(4)
    blurred = box_blur(x.reshape(4, -1), (8, 6, 3)).reshape(4, 8, 6, 3)
    for c in range(3):
        np.testing.assert_allclose(blurred[..., c], box_blur(x[..., c].reshape(4, -1), (8, 6)).reshape(4, 8, 6),
                                   rtol=1e-6)


def test_a_conv_dae_trains_and_samples_on_colour_images(tmp_path):
    np.savez(tmp_path / "rgb.npz", x=rgb())
    runner = CliRunner()
    r = runner.invoke(cli, ["train", "--data", str(tmp_path / "rgb.npz"), "--arch", "conv:4,8", "--epochs", "1",
                            "--batch-size", "16", "--backend", "cpu", "--out", str(tmp_path / "run"), "--json"],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    ck = td.load_checkpoint(tmp_path / "run" / "checkpoint.h5")
    assert ck.model_config["input_shape"] == [8, 6, 3] and ck.model_config["arch"] == "conv:4,8"
    img = read_gray_png((tmp_path / "run" / "samples.png").read_bytes())
    assert img.shape == (2 * (3 * (8 + 2) + 2), 2 * (6 * (6 + 2) + 2))  # 3 rows x 6 validation images, 8x6
    r = runner.invoke(cli, ["sample", str(tmp_path / "run" / "checkpoint.h5"), "--n", "3", "--steps", "2",
                            "--out", str(tmp_path / "s.png"), "--backend", "cpu", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["png"] == str(tmp_path / "s.png")
