"""LightningDataModules and shard tools for artwork collections (WebDataset).

Names are imported on first use (PEP 562), so ``artbank shards build`` does not pay for
importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from artbank_pl.datamodules.artwork import ArtworkDataModule
    from artbank_pl.datamodules.content import ContentDataModule
    from artbank_pl.datamodules.shards import build_shards, read_manifest

_HOMES = {
    "ArtworkDataModule": "artwork",
    "ContentDataModule": "content",
    "build_shards": "shards",
    "read_manifest": "shards",
}
__all__ = ["ArtworkDataModule", "ContentDataModule", "build_shards", "read_manifest"]


def __getattr__(name: str):
    """Import ``name`` from its module on first access."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
