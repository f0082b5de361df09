"""The data path alone, in images per second per process, with no diffusion step.

    python bench/data_path.py --size 512 --images 256

Rows (median of ``--repeats`` passes, one process, ``num_workers: 0``: a DataLoader worker
does the same work in its own process, so the rate per worker is the rate below):

train read    ArtworkDataModule's training stream from shards built by ``artbank shards
              build`` (JPEG at ``--size``): read, decode, random crop and flip, to tensor,
              batches of 8. What each training process's workers must sustain.
content read  ContentDataModule from shards (the predict path's input): read, decode,
              resize and centre-crop, batches of 8.
write shards  StylizedImageWriter with ``shards: true`` (its default 4 encode threads):
              PNG encode (level 1) and tar write of ``--size`` px outputs, one output shard
              per input shard, manifest lines.
write jpg     the same with ``image_format: jpg``.

Each row is also given as the number of loader workers that sustain 5x the GPU rates of
DESIGN.md section 7 (one H100, SD-1.5 sized, 512 px): training 63 img/s (diffusers' way,
measured) and 436 img/s (cached latents, the corrected floor; with a latent cache the data
path reads latents, not images), stylization 12 img/s (the floor).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import webdataset as wds
from PIL import Image

from artbank_pl.callbacks import StylizedImageWriter
from artbank_pl.datamodules import ArtworkDataModule, ContentDataModule
from artbank_pl.datamodules.shards import build_shards

#: GPU rates per process (DESIGN.md section 7), img/s
GPU_RATES = {"train (diffusers' way)": 63.0, "train (cached floor)": 436.0, "stylize": 12.0}
HEADROOM = 5.0


def painting_like(rng: np.random.Generator, size: int) -> np.ndarray:
    """Return a smooth image with grain (it compresses like a photograph, not like noise)."""
    coarse = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((size, size * 4 // 3), Image.BICUBIC))
    grain = rng.normal(0, 6, image.shape)
    return np.clip(image + grain, 0, 255).astype(np.uint8)


def make_shards(root: Path, images: int, size: int) -> Path:
    """Two collections of ``images`` JPEGs, built into shards of 64 at ``size``."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(("alpha", "beta")):
        folder = root / "images" / name
        folder.mkdir(parents=True)
        for i in range(images // 2):
            Image.fromarray(painting_like(rng, size)).save(folder / f"{c}-{i}.jpg", quality=90)
    build_shards(root / "images", root / "shards", size=size, maxcount=64)
    return root / "shards" / "manifest.json"


def images_per_second(batches, count: int) -> float:
    """Time one pass that yields ``count`` images."""
    start = time.perf_counter()
    seen = sum(len(batch["pixel_values"]) for batch in batches)
    assert seen == count, (seen, count)
    return seen / (time.perf_counter() - start)


def train_rate(manifest: Path, size: int, images: int) -> float:
    """Return the training stream's rate: read, decode, crop, flip, batch."""
    data = ArtworkDataModule(
        str(manifest), resolution=size, batch_size=8, num_workers=0,
        samples_per_epoch=images, shuffle_buffer=64, pin_memory=False,
    )  # fmt: skip
    data.setup("fit")
    return images_per_second(data.train_dataloader(), images)


def content_rate(manifest: Path, size: int, images: int) -> float:
    """Return the content stream's rate: read, decode, resize, centre-crop, batch."""
    data = ContentDataModule(str(manifest), resolution=size, batch_size=8, num_workers=0)
    data.setup("predict")
    return images_per_second(data.predict_dataloader(), images)


class _Hparams(dict):
    __getattr__ = dict.get


class _Module:
    hparams = _Hparams(strength=0.7, steps=35, inversion="stochastic", guidance_scale=7.5,
                       scheduler="ddim", pretrained="bench", bank=None)  # fmt: skip


class _Trainer:
    global_rank, is_global_zero = 0, True

    class strategy:  # noqa: N801 (Lightning's attribute name)
        @staticmethod
        def barrier(name=None):
            return None


def write_rate(out: Path, size: int, images: int, image_format: str) -> float:
    """StylizedImageWriter's shard path on ``images`` outputs of 8 per batch, 2 input shards."""
    writer = StylizedImageWriter(str(out), image_format=image_format, shards=True,
                                 background=False)  # fmt: skip
    writer.on_predict_start(_Trainer(), _Module())
    rng = np.random.default_rng(1)
    outputs = [torch.from_numpy(painting_like(rng, size)[:size]) for _ in range(8)]
    start = time.perf_counter()
    for b in range(images // 8):
        keys = [f"k{b}-{i}" for i in range(8)]
        shard = f"in/{b * 2 // (images // 8):05d}.tar"  # two input shards, in order
        last = (b + 1) % (images // 16) == 0
        batch = {"__key__": keys, "shard": [shard] * 8, "shard_end": [False] * 7 + [last],
                 "shard_skipped": [0] * 8}  # fmt: skip
        prediction = {"images": outputs, "keys": keys, "styles": ["style"] * 8,
                      "seeds": list(range(8)), "sources": [""] * 8}  # fmt: skip
        writer.write_on_batch_end(_Trainer(), _Module(), prediction, None, batch, b, 0)
    writer.on_predict_end(_Trainer(), _Module())
    seconds = time.perf_counter() - start
    written = sum(
        1
        for tar in out.glob("shards/*/*.tar")
        for _ in wds.WebDataset(str(tar), shardshuffle=False)
    )
    assert written == images // 8 * 8, written
    return written / seconds


def main() -> None:
    """Print the rows (and a json line), medians of the repeats."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a loader worker's share
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = make_shards(root, args.images, args.size)
        rows = {"train read": [], "content read": [], "write shards": [], "write jpg": []}
        for r in range(args.repeats):
            rows["train read"].append(train_rate(manifest, args.size, args.images))
            rows["content read"].append(content_rate(manifest, args.size, args.images))
            rows["write shards"].append(write_rate(root / f"png{r}", args.size, args.images, "png"))
            rows["write jpg"].append(write_rate(root / f"jpg{r}", args.size, args.images, "jpg"))
    medians = {name: statistics.median(rates) for name, rates in rows.items()}
    print(f"data path at {args.size} px, one process, median of {args.repeats}:")
    print(f"{'row':<14} {'img/s':>8}   workers for {HEADROOM:.0f}x the GPU rate")
    for name, rate in medians.items():
        if "train" in name:
            needs = {k: v for k, v in GPU_RATES.items() if k.startswith("train")}
        else:
            needs = {"stylize": GPU_RATES["stylize"]}
        workers = ", ".join(f"{k}: {HEADROOM * v / rate:.1f}" for k, v in needs.items())
        print(f"{name:<14} {rate:>8.1f}   {workers}")
    print(json.dumps({"size": args.size, "images": args.images, "img_per_s": medians}))


if __name__ == "__main__":
    main()
