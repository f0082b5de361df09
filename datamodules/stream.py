"""Iterable WebDataset streams split disjointly across ranks and dataloader workers.

Rank and world size are passed in explicitly (from the Trainer) rather than detected from
the environment, which can fail silently in spawned workers. Each (rank, worker) pair is
one of ``world_size * num_workers`` parts. With at least as many shards as parts, each part
owns every ``parts``-th shard; with fewer, every part reads all shards and keeps every
``parts``-th sample of each. Either way no sample is read by two parts in one pass.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import webdataset as wds
from braceexpand import braceexpand
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from artbank_pl.errors import ConfigError, DataError
from artbank_pl.ratelimit import worth_logging

log = logging.getLogger(__name__)
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def expand_urls(pattern: str) -> list[str]:
    """Expand a brace pattern (``data/train-{000000..000009}.tar``) into shard paths."""
    urls = [u for part in pattern.split("::") for u in braceexpand(part)]
    if not urls:
        raise DataError(f"shard pattern {pattern!r} names no shard")
    return urls


@dataclass(frozen=True)
class StreamPart:
    """Which part of the stream a (rank, worker) reads: ``index`` of ``count``."""

    index: int
    count: int

    @classmethod
    def current(cls, rank: int, world_size: int, worker_shift: int = 0) -> StreamPart:
        """Return the part of the calling dataloader worker (or of the main process).

        Args:
            rank: global rank of this process.
            world_size: number of processes.
            worker_shift: worker ``i`` reads the part of worker ``(i + shift) % workers``.
        """
        return cls.of(rank, world_size, *current_worker(worker_shift))

    @classmethod
    def of(cls, rank: int, world_size: int, workers: int, worker: int) -> StreamPart:
        """Return the part of dataloader ``worker`` (of ``workers``) on ``rank``."""
        return cls(rank * workers + worker, world_size * workers)


def current_worker(shift: int = 0) -> tuple[int, int]:
    """Return (dataloader workers, this worker's index shifted by ``shift``).

    Outside a dataloader worker (the main process reads) that is ``(1, 0)``.
    """
    info = get_worker_info()
    return (info.num_workers, (info.id + shift) % info.num_workers) if info else (1, 0)


def stream_seed(seed: int, epoch: int, part: StreamPart) -> int:
    """Seed of one part's shard order, shuffle and augmentation in one epoch.

    A function of (seed, epoch, part) alone, not of any RNG's history, so that a resumed run
    reads exactly the samples the uninterrupted run would have read.
    """
    text = f"{seed}/{epoch}/{part.index}/{part.count}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


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


def shard_opens(url: str) -> bool:
    """Whether a shard's first tar header reads (a remote or piped one is assumed to).

    A cheap probe (one header per shard): a shard damaged further in still passes and is
    skipped by :func:`iter_tar_samples` where the damage starts.
    """
    if "://" in url or url.startswith("pipe:"):
        return True
    try:
        with tarfile.open(url, "r|*") as tar:
            tar.next()
    except (OSError, tarfile.TarError, EOFError):
        return False
    return True


def check_shards_open(urls: list[str], what: str) -> None:
    """Refuse a list of shards none of which opens (the stream names each bad one it meets).

    The probe stops at the first shard that opens: one header read in the usual case.

    Raises:
        DataError: no shard of ``urls`` opens.
    """
    if urls and not any(shard_opens(url) for url in urls):
        more = f" and {len(urls) - 3} more" if len(urls) > 3 else ""
        raise DataError(f"no readable {what} shard: {', '.join(urls[:3])}{more}")


def shard_stem(url: str) -> str:
    """Return a shard's name without folder and ``.tar``: ``00017`` for ``s3://b/00017.tar``.

    For a ``pipe:`` command it is the last ``NAME.tar`` the command names. An output shard
    written for an input shard takes this name.
    """
    names = re.findall(r"([^/\s'\"]+?)\.tar\b", url)
    stem = names[-1] if names else url
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "shard"


def iter_part(urls: list[str], part: StreamPart, whole_shards: bool = False) -> Iterator[dict]:
    """Yield one pass over this part's samples of ``urls`` (in the given shard order).

    With fewer shards than parts, each part takes every ``part.count``-th sample of every
    shard, unless ``whole_shards``: then each shard is read by one part only and the parts
    beyond the shard count read nothing.
    """
    by_shard = whole_shards or len(urls) >= part.count
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
        seed: base seed of the shard order, shuffle and augmentation (see :func:`stream_seed`).
        chain_epochs: with ``resample`` and ``num_samples``, go on to the next epoch's
            items instead of stopping at the end of one (an endless iterator of epochs).
        select: keeps the raw samples this run reads (``in_split(sample)`` and
            ``index_of(sample)`` is not None) and counts the others; a pass over the shards
            of which it keeps none raises its ``no_match_error(urls)``. ``None`` keeps every sample.
        mark_shards: for one pass without shuffling (stylization): each shard is read whole
            by one part, and every item carries ``shard`` (its URL) and ``shard_end``; the
            last item of a shard has ``shard_end`` True and ``shard_skipped``, the number of
            that shard's samples skipped, so a writer knows when an output shard is complete.
    """

    def __init__(
        self,
        urls: list[str],
        to_item: Callable[[dict, random.Random], dict],
        resample: bool = False,
        num_samples: int | None = None,
        shuffle: int = 0,
        seed: int = 0,
        chain_epochs: bool = False,
        select=None,
        mark_shards: bool = False,
    ) -> None:
        super().__init__()
        if not urls:
            raise ValueError("no shards given")
        if mark_shards and (resample or shuffle):
            raise ValueError("mark_shards needs one pass in shard order (no resample, shuffle)")
        self.mark_shards = mark_shards
        self.urls = list(urls)
        self.to_item = to_item
        self.resample = resample
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = seed
        self.chain_epochs = chain_epochs and resample and num_samples is not None
        self.select = select
        self.rank, self.world_size = 0, 1
        self.skipped = 0
        self.epoch, self.skip_batches, self.batch_size = 0, 0, 1

    def set_position(self, epoch: int, skip_batches: int = 0, batch_size: int = 1) -> None:
        """Start the next pass at ``epoch``, after this rank's first ``skip_batches`` batches.

        DataLoader workers hand out batches in turn (batch ``i`` comes from worker
        ``i % workers``), and a new pass starts at worker 0. So worker ``i`` takes the part
        of worker ``(i + skip_batches) % workers`` (the order goes on where it stopped), and
        each part skips its share of the batches already trained on.
        """
        self.epoch, self.skip_batches, self.batch_size = epoch, skip_batches, batch_size

    def _items_to_skip(self) -> int:
        workers, worker = current_worker(self.skip_batches)
        own_batches = max(0, -(-(self.skip_batches - worker) // workers))
        return own_batches * self.batch_size

    def set_distributed(self, rank: int, world_size: int) -> None:
        """Set this process's rank and the world size (call before iterating)."""
        self.rank, self.world_size = rank, world_size

    def _selected(self, samples: Iterator[dict], urls: list[str], parts: int) -> Iterator[dict]:
        """Yield the samples ``select`` keeps; a pass that read some but kept none is an error.

        A part that keeps nothing would otherwise read its shards forever, and the loader,
        which takes batches from every worker in turn, would wait on it forever. A sample
        whose labels cannot be read (damaged json) is skipped and counted here.
        """
        if self.select is None:
            yield from samples
            return
        seen = kept = 0
        for sample in samples:
            if not self.select.in_split(sample):
                continue  # the other side of a split by key: neither ours nor a stranger
            seen += 1
            try:
                ours = self.select.index_of(sample) is not None
            except ValueError as err:
                self._skip(sample, err)
                continue
            if ours:
                kept += 1
                yield sample
        if seen and not kept:
            raise self.select.no_match_error(urls, parts)

    def _skip(self, sample: dict, err: Exception) -> None:
        """Count a skipped sample; log the first few and then at powers of ten."""
        self.skipped += 1
        if worth_logging(self.skipped):
            log.warning("skipping sample %s (%s); %d skipped so far in this worker",
                        sample.get("__key__"), err, self.skipped)  # fmt: skip

    def _raw_samples(self, part: StreamPart, rng: random.Random) -> Iterator[dict]:
        if not self.resample:
            samples = iter_part(self.urls, part, whole_shards=self.mark_shards)
            yield from self._selected(samples, self.urls, part.count)
            return
        by_shard = len(self.urls) >= part.count
        own = list(self.urls[part.index :: part.count] if by_shard else self.urls)
        sub_part = StreamPart(0, 1) if by_shard else part
        while True:
            rng.shuffle(own)
            empty = True
            for sample in self._selected(iter_part(own, sub_part), own, part.count):
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
        """Yield this part's items from the set position on.

        With ``chain_epochs`` the stream goes on epoch after epoch in the same worker:
        each epoch's order is still a function of (seed, epoch, part),
        but the worker is not forked again and starts filling the next epoch's shuffle
        buffer while the loader still hands out the batches it queued.
        """
        part = StreamPart.current(self.rank, self.world_size, self.skip_batches)
        epoch, skip = self.epoch, self._items_to_skip()
        while True:
            yield from self._epoch_items(part, epoch, skip)
            if not self.chain_epochs:
                return
            epoch, skip = epoch + 1, 0

    def _epoch_items(self, part: StreamPart, epoch: int, skip: int) -> Iterator[dict]:
        rng = random.Random(stream_seed(self.seed, epoch, part))
        samples = self._raw_samples(part, rng)
        if self.shuffle:
            samples = shuffle_buffer(samples, self.shuffle, rng)
        if self.mark_shards:
            yield from self._shard_marked_items(samples, rng)
            return
        # skipped items still go through to_item: their draws from rng must happen
        produced = 0
        for sample in samples:
            if self.num_samples is not None and produced >= self.num_samples:
                return
            try:
                item = self.to_item(sample, rng)
            except (OSError, ValueError, KeyError) as err:
                self._skip(sample, err)
                continue
            produced += 1
            if produced > skip:
                yield item

    def _shard_marked_items(self, samples: Iterator[dict], rng: random.Random) -> Iterator[dict]:
        """Items with their shard and an end mark on each shard's last one (one item behind).

        The mark needs the next sample (or the end of the pass) to be seen first: the
        last readable item of a shard waits until then, with the count of that shard's
        skipped samples, those after it included.
        """
        pending, url, skipped = None, None, 0
        for sample in samples:
            if sample.get("__url__") != url:
                if pending is not None:
                    yield dict(pending, shard_end=True, shard_skipped=skipped)
                pending, url, skipped = None, sample.get("__url__"), 0
            try:
                item = self.to_item(sample, rng)
            except (OSError, ValueError, KeyError) as err:
                self._skip(sample, err)
                skipped += 1
                continue
            if pending is not None:
                yield dict(pending, shard_end=False, shard_skipped=0)
            pending = dict(item, shard=url)
        if pending is not None:
            yield dict(pending, shard_end=True, shard_skipped=skipped)


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
