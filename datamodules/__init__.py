"""LightningDataModules and shard tools for artwork collections (WebDataset)."""

from datamodules.artwork import ArtworkDataModule
from datamodules.content import ContentDataModule
from datamodules.shards import build_shards, read_manifest

__all__ = ["ArtworkDataModule", "ContentDataModule", "build_shards", "read_manifest"]
