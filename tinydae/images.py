"""PNG grids of images, written atomically by a small PNG encoder (no imaging library needed).

The encoder writes what tinydae draws and nothing more: 8-bit grayscale, no interlacing, each
row with filter type 0 (none), all rows in one zlib-compressed IDAT chunk (PNG spec, ISO/IEC
15948: signature, IHDR, IDAT, IEND; every chunk is length, type, data, CRC-32 of type + data).
"""
import struct
import zlib

import numpy as np

from tinydae.checkpoint import atomic_write

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def grid(rows, image_shape, pad=2, scale=2):
    """rows: list of (n, D) arrays in [0, 1] (clipped) -> (H_total, W_total) uint8 image.
    image_shape: (H, W), or (H, W, C) channels last, drawn as the mean of its channels (grey)."""
    H, W, C = (*image_shape, 1)[:3]
    n = max(len(r) for r in rows)
    out = np.full((len(rows) * (H + pad) + pad, n * (W + pad) + pad), 64, np.uint8)
    for i, r in enumerate(rows):
        for j, img in enumerate(np.asarray(r, np.float64)):
            y, x = pad + i * (H + pad), pad + j * (W + pad)
            out[y:y + H, x:x + W] = np.round(np.clip(img.reshape(H, W, C).mean(axis=2), 0, 1) * 255)
    return np.kron(out, np.ones((scale, scale), np.uint8)) if scale > 1 else out


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(image):
    """image: (H, W) uint8 -> the bytes of a grayscale PNG file."""
    image = np.ascontiguousarray(image, np.uint8)
    if image.ndim != 2 or 0 in image.shape:
        raise ValueError(f"a PNG needs a non-empty (H, W) uint8 image, got shape {image.shape}")
    H, W = image.shape
    header = struct.pack(">IIBBBBB", W, H, 8, 0, 0, 0, 0)  # 8-bit, grayscale, deflate, filter 0, no interlace
    scanlines = np.hstack([np.zeros((H, 1), np.uint8), image])  # filter byte 0 before each row
    return (PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6))
            + _chunk(b"IEND", b""))


def save_grid(path, rows, image_shape, pad=2, scale=2):
    """Write `rows` (each a list of images as flat rows) as one PNG at `path`."""
    data = png_bytes(grid(rows, image_shape, pad, scale))

    atomic_write(path, lambda f: f.write(data))
