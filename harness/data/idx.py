"""The IDX format of (Fashion-)MNIST: a 4-byte magic (0, 0, type code, number of dimensions),
one big-endian uint32 per dimension, then the values in C order. Only unsigned bytes (type code
0x08) are accepted, which is what every MNIST-family file holds."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from harness.errors import UserError

IMAGES_MAGIC = 0x00000803  # ubyte, 3 dimensions: N x rows x cols
LABELS_MAGIC = 0x00000801  # ubyte, 1 dimension: N


def read_idx_bytes(path: Path, what: str) -> bytes:
    """The IDX bytes of ``path``, gunzipped when the name ends in .gz; a UserError starting
    with ``what`` (the data set) when it cannot be read."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if path.name.endswith(".gz") else raw
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{what}: cannot read {path}: {' '.join(str(exc).split()) or type(exc).__name__}") from None


def parse_idx(blob: bytes, magic: int, where: str) -> np.ndarray:
    """The uint8 array an IDX file holds, checked against the expected ``magic``."""
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(blob) < 4:
        raise UserError(f"{where}: not an IDX file ({len(blob)} bytes, shorter than the 4-byte magic)")
    found = int.from_bytes(blob[:4], "big")
    if found != magic:
        raise UserError(f"{where}: bad IDX magic 0x{found:08x}, expected 0x{magic:08x}")
    if len(blob) < header:
        raise UserError(f"{where}: truncated IDX header ({len(blob)} of {header} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(blob, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    body = len(blob) - header
    if body < expected:
        raise UserError(f"{where}: truncated data: {body} bytes for dimensions "
                        f"{' x '.join(map(str, dims))} ({expected} bytes)")
    if body > expected:
        raise UserError(f"{where}: {body - expected} bytes after the data of dimensions "
                        f"{' x '.join(map(str, dims))}")
    return np.frombuffer(blob, dtype=np.uint8, offset=header).reshape(dims)
