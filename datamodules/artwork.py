"""``ArtworkDataModule``: artwork collections from WebDataset shards, for training a style bank."""

from __future__ import annotations

import logging
import math
import os
import random
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from PIL import Image, ImageOps
from torch.utils.data import DataLoader

from artbank_pl.datamodules.labels import (
    DEFAULT_COLLECTION_KEY,
    CollectionSelector,
    read_collection_table,
    sample_caption,
)
from artbank_pl.datamodules.resumable import ResumableLoader
from artbank_pl.datamodules.shards import (
    held_out_keys,
    manifest_collections,
    read_manifest,
    resize_shorter_side,
)
from artbank_pl.datamodules.stream import (
    ShardStream,
    check_shards_open,
    decode_image,
    expand_urls,
    from_npy,
    sample_meta,
)
from artbank_pl.errors import ConfigError
from artbank_pl.options import check_at_least, check_resolution

log = logging.getLogger(__name__)


def split_urls(
    manifest_data: dict | None, manifest: str | None, pattern: str | None, split: str
) -> list[str]:
    """Return a split's shard paths: from ``pattern`` when given, else from the manifest.

    Args:
        manifest_data: the manifest as read by ``read_manifest`` (or ``None``).
        manifest: its path (a file, or the folder holding ``manifest.json``).
        pattern: a brace pattern of shards that overrides the manifest's.
        split: ``train`` or ``val``.
    """
    if pattern:
        return expand_urls(pattern)
    if manifest_data is None:
        return []
    root = Path(manifest) if Path(manifest).is_dir() else Path(manifest).parent
    return [str(root / s) for s in manifest_data.get("splits", {}).get(split, {}).get("shards", [])]


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image to a ``[3, H, W]`` float tensor in ``[-1, 1]``."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)


def crop_square(image: Image.Image, size: int, rng: random.Random | None) -> Image.Image:
    """Crop a ``size`` square: at random when ``rng`` is given, else from the centre."""
    return crop_square_at(image, size, rng)[0]


def crop_square_at(
    image: Image.Image, size: int, rng: random.Random | None
) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`crop_square`, and the crop's ``(top, left)`` corner (SDXL's crop conditioning)."""
    w, h = image.size
    left = rng.randint(0, w - size) if rng else (w - size) // 2
    top = rng.randint(0, h - size) if rng else (h - size) // 2
    return image.crop((left, top, left + size, top + size)), (top, left)


def original_size(meta: dict | None, decoded: Image.Image) -> tuple[int, int]:
    """Return a sample's ``(height, width)`` before any resizing (SDXL's size conditioning).

    From its json's ``original_height``/``original_width`` (img2dataset's fields, which
    ``artbank shards build`` writes too) when both are positive integers, else the size it
    was stored at.
    """
    if meta:
        height, width = meta.get("original_height"), meta.get("original_width")
        if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (height, width)):
            return height, width
    return decoded.size[1], decoded.size[0]


class ArtworkTransform:
    """Decode an artwork sample and turn it into a training or validation item.

    Args:
        selector: reads each sample's collection (our ``collection`` json field, another
            field, or a key table) and its bank index.
        resolution: output side in pixels (shorter side resized to it, then cropped).
        train: random crop and flip (training) or centre crop (validation).
        center_crop: crop from the centre even in training.
        random_flip: flip horizontally with probability 0.5 in training.
        cached: read the cached VAE moments (and CLIP features) of ``artbank shards cache``
            (flip picks the mirrored cache). Training then decodes no pixels; validation
            still decodes them for the callbacks that show images (``SampleGrid``), but the
            loss is computed from the cache, without a VAE encode.
        caption_key: json field of the caption (a dotted path); without it, the sample's
            ``.txt``.
    """

    def __init__(
        self,
        selector: CollectionSelector,
        resolution: int,
        train: bool,
        center_crop: bool = False,
        random_flip: bool = True,
        cached: bool = False,
        caption_key: str = "caption",
    ) -> None:
        self.selector = selector
        self.caption_key = caption_key
        self.cached = cached
        self.resolution = resolution
        self.train = train
        self.center_crop = center_crop
        self.random_flip = random_flip

    def __call__(self, sample: dict, rng: random.Random) -> dict:
        """Return ``{pixel_values, collection_idx, caption, __key__}`` for one raw sample."""
        meta = sample_meta(sample) if "json" in sample else None
        item = {
            "collection_idx": self.selector.bank_index(sample),
            "caption": sample_caption(sample, meta, self.caption_key),
            "__key__": sample["__key__"],
        }
        flip = self.train and self.random_flip and rng.random() < 0.5
        if self.cached:
            suffix = "_flip" if flip else ""
            item["moments"] = from_npy(sample[f"moments{suffix}.npy"])
            if f"clip{suffix}.npy" in sample:
                item["clip"] = from_npy(sample[f"clip{suffix}.npy"])
            if "size.npy" in sample:  # SDXL's micro-conditioning (older caches have none)
                item["original_size"] = from_npy(sample["size.npy"]).long()
                item["crop_top_left"] = from_npy(sample[f"crop{suffix}.npy"]).long()
            if self.train:
                return item
        decoded = decode_image(sample)
        resized = resize_shorter_side(decoded, self.resolution)
        crop_rng = rng if self.train and not self.center_crop else None
        image, (top, left) = crop_square_at(resized, self.resolution, crop_rng)
        if flip:  # the crop of the mirrored image sits mirrored
            left = resized.width - self.resolution - left
        item["pixel_values"] = to_tensor(ImageOps.mirror(image) if flip else image)
        item["original_size"] = torch.tensor(original_size(meta, decoded))
        item["crop_top_left"] = torch.tensor((top, left))
        return item


def collate_artworks(items: list[dict]) -> dict:
    """Stack tensors (pixels or cached moments and CLIP features) and collection indices.

    The indices come twice: as a tensor (moved to the device with the batch) and as a list
    of ints (host reads of which collections a batch holds need not wait for the GPU).
    """
    collections = [item["collection_idx"] for item in items]
    batch = {
        "collection_idx": torch.tensor(collections),
        "collection_list": collections,
        "caption": [item["caption"] for item in items],
        "__key__": [item["__key__"] for item in items],
    }
    for key in ("pixel_values", "moments", "clip", "original_size", "crop_top_left"):
        if key in items[0]:
            batch[key] = torch.stack([item[key] for item in items])
    return batch


class ArtworkDataModule(LightningDataModule):
    """Artwork collections from WebDataset shards.

    Training reads resampled shards (an endless stream, reshuffled each pass) cut into
    epochs of ``samples_per_epoch``, split by rank and by worker with the Trainer's rank and
    world size. Validation reads every sample exactly once, in a fixed order.

    Args:
        manifest: ``manifest.json`` (or its folder) from ``artbank shards build``; gives
            shards and collection names.
        train_shards: brace pattern of training shards (instead of, or overriding, the
            manifest's).
        val_shards: brace pattern of validation shards; defaults to the manifest's
            ``val`` split, else to the training shards.
        collections: collection names in bank order; needed without a manifest.
        collection_key: json field naming a sample's collection, a dotted path for nested
            fields (``artist``, ``meta.style``); our shards use ``collection``. Samples of
            other collections are passed over and counted once per collection; a pass over
            the shards that finds none of this run's stops with a line naming the field,
            the values found and the ones wanted.
        collection_table: a file mapping sample keys to collections instead (a json object,
            or ``KEY,COLLECTION`` rows in a csv/tsv file), for shards whose samples carry
            no collection field.
        caption_key: json field of a sample's caption (a dotted path); samples without it
            take their ``.txt``.
        resolution: training image side in pixels.
        center_crop: crop from the centre in training instead of at random.
        random_flip: random horizontal flips in training. Turn them off for a style that
            is not mirror-symmetric at the pixel level (a mosaic or pixel-art grid at fixed
            pixels, lettering): a mirrored sample teaches the grid a pixel off.
        batch_size: samples per batch and per device.
        val_batch_size: validation batch size (default: ``batch_size``).
        num_workers: dataloader workers per device.
        samples_per_epoch: training samples per epoch over all devices (default: the
            manifest's training count; needed without a manifest); with ``max_steps`` this
            only sets how often epoch-level hooks run.
        shuffle_buffer: shuffle-buffer size of the training stream.
        pin_memory: pin host memory for faster copies to the GPU.
    """

    def __init__(
        self,
        manifest: str | None = None,
        train_shards: str | None = None,
        val_shards: str | None = None,
        collections: list[str] | None = None,
        collection_key: str = DEFAULT_COLLECTION_KEY,
        collection_table: str | None = None,
        caption_key: str = "caption",
        resolution: int = 512,
        center_crop: bool = False,
        random_flip: bool = True,
        batch_size: int = 4,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        samples_per_epoch: int | None = None,
        shuffle_buffer: int = 256,
        pin_memory: bool = True,
    ) -> None:
        super().__init__()
        self.check_options(resolution, batch_size, val_batch_size, num_workers,
                           samples_per_epoch, shuffle_buffer)  # fmt: skip
        # the resolved names are the model's hyperparameter; two differing copies clash
        self.save_hyperparameters(ignore=["collections"])
        self._manifest = read_manifest(manifest) if manifest else None
        self.collections = self._collection_names(collections)
        self.train_urls, self.val_urls = self._shard_urls(manifest, train_shards, val_shards)
        self.held_out = held_out_keys(self._manifest)
        if samples_per_epoch is None and not self._manifest:
            raise ConfigError(
                "data.samples_per_epoch is needed for shards without a manifest: give the "
                "epoch length in samples"
            )
        self.collection_key, table = self._labels(collection_key, collection_table)
        self.table = read_collection_table(table) if table else None
        self.rank, self.world_size = 0, 1

    def _labels(self, key: str, table: str | None) -> tuple[str, str | None]:
        """Return the collection field (or table): given here, else the index's."""
        labels = (self._manifest or {}).get("labels") or {}
        if key != DEFAULT_COLLECTION_KEY or table:
            return key, table
        return labels.get("collection_key") or key, labels.get("collection_table")

    def selector(self, validation: bool = False) -> CollectionSelector:
        """Return a new reader of the samples' collections (each stream counts its own skips).

        With a split by key in the manifest (``shards index --val-per-collection``), training
        passes over the held-out keys and validation reads only them (unless
        ``data.val_shards`` names validation shards of its own).
        """
        held_out = self.held_out
        if validation and self.hparams.val_shards:
            held_out = None
        return CollectionSelector(self.collection_index, self.collection_key, self.table,
                                  held_out, validation)  # fmt: skip

    def _collection_names(self, collections: list[str] | None) -> list[str]:
        names = list(collections or []) or (
            manifest_collections(self._manifest) if self._manifest else None
        )
        if not names:
            raise ConfigError("ArtworkDataModule needs `manifest`, or `collections` with shards")
        return names

    def _shard_urls(self, manifest, train_shards, val_shards) -> tuple[list[str], list[str]]:
        self.cache = None if train_shards else (self._manifest or {}).get("cache")
        if self.cache and self.cache["resolution"] != self.hparams.resolution:
            raise ConfigError(
                f"the shards of {manifest} cache latents at resolution "
                f"{self.cache['resolution']}, but data.resolution is {self.hparams.resolution}"
            )
        train = split_urls(self._manifest, manifest, train_shards, "train")
        if not train:
            raise ConfigError("no training shards: give `manifest` or `train_shards`")
        return train, split_urls(self._manifest, manifest, val_shards, "val") or train

    @staticmethod
    def collection_names(
        manifest: str | None = None, collections: list[str] | None = None, **_: object
    ) -> list[str] | None:
        """Return the collection names this datamodule would use, given its init arguments.

        The CLI calls this before instantiating anything, to fill the model's
        ``collections``.
        """
        if collections:
            return list(collections)
        if not manifest:
            return None
        return manifest_collections(read_manifest(manifest))

    @staticmethod
    def check_options(
        resolution: int = 512,
        batch_size: int = 4,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        samples_per_epoch: int | None = None,
        shuffle_buffer: int = 256,
        **_: object,
    ) -> None:
        """Refuse numeric options out of range, naming the option.

        Raises:
            ConfigError: an option is out of its range.
        """
        check_resolution("data.resolution", resolution)
        check_at_least("data.batch_size", batch_size, 1)
        check_at_least("data.val_batch_size", val_batch_size, 1)
        check_at_least("data.num_workers", num_workers, 0)
        check_at_least("data.samples_per_epoch", samples_per_epoch, 1)
        check_at_least("data.shuffle_buffer", shuffle_buffer, 1)

    @classmethod
    def check_config(
        cls,
        model_args: dict,
        manifest: str | None = None,
        train_shards: str | None = None,
        **init_args: object,
    ) -> None:
        """Refuse, before the model is built, data that cannot train this model.

        The CLI calls this before instantiating anything (loading Stable Diffusion takes
        a while; a run that cannot read a shard should not wait for it).

        Raises:
            DataError: no training shard opens.
            ConfigError: an option is out of range, or the latent cache was made with
                another ``pretrained`` (or ``vision_model``) than the model's.
        """
        cls.check_options(**init_args)
        data = read_manifest(manifest) if manifest else None
        check_shards_open(split_urls(data, manifest, train_shards, "train"), "training")
        cache = (data or {}).get("cache") if not train_shards else None
        if not cache:
            return
        for key in ("pretrained", "vision_model"):
            cached, wanted = cache.get(key), model_args.get(key)
            if cached and wanted and cached != wanted:
                raise ConfigError(
                    f"{manifest} caches features of {key}={cached!r} but the model uses "
                    f"{key}={wanted!r}: rebuild the cache or use the uncached shards"
                )

    @property
    def collection_index(self) -> dict[str, int]:
        """Collection name -> bank index."""
        return {name: i for i, name in enumerate(self.collections)}

    def setup(self, stage: str) -> None:
        """Take rank and world size from the Trainer, for splitting the stream."""
        if self.trainer is not None:
            self.rank, self.world_size = self.trainer.global_rank, self.trainer.world_size

    def _samples_per_worker(self) -> int:
        hp = self.hparams
        total = hp.samples_per_epoch
        if total is None:
            total = self._manifest.get("splits", {}).get("train", {}).get("total")
        if not total:
            raise ConfigError("data.samples_per_epoch is needed: the manifest counts no samples")
        parts = self.world_size * max(1, hp.num_workers)
        batches = max(1, math.ceil(total / (parts * hp.batch_size)))
        return batches * hp.batch_size

    def _loader_args(self, stream: ShardStream, batch_size: int, drop_last: bool) -> dict:
        stream.set_distributed(self.rank, self.world_size)
        workers = self.hparams.num_workers
        return dict(
            batch_size=batch_size,
            num_workers=workers,
            collate_fn=collate_artworks,
            pin_memory=self.hparams.pin_memory and torch.cuda.is_available(),
            drop_last=drop_last,
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
        )

    def _training_progress(self) -> tuple[int, int] | None:
        """(epoch, batches of it trained on) of the Trainer, for the stream's position.

        ``processed`` counts the batch whose ``on_train_batch_end`` is saving a checkpoint,
        which the resumed run does not repeat. After an epoch's last batch the resumed run
        starts the next epoch (Lightning closes the finished one without fetching): that is
        the count of epochs started, whether or not the last one was already closed.
        """
        if self.trainer is None:
            return None
        loop = self.trainer.fit_loop
        if loop.epoch_loop.batch_progress.is_last_batch:
            return loop.epoch_progress.current.ready, 0
        return self.trainer.current_epoch, loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> DataLoader:
        """Endless resampled stream, ``samples_per_epoch`` per epoch, full batches only.

        One iterator (and one set of worker processes) serves every epoch.

        Its position is saved in checkpoints (:class:`ResumableLoader`): a resumed run reads
        the batches the interrupted run would have read next.
        """
        hp = self.hparams
        selector = self.selector()
        transform = ArtworkTransform(
            selector, hp.resolution, True, hp.center_crop, hp.random_flip,
            cached=self.cache is not None, caption_key=hp.caption_key,
        )  # fmt: skip
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        stream = ShardStream(
            self.train_urls,
            transform,
            True,
            self._samples_per_worker(),
            hp.shuffle_buffer,
            seed,
            chain_epochs=True,
            select=selector,
        )
        args = self._loader_args(stream, hp.batch_size, drop_last=True)
        self._train_loader = ResumableLoader(stream, self._training_progress, **args)
        return self._train_loader

    def teardown(self, stage: str) -> None:
        """Stop the training stream's worker processes, which live across epochs."""
        loader = getattr(self, "_train_loader", None)
        if loader is not None:
            loader.close()

    def val_dataloader(self) -> DataLoader:
        """One deterministic pass: every validation sample exactly once over all ranks."""
        hp = self.hparams
        if (
            self.val_urls == self.train_urls and self.held_out is None
        ):  # only a run that validates asks
            log.info("no validation split: validating on the training shards")
        cached = self.cache is not None and not hp.val_shards  # the manifest's own shards
        selector = self.selector(validation=True)
        transform = ArtworkTransform(
            selector, hp.resolution, train=False, cached=cached, caption_key=hp.caption_key
        )
        stream = ShardStream(self.val_urls, transform, select=selector)
        batch_size = hp.val_batch_size or hp.batch_size
        return DataLoader(stream, **self._loader_args(stream, batch_size, drop_last=False))
