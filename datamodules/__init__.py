"""LightningDataModules and shard tools for artwork collections (WebDataset)."""

from datamodules.artwork import ArtworkDataModule
from datamodules.shards import build_shards, read_manifest

__all__ = ["ArtworkDataModule", "build_shards", "read_manifest"]
