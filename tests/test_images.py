"""tinydae's PNG encoder against an independent reader of the PNG spec (and pillow when present)."""
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from png_reader import read_gray_png
from tinydae.images import grid, png_bytes, save_grid


@settings(max_examples=30)
@given(h=st.integers(1, 40), w=st.integers(1, 70), seed=st.integers(0, 2**32 - 1))
def test_png_round_trips_through_an_independent_reader(h, w, seed):
    image = np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)
    np.testing.assert_array_equal(read_gray_png(png_bytes(image)), image)


def test_pillow_reads_the_same_pixels():
    Image = pytest.importorskip("PIL.Image", reason="pillow is not installed (an optional cross-check)")
    image = np.random.default_rng(3).integers(0, 256, (17, 29), dtype=np.uint8)
    with Image.open(io.BytesIO(png_bytes(image))) as img:
        assert img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), image)


def test_save_grid_draws_each_image_in_its_cell(tmp_path):
    rng = np.random.default_rng(0)
    rows = [rng.random((3, 12)), rng.random((2, 12))]  # two rows of 3x4 images, the second shorter
    save_grid(tmp_path / "g.png", rows, (3, 4), pad=1, scale=2)
    img = read_gray_png((tmp_path / "g.png").read_bytes())
    assert img.shape == (2 * (2 * 4 + 1), 2 * (3 * 5 + 1))
    small = img[::2, ::2]  # undo the 2x scale
    np.testing.assert_array_equal(small, grid(rows, (3, 4), pad=1, scale=1))
    cell = small[1 + 4:1 + 4 + 3, 1 + 5:1 + 5 + 4]  # row 1, image 1
    np.testing.assert_array_equal(cell, np.round(rows[1][1].reshape(3, 4) * 255))
    assert (small[5:8, 11:15] == 64).all()  # the missing third image of row 1 stays background
    assert not list(tmp_path.glob("*.tmp-*"))  # written atomically, nothing left behind


def test_png_rejects_what_it_cannot_encode():
    for bad in (np.zeros((0, 4), np.uint8), np.zeros((2, 3, 3), np.uint8)):
        with pytest.raises(ValueError, match="non-empty"):
            png_bytes(bad)
