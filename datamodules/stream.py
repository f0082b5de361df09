"""Iterable WebDataset streams split disjointly across ranks and dataloader workers.

Rank and world size are passed in explicitly (from the Trainer) rather than detected from
the environment, which can fail silently in spawned workers. Each (rank, worker) pair is
one of ``world_size * num_workers`` parts. With at least as many shards as parts, each part
owns every ``parts``-th shard; with fewer, every part reads all shards and keeps every
``parts``-th sample of each. Either way no sample is read by two parts in one pass.
"""

from __future__ import annotations

import io
import json
import logging
import random
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from artbank_pl.errors import ConfigError, DataError

log = logging.getLogger(__name__)
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class StreamPart:
    """Which part of the stream a (rank, worker) reads: ``index`` of ``count``."""

    index: int
    count: int

    @classmethod
    def current(cls, rank: int, world_size: int) -> StreamPart:
        """Return the part of the calling dataloader worker (or of the main process)."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return cls(rank * workers + worker, world_size * workers)


#: shards this process found unreadable, each logged once
BAD_SHARDS: set[str] = set()


def iter_tar_samples(url: str) -> Iterator[dict]:
    """Yield the raw samples (``__key__`` plus bytes per extension) of one tar shard.

    A truncated, empty or garbage shard ends with a log line naming it (once per process)
    after the samples read before the damage; the stream goes on with the next shard.
    """
    try:
        yield from wds.tarfile_samples([{"url": url}], handler=wds.reraise_exception)
    except (OSError, tarfile.TarError, ValueError) as err:
        if url not in BAD_SHARDS:
            BAD_SHARDS.add(url)
            log.warning("skipping the rest of unreadable shard %s: %s (%d bad shard(s))",
                        url, err, len(BAD_SHARDS))  # fmt: skip


def iter_part(urls: list[str], part: StreamPart) -> Iterator[dict]:
    """Yield one pass over this part's samples of ``urls`` (in the given shard order)."""
    by_shard = len(urls) >= part.count
    for url in urls[part.index :: part.count] if by_shard else urls:
        for i, sample in enumerate(iter_tar_samples(url)):
            if by_shard or i % part.count == part.index:
                yield sample


def shuffle_buffer(samples: Iterator, size: int, rng: random.Random) -> Iterator:
    """Shuffle a stream through a buffer of ``size`` items."""
    buffer = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) >= size:
            yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer


def decode_image(sample: dict) -> Image.Image:
    """Decode the sample's image bytes to an RGB PIL image."""
    for key in IMAGE_KEYS:
        if key in sample:
            with Image.open(io.BytesIO(sample[key])) as img:
                return img.convert("RGB")
    raise ValueError(f"no image ({'/'.join(IMAGE_KEYS)}) in sample")


def from_npy(data: bytes) -> torch.Tensor:
    """Read ``.npy`` bytes (never pickled objects) as a float32 tensor."""
    return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32))


class ShardStream(IterableDataset):
    """Decoded, transformed samples from WebDataset shards, split by rank and worker.

    Args:
        urls: shard paths or URLs.
        to_item: turns ``(raw sample, rng)`` into a dataset item; raises ``ValueError`` or
            ``OSError`` for a sample that must be skipped (it is logged and counted).
        resample: repeat forever, reshuffling this part's shards on every pass (training);
            otherwise one deterministic pass (validation, prediction).
        num_samples: stop after this many items per part (the epoch length); ``None`` runs
            to the end of the pass.
        shuffle: shuffle-buffer size (0 turns it off).
    """

    def __init__(
        self,
        urls: list[str],
        to_item: Callable[[dict, random.Random], dict],
        resample: bool = False,
        num_samples: int | None = None,
        shuffle: int = 0,
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError("no shards given")
        self.urls = list(urls)
        self.to_item = to_item
        self.resample = resample
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.rank, self.world_size = 0, 1
        self.skipped = 0

    def set_distributed(self, rank: int, world_size: int) -> None:
        """Set this process's rank and the world size (call before iterating)."""
        self.rank, self.world_size = rank, world_size

    def _raw_samples(self, part: StreamPart, rng: random.Random) -> Iterator[dict]:
        if not self.resample:
            yield from iter_part(self.urls, part)
            return
        by_shard = len(self.urls) >= part.count
        own = list(self.urls[part.index :: part.count] if by_shard else self.urls)
        sub_part = StreamPart(0, 1) if by_shard else part
        while True:
            rng.shuffle(own)
            empty = True
            for sample in iter_part(own, sub_part):
                empty = False
                yield sample
            if empty and BAD_SHARDS.issuperset(own):
                raise DataError(f"no readable training shard among {sorted(own)[:3]}")
            if empty:
                raise ConfigError(
                    f"stream part {part.index} of {part.count} (ranks x workers) got no sample "
                    f"from {len(self.urls)} shard(s): use fewer dataloader workers"
                )

    def __iter__(self) -> Iterator[dict]:
        part = StreamPart.current(self.rank, self.world_size)
        # torch's RNG is seeded per worker and per epoch by the DataLoader (and by
        # seed_everything in the main process), so this draw is reproducible.
        seed = int(torch.randint(0, 2**62, ())) ^ (self.rank << 40)
        rng = random.Random(seed)
        samples = self._raw_samples(part, rng)
        if self.shuffle:
            samples = shuffle_buffer(samples, self.shuffle, rng)
        produced = 0
        for sample in samples:
            if self.num_samples is not None and produced >= self.num_samples:
                return
            try:
                item = self.to_item(sample, rng)
            except (OSError, ValueError, KeyError) as err:
                self.skipped += 1
                log.warning(
                    "skipping sample %s (%s); %d skipped so far in this worker",
                    sample.get("__key__"), err, self.skipped,
                )  # fmt: skip
                continue
            produced += 1
            yield item


def sample_meta(sample: dict) -> dict:
    """Return a sample's ``json`` as a dict.

    Raises:
        ValueError: the json is not valid UTF-8 JSON or not an object (the stream skips the
            sample and counts it).
    """
    meta = json.loads(sample["json"])
    if not isinstance(meta, dict):
        raise ValueError(f"its json is a {type(meta).__name__}, not an object")
    return meta
