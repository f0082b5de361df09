"""Build WebDataset shards of artwork collections, with a manifest.

Input: one folder per collection (the folder name is the collection name), holding images
and optional ``<stem>.txt`` captions. Output: ``train-NNNNNN.tar`` (and ``val-NNNNNN.tar``
when some images are held out) with one ``.jpg``/``.png`` + ``.json`` pair per sample,
and ``manifest.json`` listing collections, counts and shards. Every file is written under a
temporary name and renamed when complete, and the manifest last, so a reader never sees a
half-built dataset.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image, ImageOps

from artbank_pl.atomic import atomic_write_text
from artbank_pl.errors import ConfigError, DataError
from artbank_pl.options import check_at_least
from artbank_pl.styles import image_files
from artbank_pl.tool_args import ToolParser, int_at_least

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


@dataclass
class SourceImage:
    """One image file found in a collection folder."""

    collection: str
    path: Path
    caption: str | None
    problem: str | None = None  # why the sample cannot be used (it is skipped and counted)


@dataclass
class BuildReport:
    """What a build wrote and what it skipped."""

    manifest: Path
    written: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def find_images(input_dir: Path) -> list[SourceImage]:
    """List images per collection folder, in a stable (sorted) order.

    Raises:
        DataError: ``input_dir`` is missing or holds no collection folder.
    """
    if not input_dir.is_dir():
        raise DataError(f"--input {input_dir} is not a folder")
    folders = sorted(p for p in input_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    by_folder = {folder: image_files(folder, recursive=True) for folder in folders}
    loose = image_files(input_dir)
    if not folders or (loose and not any(by_folder.values())):
        held = f" (its {len(loose)} image(s) must go into them)" if loose else ""
        raise DataError(f"--input {input_dir} has no collection folders, one per style{held}")
    found = []
    for folder, paths in by_folder.items():
        if not paths:
            log.warning("left out collection folder %s: it holds no image", folder)
        for path in paths:
            txt = path.with_suffix(".txt")
            try:
                caption = txt.read_text(encoding="utf-8").strip() if txt.is_file() else None
            except UnicodeDecodeError:
                found.append(SourceImage(folder.name, path, None, f"{txt} is not UTF-8"))
                continue
            found.append(SourceImage(folder.name, path, caption or None))
    return found


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so that the shorter side is ``size`` (Lanczos); ``size <= 0`` keeps it."""
    if size <= 0:
        return image
    w, h = image.size
    scale = size / min(w, h)
    return image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.LANCZOS)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Crop the central ``size x size`` square."""
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))


#: the longest side may be at most this many times the shortest (a 60000 x 1 strip would
#: otherwise be scaled to a 30-gigapixel image)
MAX_ASPECT = 20


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert to RGB by value: 16-bit greyscale is scaled to 8 bits, not clipped to white."""
    if image.mode.startswith("I"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or values.max() > 255:
            values = values / 65535.0 * 255.0
        image = Image.fromarray(values.clip(0, 255).round().astype(np.uint8), "L")
    return image.convert("RGB")


def load_rgb(path: Path, size: int, crop: bool) -> Image.Image:
    """Open an image, apply EXIF orientation, convert to RGB, resize and optionally crop.

    Raises:
        ValueError: the image is more than :data:`MAX_ASPECT` times longer than wide.
        OSError, PIL.Image.DecompressionBombError: the file is unreadable or far too large.
    """
    return load_rgb_sized(path, size, crop)[0]


def load_rgb_sized(path: Path, size: int, crop: bool) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`load_rgb`, and the image's ``(width, height)`` before it was resized.

    SDXL conditions on the original size (``original_width``/``original_height`` in the
    sample's json, as img2dataset names them).
    """
    with Image.open(path) as img:
        if max(img.size) > MAX_ASPECT * max(1, min(img.size)):
            raise ValueError(f"{img.size[0]} x {img.size[1]} px is too elongated")
        img.load()
        image = to_rgb(ImageOps.exif_transpose(img))
    original = image.size
    image = resize_shorter_side(image, size)
    return (center_crop(image, min(image.size)) if crop else image), original


def encode_image(image: Image.Image, fmt: str, quality: int) -> bytes:
    """Encode a PIL image as ``jpg`` or ``png`` bytes."""
    buffer = io.BytesIO()
    if fmt == "jpg":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def sample_key(collection: str, path: Path, used: set[str]) -> str:
    """Return a unique WebDataset key, without dots (WebDataset splits keys at the first dot)."""
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", f"{collection}__{path.stem}")
    key, n = base, 1
    while key in used:
        key, n = f"{base}_{n}", n + 1
    used.add(key)
    return key


class AtomicShardWriter:
    """Write ``<prefix>-NNNNNN.tar`` shards of at most ``maxcount`` samples each, atomically."""

    def __init__(self, out_dir: Path, prefix: str, maxcount: int) -> None:
        self.out_dir, self.prefix, self.maxcount = out_dir, prefix, maxcount
        self.shards: list[str] = []
        self.sizes: list[int] = []  # samples in each shard, in order
        self._writer: wds.TarWriter | None = None
        self._tmp: Path | None = None
        self._count = 0

    def _open(self) -> None:
        name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._tmp = self.out_dir / f".{name}.tmp"
        self._writer = wds.TarWriter(str(self._tmp))
        self.shards.append(name)
        self._count = 0

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            os.replace(self._tmp, self.out_dir / self.shards[-1])
            self.sizes.append(self._count)
            self._writer = None

    def write(self, sample: dict) -> None:
        """Add one sample, starting a new shard when the current one is full."""
        if self._writer is None or self._count >= self.maxcount:
            self._close()
            self._open()
        self._writer.write(sample)
        self._count += 1

    def close(self) -> list[str]:
        """Finish the last shard and return the shard names written."""
        self._close()
        return self.shards


def split_holdout(images: list[SourceImage], per_collection: int) -> tuple[list, list]:
    """Hold out the last ``per_collection`` images of each collection for validation."""
    train, val = [], []
    by_collection: dict[str, list[SourceImage]] = {}
    for image in images:
        by_collection.setdefault(image.collection, []).append(image)
    for items in by_collection.values():
        keep = max(1, len(items) - per_collection) if per_collection else len(items)
        train += items[:keep]
        val += items[keep:]
    return train, val


def _write_split(
    images: list[SourceImage], writer: AtomicShardWriter, opts: dict, report: BuildReport
) -> dict[str, int]:
    counts: dict[str, int] = {}
    used: set[str] = set()
    for image in images:
        try:
            if image.problem:
                raise ValueError(image.problem)
            rgb, (width, height) = load_rgb_sized(image.path, opts["size"], opts["crop"])
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            log.warning("skipping unreadable image %s: %s", image.path, err)
            report.skipped.append(str(image.path))
            continue
        meta = {
            "collection": image.collection,
            "caption": image.caption,
            "source": str(image.path.relative_to(opts["input_dir"])),
            "original_width": width,
            "original_height": height,
        }
        ext = opts["format"]
        writer.write(
            {
                "__key__": sample_key(image.collection, image.path, used),
                ext: encode_image(rgb, ext, opts["quality"]),
                "json": json.dumps(meta).encode(),
            }
        )
        counts[image.collection] = counts.get(image.collection, 0) + 1
    return counts


def check_build_options(
    size: int, maxcount: int, val_per_collection: int, image_format: str, quality: int
) -> None:
    """Refuse out-of-range ``shards build`` options, naming the option.

    Raises:
        ConfigError: an option is out of its range.
    """
    check_at_least("--size", size, 0)
    check_at_least("--maxcount", maxcount, 1)
    check_at_least("--val-per-collection", val_per_collection, 0)
    if image_format not in ("jpg", "png"):
        raise ConfigError(f"--format must be jpg or png, got {image_format!r}")
    if not 1 <= quality <= 100:
        raise ConfigError(f"--quality must be in 1..100, got {quality}")


def build_shards(
    input_dir: str | Path,
    output_dir: str | Path,
    size: int = 512,
    crop: bool = False,
    maxcount: int = 1000,
    val_per_collection: int = 0,
    image_format: str = "jpg",
    quality: int = 95,
    seed: int = 0,
) -> BuildReport:
    """Build train (and validation) shards and a manifest from collection folders.

    Args:
        input_dir: one sub-folder per collection.
        output_dir: where shards and ``manifest.json`` go (created).
        size: shorter side after resizing; 0 keeps the original size.
        crop: also center-crop to a square.
        maxcount: samples per shard.
        val_per_collection: images per collection held out into ``val-*.tar``.
        image_format: ``jpg`` or ``png``.
        quality: JPEG quality.
        seed: shuffles the training order so that every shard mixes collections.

    Returns:
        A report with the manifest path, counts written and paths skipped.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    check_build_options(size, maxcount, val_per_collection, image_format, quality)
    images = find_images(input_dir)
    names = sorted({image.collection for image in images})
    train, val = split_holdout(images, val_per_collection)
    random.Random(seed).shuffle(train)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = BuildReport(output_dir / MANIFEST)
    opts = {"size": size, "crop": crop, "format": image_format, "quality": quality}
    opts["input_dir"] = input_dir
    splits = {}
    for split, items in (("train", train), ("val", val)):
        if not items:
            continue
        writer = AtomicShardWriter(output_dir, split, maxcount)
        counts = _write_split(items, writer, opts, report)
        shards = writer.close()
        sizes = dict(zip(shards, writer.sizes, strict=True))
        splits[split] = {"shards": shards, "counts": counts, "total": sum(counts.values()),
                         "images_per_shard": sizes}  # fmt: skip
        for name, n in counts.items():
            report.written[name] = report.written.get(name, 0) + n
    if not report.written:
        raise DataError(f"no readable image under {input_dir} ({len(report.skipped)} skipped)")
    write_manifest(report, names, splits, opts)
    return report


def write_manifest(report: BuildReport, names: list[str], splits: dict, opts: dict) -> None:
    """Write ``manifest.json`` (last, atomically): collections present, splits, image options."""
    present = [name for name in names if report.written.get(name)]
    for name in sorted(set(names) - set(present)):
        log.warning("collection %r has no readable image; it is left out", name)
    manifest = {
        "version": MANIFEST_VERSION,
        "collections": [
            {"name": name, "index": i, "count": report.written[name]}
            for i, name in enumerate(present)
        ],
        "splits": splits,
        "image": {"size": opts["size"], "crop": opts["crop"], "format": opts["format"]},
        "skipped": report.skipped,
    }
    atomic_write_text(report.manifest, json.dumps(manifest, indent=2))


def stored_splits(manifest: dict) -> list[dict]:
    """Return the splits that hold shards of their own (not a split by key of another's)."""
    return [split for split in manifest.get("splits", {}).values() if "keys" not in split]


def held_out_keys(manifest: dict | None) -> dict[str, frozenset[str]] | None:
    """Return collection -> validation keys of a split by key (``shards index``), or None."""
    keys = ((manifest or {}).get("splits", {}).get("val") or {}).get("keys")
    return {name: frozenset(k) for name, k in keys.items()} if keys is not None else None


def images_per_shard(manifest: dict) -> dict[str, int] | None:
    """Return the samples with an image per shard of every split, when all are counted.

    ``shards build`` and ``shards index`` record them (an older manifest does not); they
    give a content stream its exact length.
    """
    counts: dict[str, int] = {}
    for split in stored_splits(manifest):
        known = split.get("images_per_shard") or {}
        if any(name not in known for name in split.get("shards", [])):
            return None
        counts.update({name: int(known[name]) for name in split["shards"]})
    return counts or None


def manifest_collections(manifest: dict) -> list[str]:
    """Return the collection names of a manifest, in bank-index order."""
    return [c["name"] for c in sorted(manifest["collections"], key=lambda c: c["index"])]


def read_manifest(path: str | Path) -> dict:
    """Read and check a manifest written by :func:`build_shards`.

    Raises:
        DataError: the manifest is missing, or it is not a manifest of a version this code reads.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist (build it: artbank shards build)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"manifest {path} is not valid JSON: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        raise DataError(f"{path} is not an artbank shard manifest (version {MANIFEST_VERSION})")
    check_manifest(manifest, path)
    return manifest


def check_manifest(manifest: dict, path: Path) -> None:
    """Check a manifest's structure and that every shard it names exists, in one line each.

    Raises:
        DataError: naming the manifest and the key that is wrong, or the missing shards.
    """
    collections = manifest.get("collections")
    if not isinstance(collections, list) or not collections:
        raise DataError(f"{path}: 'collections' must be a non-empty list")
    for entry in collections:
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and isinstance(entry.get("index"), int)):  # fmt: skip
            raise DataError(f"{path}: collection entry {entry!r} needs a 'name' and an 'index'")
    if sorted(c["index"] for c in collections) != list(range(len(collections))):
        raise DataError(f"{path}: collection indices must be 0..{len(collections) - 1}")
    splits = manifest.get("splits", {})
    if not isinstance(splits, dict):
        raise DataError(f"{path}: 'splits' must be an object")
    root = path.parent
    missing = []
    for name, split in splits.items():
        shards = split.get("shards") if isinstance(split, dict) else None
        if not isinstance(shards, list) or not all(isinstance(x, str) for x in shards):
            raise DataError(f"{path}: splits.{name}.shards must be a list of file names")
        keys = split.get("keys", {})
        if not isinstance(keys, dict) or not all(
            isinstance(k, list) and all(isinstance(x, str) for x in k) for k in keys.values()
        ):
            raise DataError(f"{path}: splits.{name}.keys must map collections to key lists")
        for shard in shards:
            if Path(shard).is_absolute() or ".." in Path(shard).parts:
                raise DataError(f"{path}: shard {shard!r} is outside the manifest's folder")
            if not (root / shard).is_file():
                missing.append(shard)
    if missing:
        raise DataError(f"{path} names {len(missing)} missing shard(s): {missing[:3]}")


def main(argv: list[str]) -> int:
    """``artbank shards build``: build shards and a manifest from collection folders or Parquet."""
    parser = ToolParser(
        prog="artbank shards build",
        description="Build WebDataset shards and manifest.json from one folder per collection "
        "(--input) or from Parquet files, the Hugging Face datasets layout (--parquet).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="folder with one sub-folder per collection")
    source.add_argument("--parquet", help="a .parquet file or a folder of them")
    parser.add_argument("--output", required=True, help="folder for shards and manifest.json")
    parser.add_argument("--size", type=int, default=512, help="shorter side in px (0: keep)")
    parser.add_argument("--crop", action="store_true", help="also center-crop to a square")
    parser.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    parser.add_argument(
        "--val-per-collection", type=int, default=0, help="images per collection held out"
    )
    parser.add_argument("--format", default="jpg", choices=("jpg", "png"), help="image format")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality")
    parser.add_argument("--seed", type=int, default=0, help="training-order shuffle seed")
    parquet = parser.add_argument_group("Parquet input (--parquet)")
    parquet.add_argument("--image-column", default="image", help="image column (bytes or path)")
    parquet.add_argument(
        "--collection-column", default="artist",
        help="column naming the collection (a string, or an integer ClassLabel)",
    )  # fmt: skip
    parquet.add_argument("--caption-column", help="optional caption column")
    parquet.add_argument(
        "--workers", type=int_at_least(0), default=0, help="image decoding processes"
    )
    parquet.add_argument(
        "--shuffle-buffer", type=int_at_least(0), default=1000,
        help="samples held to shuffle the training order",
    )  # fmt: skip
    opts = parser.parse_args(argv)
    common = dict(size=opts.size, crop=opts.crop, maxcount=opts.maxcount,
                  val_per_collection=opts.val_per_collection, image_format=opts.format,
                  quality=opts.quality, seed=opts.seed)  # fmt: skip
    if opts.parquet:
        from artbank_pl.datamodules.parquet import build_from_parquet

        report = build_from_parquet(
            opts.parquet, opts.output, opts.image_column, opts.collection_column,
            opts.caption_column, workers=opts.workers, shuffle_buffer=opts.shuffle_buffer,
            **common,
        )  # fmt: skip
    else:
        report = build_shards(opts.input, opts.output, **common)
    counts = ", ".join(f"{name}: {n}" for name, n in sorted(report.written.items()))
    print(f"wrote {sum(report.written.values())} images ({counts}); manifest {report.manifest}")
    if report.skipped:
        shown = ", ".join(report.skipped[:10])
        more = (
            f" and {len(report.skipped) - 10} more (listed in the manifest)"
            if len(report.skipped) > 10
            else ""
        )
        print(f"skipped {len(report.skipped)} unreadable item(s): {shown}{more}")
    return 0
