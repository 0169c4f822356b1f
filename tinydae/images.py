"""PNG grids of images (pillow), written atomically."""
import numpy as np

from tinydae.checkpoint import atomic_write


def grid(rows, image_shape, pad=2, scale=2):
    """rows: list of (n, D) arrays in [0, 1] (clipped) -> (H_total, W_total) uint8 image."""
    H, W = image_shape
    n = max(len(r) for r in rows)
    out = np.full((len(rows) * (H + pad) + pad, n * (W + pad) + pad), 64, np.uint8)
    for i, r in enumerate(rows):
        for j, img in enumerate(np.asarray(r, np.float64)):
            y, x = pad + i * (H + pad), pad + j * (W + pad)
            out[y:y + H, x:x + W] = np.round(np.clip(img.reshape(H, W), 0, 1) * 255)
    return np.kron(out, np.ones((scale, scale), np.uint8)) if scale > 1 else out


def save_grid(path, rows, image_shape, pad=2, scale=2):
    """Write `rows` (each a list of images as flat rows) as one PNG at `path`."""
    from PIL import Image

    img = Image.fromarray(grid(rows, image_shape, pad, scale))
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
