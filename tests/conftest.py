"""Shared fixtures: offline, tiny models, small synthetic collections and shards."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from artbank_pl.datamodules.shards import build_shards  # noqa: E402

COLLECTIONS = {"monet": 6, "hokusai": 5}


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def write_collections(root, counts=COLLECTIONS, size=(80, 64), seed=0):
    """Write random RGB images, one folder per collection, each with its own colour cast."""
    rng = np.random.default_rng(seed)
    for c, (name, n) in enumerate(counts.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            pixels[..., c % 3] = 255 - pixels[..., c % 3] // 4
            Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def image_root(tmp_path_factory):
    return write_collections(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def shard_dir(image_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    build_shards(image_root, out, size=64, maxcount=2, val_per_collection=1)
    return out


@pytest.fixture()
def tiny_task():
    from artbank_pl.tasks import PromptBankTask

    return PromptBankTask(collections=list(COLLECTIONS), num_tokens=2, bank_heads=4)


def make_batch(collection_idx, size=32, keys=None):
    n = len(collection_idx)
    gen = torch.Generator().manual_seed(0)
    return {
        "pixel_values": torch.rand(n, 3, size, size, generator=gen) * 2 - 1,
        "collection_idx": torch.tensor(collection_idx),
        "caption": [""] * n,
        "__key__": keys or [f"k{i}" for i in range(n)],
    }
