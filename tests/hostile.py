"""Hostile inputs, generated (no binary file is kept in git)."""

from pathlib import Path

import numpy as np
from PIL import Image


def decompression_bomb(path: Path) -> Path:
    """A small PNG that declares 196 million pixels (over twice PIL's bomb limit)."""
    Image.new("1", (14000, 14000)).save(path)
    return path


def elongated(path: Path) -> Path:
    """A 60000 x 1 strip."""
    Image.fromarray(np.full((1, 60000, 3), 90, np.uint8)).save(path)
    return path


def grey16(path: Path, value: int = 30000) -> Path:
    """A 16-bit greyscale PNG of one value (of 65535)."""
    Image.fromarray(np.full((24, 24), value, np.uint16)).save(path)
    return path


def bad_utf8_caption(image: Path) -> Path:
    """A caption file beside ``image`` that is not UTF-8."""
    path = image.with_suffix(".txt")
    path.write_bytes(b"\xff\xfe caption \xc3\x28")
    return path
