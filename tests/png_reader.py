"""An independent reader for the PNG files tinydae writes, from the PNG specification
(ISO/IEC 15948), so that the tests do not check the encoder against itself: it walks the
chunks, verifies every CRC-32, and undoes all five row filters (tinydae only writes filter 0)."""
import struct
import zlib

import numpy as np


def read_gray_png(data):
    """bytes of an 8-bit grayscale, non-interlaced PNG -> (H, W) uint8"""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    W, H, depth, color, compression, filtering, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, color, compression, filtering, interlace) == (8, 0, 0, 0, 0)
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == H * (W + 1)
    out = np.zeros((H, W), np.int64)
    prev = np.zeros(W, np.int64)
    for y in range(H):
        ftype, row = raw[y * (W + 1)], np.frombuffer(raw, np.uint8, W, y * (W + 1) + 1).astype(np.int64)
        cur = np.zeros(W, np.int64)
        for x in range(W):
            a = cur[x - 1] if x else 0
            b, c = prev[x], (prev[x - 1] if x else 0)
            if ftype == 0:
                pred = 0
            elif ftype == 1:
                pred = a
            elif ftype == 2:
                pred = b
            elif ftype == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[x] = (row[x] + pred) & 255
        out[y], prev = cur, cur
    return out.astype(np.uint8)
