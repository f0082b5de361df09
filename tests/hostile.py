"""Hostile inputs, generated (no binary file is kept in git).

Each function writes one hostile file at ``path`` and returns that path.
"""

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file


def good_image(path: Path, value: int = 120, size: int = 24) -> Path:
    """A small RGB PNG (a good sample, for the hostile ones to sit among)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((size, size, 3), value, np.uint8)
    pixels[: size // 2, :, 0] = 255 - value  # not flat: something to resize
    Image.fromarray(pixels).save(path)
    return path


def png_bytes(size: int = 16) -> bytes:
    """The bytes of a small RGB PNG."""
    data = io.BytesIO()
    Image.new("RGB", (size, size), (200, 40, 40)).save(data, format="PNG")
    return data.getvalue()


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


def not_an_image(path: Path) -> Path:
    """Text under an image's name."""
    path.write_bytes(b"this is not an image")
    return path


def empty_file(path: Path) -> Path:
    """A file of 0 bytes."""
    path.write_bytes(b"")
    return path


def truncated_image(path: Path) -> Path:
    """A PNG cut after its first 60 bytes (the header survives, the pixels do not)."""
    data = io.BytesIO()
    Image.fromarray(np.arange(48 * 48 * 3, dtype=np.uint8).reshape(48, 48, 3)).save(data, "PNG")
    path.write_bytes(data.getvalue()[:60])
    return path


def shard(path: Path, samples: list[dict]) -> Path:
    """A WebDataset tar of ``samples`` (``__key__`` plus extension -> bytes)."""
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            for ext, data in sample.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def artwork(key: str, collection: str, image: bytes | None = None, meta=None) -> dict:
    """One training sample: an image and its JSON (``meta`` replaces the JSON object)."""
    meta = {"collection": collection, "caption": ""} if meta is None else meta
    return {"__key__": key, "png": png_bytes() if image is None else image,
            "json": json.dumps(meta).encode()}  # fmt: skip


def truncated_shard(path: Path) -> Path:
    """A shard cut inside its first sample (a copy that died half-way)."""
    shard(path, [artwork("cut", "monet")])
    path.write_bytes(path.read_bytes()[:700])
    return path


def garbage_shard(path: Path) -> Path:
    """Bytes that are no tar at all under a shard's name."""
    path.write_bytes(b"\x00garbage" * 100)
    return path


def pickled_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint that runs code when unpickled: it would create ``marker``."""

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": {}, "payload": Payload()}, path)
    return path


def truncated_checkpoint(path: Path) -> Path:
    """A checkpoint cut after 20 bytes."""
    torch.save({"state_dict": {}, "global_step": 0}, path)
    path.write_bytes(path.read_bytes()[:20])
    return path


def embedding_file(path: Path, tensor: torch.Tensor, key: str = "emb_params") -> Path:
    """A safetensors embedding file holding ``tensor`` (NaN, a scalar, empty: the caller's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: tensor.contiguous()}, path)
    return path


def nan_embedding(path: Path, dim: int = 32) -> Path:
    """An embedding of 2 vectors, one NaN (a diverged run's export)."""
    tensor = torch.full((2, dim), 0.01)
    tensor[1, 3] = math.nan
    return embedding_file(path, tensor)
