"""LightningDataModules and shard tools for artwork collections (WebDataset)."""

from artbank_pl.datamodules.artwork import ArtworkDataModule
from artbank_pl.datamodules.content import ContentDataModule
from artbank_pl.datamodules.shards import build_shards, read_manifest

__all__ = ["ArtworkDataModule", "ContentDataModule", "build_shards", "read_manifest"]
