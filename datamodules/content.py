"""``ContentDataModule``: content images to stylize, from a folder or WebDataset shards."""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset

from artbank_pl.datamodules.artwork import crop_square, to_tensor
from artbank_pl.datamodules.shards import (
    images_per_shard,
    load_rgb,
    read_manifest,
    resize_shorter_side,
    stored_splits,
)
from artbank_pl.datamodules.stream import (
    ShardStream,
    StreamPart,
    decode_image,
    expand_urls,
    sample_meta,
    shard_stem,
)
from artbank_pl.errors import DataError
from artbank_pl.options import check_at_least, check_resolution
from artbank_pl.styles import IMAGE_SUFFIXES, image_caption, image_files

log = logging.getLogger(__name__)


def folder_key(root: Path, path: Path) -> str:
    """Key of a content image: its path under the folder, without suffix, made file-safe."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", path.relative_to(root).with_suffix("").as_posix())


def folder_keys(root: Path, files: list[Path]) -> list[str]:
    """Return unique, stable keys of a folder's images (the names of their outputs).

    Files whose file-safe keys coincide (``photo.jpg`` and ``photo.png``, ``a b.jpg`` and
    ``a_b.jpg``, ``sub/y.jpg`` and ``sub_y.jpg``) each get a short hash of their relative
    path appended, so no output overwrites another; every other key stays readable.
    """
    keys = [folder_key(root, path) for path in files]
    counts = Counter(keys)

    def path_hash(path: Path) -> str:
        relative = path.relative_to(root).as_posix().encode()
        return hashlib.blake2b(relative, digest_size=4).hexdigest()

    return [
        f"{key}-{path_hash(path)}" if counts[key] > 1 else key
        for key, path in zip(keys, files, strict=True)
    ]


def prepare(image: Image.Image, resolution: int) -> Image.Image:
    """Resize the shorter side to ``resolution`` and centre-crop a square."""
    return crop_square(resize_shorter_side(image, resolution), resolution, None)


def whole_batch_length(
    sizes: list[int], rank: int, world_size: int, batching: tuple[int, int]
) -> int:
    """Return a stream's DataLoader length: each worker's share rounded up to whole batches.

    ``sizes[i]`` is the items of the stream's ``i``-th unit (an image, a shard), split over
    the parts (rank x worker) as the streams split them, every ``part.count``-th unit.
    ``batching`` is the loader's (batch size, workers).
    """
    batch_size, workers = batching[0], max(1, batching[1])
    batches = 0
    for worker in range(workers):
        part = StreamPart.of(rank, world_size, workers, worker)
        batches += math.ceil(sum(sizes[part.index :: part.count]) / batch_size)
    return batches * batch_size


class FolderStream(IterableDataset):
    """Images of a folder (recursively, sorted), split by rank and worker, read once.

    Args:
        root: the folder, or one image file (its folder is then the root).
        resolution: output side in pixels.
    """

    def __init__(self, root: Path, resolution: int) -> None:
        super().__init__()
        if root.is_file():
            root, self.files = root.parent, [root]
        else:
            self.files = image_files(root, recursive=True)
        self.root, self.resolution = root, resolution
        self.keys = dict(zip(self.files, folder_keys(root, self.files), strict=True))
        if not self.files:
            raise DataError(f"content folder {root} holds no image")
        self.rank, self.world_size = 0, 1
        self.skipped = 0
        self.batching = (1, 0)  # (batch size, workers) of the DataLoader, for __len__

    def __len__(self) -> int:
        """Return the rank's images, each worker's share rounded up to whole batches.

        A ``DataLoader`` over an iterable dataset takes ``ceil(len / batch_size)`` as its
        number of batches; with this length that is exact (each worker yields its own last,
        partial batch), so the progress bar shows the right total. ``batching`` holds the
        loader's (batch size, workers).
        """
        return whole_batch_length([1] * len(self.files), self.rank, self.world_size,
                                  self.batching)  # fmt: skip

    def set_distributed(self, rank: int, world_size: int) -> None:
        """Set this process's rank and the world size."""
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[dict]:
        part = StreamPart.current(self.rank, self.world_size)
        for path in self.files[part.index :: part.count]:
            try:
                image = load_rgb(path, self.resolution, crop=True)
                caption = image_caption(path) or ""
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                self.skipped += 1
                log.warning(
                    "skipping unreadable content image %s: %s (%d skipped)", path, err, self.skipped
                )
                continue
            yield {
                "pixel_values": to_tensor(image),
                "__key__": self.keys[path],
                "caption": caption,
                "source": str(path),
            }


class CountedShardStream(ShardStream):
    """A content stream of shards whose sample counts the manifest gives: its length is exact.

    Each part (rank x worker) reads whole shards, so its items are the sum of its shards'
    counts; as for :class:`FolderStream`, each worker's share is rounded up to whole
    batches, so a ``DataLoader`` reports the exact number of batches and the progress bar
    a total. Unreadable samples only make a part end early.

    Args:
        urls: the shards.
        to_item: the content transform.
        lengths: samples with an image in each shard, in ``urls`` order.
    """

    def __init__(self, urls: list[str], to_item, lengths: list[int]) -> None:
        super().__init__(urls, to_item, mark_shards=True)
        self.lengths = list(lengths)
        self.batching = (1, 0)  # (batch size, workers) of the DataLoader, for __len__

    def __len__(self) -> int:
        """Return the rank's items, each worker's share rounded up to whole batches."""
        return whole_batch_length(self.lengths, self.rank, self.world_size, self.batching)


def shard_content_item(resolution: int):
    """Return a ShardStream transform for content samples (any image + optional json)."""

    def to_item(sample: dict, rng: random.Random) -> dict:
        meta = sample_meta(sample) if "json" in sample else {}
        return {
            "pixel_values": to_tensor(prepare(decode_image(sample), resolution)),
            "__key__": sample["__key__"],
            "caption": meta.get("caption") or "",
            "source": meta.get("source") or sample.get("__url__", ""),
        }

    return to_item


#: what a content item from shards carries besides its image (see ``ShardStream.mark_shards``)
SHARD_FIELDS = ("shard", "shard_end", "shard_skipped")


def collate_content(items: list[dict]) -> dict:
    """Stack pixels; keep keys, captions, sources (and shard marks, from shards) as lists."""
    fields = ("__key__", "caption", "source")
    if all("shard" in item for item in items):
        fields += SHARD_FIELDS
    return {
        "pixel_values": torch.stack([item["pixel_values"] for item in items]),
        **{k: [item[k] for item in items] for k in fields},
    }


def check_distinct_stems(urls: list[str]) -> None:
    """Refuse content shards whose names coincide: each names its output shard.

    Raises:
        DataError: two URLs have the same :func:`shard_stem`; the message names both.
    """
    seen: dict[str, str] = {}
    for url in urls:
        other = seen.setdefault(shard_stem(url), url)
        if other != url:
            raise DataError(
                f"content shards {other} and {url} have the same name {shard_stem(url)!r}; "
                "an output shard is named after its input shard: stylize them in separate runs "
                "(separate output_dir)"
            )


def missing_content(content: str) -> str:
    """Return the one line for a ``data.content`` that names nothing."""
    return (
        f"data.content {content} does not exist (give an image, a folder of images, a shard "
        "pattern or a manifest.json)"
    )


class ContentDataModule(LightningDataModule):
    """Content images for ``artbank predict``: a folder, a shard manifest, or a brace pattern.

    Each image is read once over all ranks and workers (split with the Trainer's rank and
    world size), resized and centre-cropped to ``resolution``.

    Args:
        content: a folder of images (a ``<stem>.txt`` beside an image is its caption), a
            ``manifest.json`` from ``artbank shards build`` (all its splits), or a brace
            pattern of shards.
        resolution: side of the square the content is cropped to (a multiple of 8).
        batch_size: content images per batch.
        num_workers: dataloader workers.
        array_index: this job's slice of the content when several jobs share it (a SLURM
            array task id); each rank of each job then reads a disjoint part.
        array_count: number of slices (the array's task count).
    """

    def __init__(
        self,
        content: str,
        resolution: int = 512,
        batch_size: int = 4,
        num_workers: int = 2,
        array_index: int = 0,
        array_count: int = 1,
    ) -> None:
        super().__init__()
        # the content path is checked when it is read (it may be a shard pattern)
        self.check_config({}, resolution=resolution, batch_size=batch_size,
                          num_workers=num_workers, array_index=array_index,
                          array_count=array_count)  # fmt: skip
        self.save_hyperparameters()
        self.rank, self.world_size = 0, 1

    @staticmethod
    def check_config(
        model_args: dict,
        content: str | None = None,
        resolution: int = 512,
        batch_size: int = 4,
        num_workers: int = 2,
        array_index: int = 0,
        array_count: int = 1,
        **_: object,
    ) -> None:
        """Refuse options out of range, naming the option (the CLI calls this first).

        Raises:
            ConfigError: a numeric option is out of range.
            DataError: the array slice is not one of the array's, or the content (a path,
                not a shard pattern or URL) does not exist.
        """
        check_resolution("data.resolution", resolution)
        check_at_least("data.batch_size", batch_size, 1)
        check_at_least("data.num_workers", num_workers, 0)
        if not 0 <= array_index < array_count:
            raise DataError(f"array_index {array_index} is not in [0, array_count={array_count})")
        is_pattern = content is None or any(c in content for c in "{:")
        if not is_pattern and not Path(content).exists():
            raise DataError(missing_content(content))

    def setup(self, stage: str) -> None:
        """Take rank and world size from the Trainer (and the array slice)."""
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        # the slice of a job array is one more level of splitting above the ranks
        self.rank = self.hparams.array_index * world + rank
        self.world_size = self.hparams.array_count * world

    def _dataset(self) -> IterableDataset:
        content, resolution = self.hparams.content, self.hparams.resolution
        path = Path(content)
        is_image = path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
        if is_image or (path.is_dir() and not (path / "manifest.json").is_file()):
            return FolderStream(path, resolution)
        if path.suffix == ".json" or path.is_dir():
            manifest = read_manifest(path)
            root = path if path.is_dir() else path.parent
            names = [s for split in stored_splits(manifest) for s in split["shards"]]
            urls = [str(root / name) for name in names]
            counts = images_per_shard(manifest)
            if counts is not None:
                check_distinct_stems(urls)
                item = shard_content_item(resolution)
                return CountedShardStream(urls, item, [counts[name] for name in names])
        else:
            urls = expand_urls(content)
            missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
            if missing == [content]:
                raise DataError(missing_content(content))
            if missing:
                raise DataError(f"content shards not found: {missing[:3]}")
        check_distinct_stems(urls)
        return ShardStream(urls, shard_content_item(resolution), mark_shards=True)

    def test_dataloader(self) -> DataLoader:
        """The same pass as prediction, for ``artbank test`` (evaluation)."""
        return self.predict_dataloader()

    def predict_dataloader(self) -> DataLoader:
        """One pass over the content, every image exactly once over all ranks."""
        dataset = self._dataset()
        dataset.set_distributed(self.rank, self.world_size)
        if isinstance(dataset, FolderStream | CountedShardStream):  # the bar shows a total
            dataset.batching = (self.hparams.batch_size, self.hparams.num_workers)
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
            collate_fn=collate_content,
        )
