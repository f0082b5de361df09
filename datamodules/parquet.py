"""Build our shards from Parquet files: the Hugging Face datasets layout (WikiArt and the like).

``artbank shards build --parquet DIR --image-column image --collection-column artist``
reads every ``*.parquet`` under ``DIR`` with pyarrow, one record batch at a time, and
writes the same shards and ``manifest.json`` as a build from folders. An image cell is
Hugging Face's ``Image`` struct (``bytes`` and ``path``), raw bytes, or a path (relative
to its Parquet file's folder). Integer labels are mapped to names through the column's
``ClassLabel`` names in the file's Hugging Face metadata when it has them; otherwise the
number is the collection's name. Rows without a label and images that do not decode are
skipped and counted, as a folder build skips unreadable files. Decoding, resizing and
encoding run on ``workers`` processes, in order, so the output does not depend on them.
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from artbank_pl.datamodules.shards import (
    MANIFEST,
    AtomicShardWriter,
    BuildReport,
    check_build_options,
    encode_image,
    load_rgb,
    sample_key,
    write_manifest,
)
from artbank_pl.errors import ConfigError, DataError
from artbank_pl.ratelimit import worth_logging

log = logging.getLogger(__name__)
#: rows read (and handed to the workers) at a time
ROWS_PER_BATCH = 256


def parquet_files(source: Path) -> list[Path]:
    """Return the Parquet files of ``source`` (a file, or a folder searched recursively, sorted).

    Raises:
        DataError: ``source`` does not exist or holds no ``.parquet`` file.
    """
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise DataError(f"--parquet {source} does not exist")
    files = sorted(source.rglob("*.parquet"))
    if not files:
        raise DataError(f"--parquet {source} holds no .parquet file")
    return files


def class_names(schema, column: str) -> list[str] | None:
    """Return the ``ClassLabel`` names of ``column`` in the Hugging Face metadata, if any."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        feature = json.loads(raw)["info"]["features"][column]
    except (ValueError, KeyError, TypeError):
        return None
    names = feature.get("names") if isinstance(feature, dict) else None
    return [str(n) for n in names] if isinstance(names, list) else None


def check_columns(schema, path: Path, columns: dict[str, str | None]) -> None:
    """Refuse an option naming a column the file does not have, listing the ones it has.

    Raises:
        ConfigError: a named column is missing.
    """
    for option, column in columns.items():
        if column is not None and column not in schema.names:
            raise ConfigError(
                f"{option} {column!r}: {path} has no such column (columns: "
                f"{', '.join(schema.names)})"
            )


def collection_name(value, names: list[str] | None) -> str | None:
    """Return a label cell as a collection name: ClassLabel names for integers, else the value."""
    if value is None:
        return None
    if names is not None and isinstance(value, int):
        return names[value] if 0 <= value < len(names) else None
    text = str(value).strip()
    return text or None


def image_source(cell, folder: Path):
    """Return what to open for an image cell: ``BytesIO`` of its bytes, or the path it names.

    Raises:
        ValueError: the cell holds neither bytes nor a path.
    """
    if isinstance(cell, dict):
        cell = cell.get("bytes") or cell.get("path")
    if isinstance(cell, bytes):
        return io.BytesIO(cell)
    if isinstance(cell, str) and cell:
        path = Path(cell)
        return path if path.is_absolute() else folder / path
    raise ValueError(f"the image cell holds no bytes or path ({type(cell).__name__})")


def prepare_row(job: tuple) -> tuple[bytes | None, str | None]:
    """Decode, resize and encode one image cell: ``(bytes, None)`` or ``(None, why)``."""
    cell, folder, size, crop, image_format, quality = job
    try:
        image = load_rgb(image_source(cell, folder), size, crop)
        return encode_image(image, image_format, quality), None
    except UnidentifiedImageError:
        return None, "not an image format PIL reads"
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return None, str(err) or type(err).__name__


def read_labels(files: list[Path], column: str) -> list[tuple[Path, int, str | None]]:
    """Return ``(file, row, collection)`` of every row, reading the label column only."""
    import pyarrow.parquet as pq

    rows = []
    for path in files:
        table = pq.ParquetFile(path)
        names = class_names(table.schema_arrow, column)
        values = table.read(columns=[column]).column(column).to_pylist()
        rows += [(path, i, collection_name(v, names)) for i, v in enumerate(values)]
    return rows


def holdout(rows: list[tuple[Path, int, str | None]], per_collection: int) -> set[tuple]:
    """Return the last ``per_collection`` rows of each collection (one stays in training)."""
    by_collection: dict[str, list[tuple]] = {}
    for path, i, name in rows:
        if name is not None:
            by_collection.setdefault(name, []).append((path, i))
    held = set()
    for items in by_collection.values():
        keep = max(1, len(items) - per_collection) if per_collection else len(items)
        held.update(items[keep:])
    return held


def iter_cells(path: Path, columns: list[str]) -> Iterator[tuple[int, dict]]:
    """Yield ``(row, {column: value})`` of one file, one record batch at a time."""
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(ROWS_PER_BATCH, columns=columns):
        for values in batch.to_pylist():
            yield row, values
            row += 1


class ShuffleBuffer:
    """A seeded buffer that hands samples on in random order (training shards mix collections)."""

    def __init__(self, writer: AtomicShardWriter, size: int, seed: int) -> None:
        self.writer, self.size, self.rng, self.items = writer, size, random.Random(seed), []

    def add(self, sample: dict) -> None:
        """Add a sample; once full, write a random one."""
        self.items.append(sample)
        if len(self.items) > self.size:
            self.writer.write(self.items.pop(self.rng.randrange(len(self.items))))

    def close(self) -> list[str]:
        """Write the rest in random order; return the shard names."""
        self.rng.shuffle(self.items)
        for sample in self.items:
            self.writer.write(sample)
        return self.writer.close()

    @property
    def sizes(self) -> list[int]:
        """Samples in each shard written, in order (after :meth:`close`)."""
        return self.writer.sizes


def build_from_parquet(
    source: str | Path,
    output_dir: str | Path,
    image_column: str = "image",
    collection_column: str = "artist",
    caption_column: str | None = None,
    size: int = 512,
    crop: bool = False,
    maxcount: int = 1000,
    val_per_collection: int = 0,
    image_format: str = "jpg",
    quality: int = 95,
    seed: int = 0,
    workers: int = 0,
    shuffle_buffer: int = 1000,
) -> BuildReport:
    """Build train (and validation) shards and a manifest from Parquet files.

    Args:
        source: a ``.parquet`` file or a folder of them.
        output_dir: where shards and ``manifest.json`` go (created).
        image_column: the image column (Hugging Face ``Image``, bytes or a path).
        collection_column: the column naming each row's collection (a string, or an
            integer label with ``ClassLabel`` names).
        caption_column: an optional text column, written as each sample's caption.
        size: shorter side after resizing; 0 keeps the original size.
        crop: also center-crop to a square.
        maxcount: samples per shard.
        val_per_collection: rows per collection held out into ``val-*.tar`` (the last ones).
        image_format: ``jpg`` or ``png``.
        quality: JPEG quality.
        seed: seed of the training order's shuffle buffer.
        workers: processes that decode and encode images (0: this one).
        shuffle_buffer: samples held to shuffle the training order (a folder build
            shuffles the whole list; Parquet is read as a stream).

    Returns:
        A report with the manifest path, counts written and rows skipped.
    """
    source, output_dir = Path(source), Path(output_dir)
    check_build_options(size, maxcount, val_per_collection, image_format, quality)
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--parquet needs pyarrow: pip install 'artbank-pl[parquet]' (or pyarrow)"
        ) from None
    files = parquet_files(source)
    _check_all_columns(files, image_column, collection_column, caption_column)
    rows = read_labels(files, collection_column)
    unlabelled = sum(name is None for _, _, name in rows)
    if unlabelled:
        log.warning("skipping %d of %d rows without a usable %r label", unlabelled, len(rows),
                    collection_column)  # fmt: skip
    names = sorted({name for _, _, name in rows if name is not None})
    if not names:
        raise DataError(f"no row of {source} has a {collection_column!r} label")
    build = _ParquetBuild(output_dir, maxcount, shuffle_buffer, seed,
                          (size, crop, image_format, quality))  # fmt: skip
    build.held = holdout(rows, val_per_collection)
    build.report.skipped += [f"{p.name}:{i}" for p, i, name in rows if name is None]
    by_file: dict[Path, dict[int, str | None]] = {}
    for path, i, name in rows:
        by_file.setdefault(path, {})[i] = name
    columns = (image_column, collection_column, caption_column)
    pool = ProcessPoolExecutor(workers) if workers > 0 else None
    try:
        for path in files:
            build.write_file(path, by_file.get(path, {}), columns, pool)
    finally:
        if pool is not None:
            pool.shutdown()
    report = build.finish()
    if not report.written:
        raise DataError(f"no readable image in {source} ({len(report.skipped)} skipped)")
    write_manifest(report, names, build.splits, {"size": size, "crop": crop,
                                                  "format": image_format})  # fmt: skip
    return report


class _ParquetBuild:
    """The state of one build: its split writers, counts, used keys and skips."""

    def __init__(self, output_dir: Path, maxcount: int, shuffle: int, seed: int, options) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        self.report = BuildReport(output_dir / MANIFEST)
        self.writers = {
            "train": ShuffleBuffer(
                AtomicShardWriter(output_dir, "train", maxcount), shuffle, seed
            ),  # fmt: skip
            "val": ShuffleBuffer(AtomicShardWriter(output_dir, "val", maxcount), 0, seed),
        }
        self.counts: dict[str, dict[str, int]] = {"train": {}, "val": {}}
        self.options = options  # size, crop, image format, quality
        self.held: set[tuple[Path, int]] = set()
        self.used: set[str] = set()
        self.splits: dict[str, dict] = {}

    def write_file(self, path: Path, labels: dict[int, str | None], columns, pool) -> None:
        """Write one Parquet file's labelled rows, a batch of rows at a time."""
        image_column, collection_column, caption_column = columns
        wanted = [c for c in columns if c]
        batch: list[tuple[int, dict]] = []
        for row, values in iter_cells(path, wanted):
            if labels.get(row) is not None:
                batch.append((row, values))
            if len(batch) >= ROWS_PER_BATCH:
                self._write_batch(path, batch, labels, image_column, caption_column, pool)
                batch = []
        self._write_batch(path, batch, labels, image_column, caption_column, pool)

    def _write_batch(self, path, batch, labels, image_column, caption_column, pool) -> None:
        """Encode a batch of rows (on the workers, in order); hand each sample to its split."""
        jobs = [(values[image_column], path.parent, *self.options) for _, values in batch]
        results = pool.map(prepare_row, jobs) if pool is not None else map(prepare_row, jobs)
        for (row, values), (data, problem) in zip(batch, results, strict=True):
            where = f"{path.name}:{row}"
            if problem is not None:
                self.report.skipped.append(where)
                if worth_logging(len(self.report.skipped)):
                    log.warning("skipping unreadable image at %s: %s (%d skipped)", where,
                                problem, len(self.report.skipped))  # fmt: skip
                continue
            name = labels[row]
            caption = values.get(caption_column) if caption_column else None
            meta = {"collection": name, "caption": str(caption) if caption else None,
                    "source": where}  # fmt: skip
            split = "val" if (path, row) in self.held else "train"
            key = sample_key(name, Path(f"{path.stem}_{row}"), self.used)
            image_format = self.options[2]
            sample = {"__key__": key, image_format: data, "json": json.dumps(meta).encode()}
            self.writers[split].add(sample)
            self.counts[split][name] = self.counts[split].get(name, 0) + 1

    def finish(self) -> BuildReport:
        """Close the shards; fill the report's counts and the manifest's splits."""
        for split, buffer in self.writers.items():
            shards = buffer.close()
            if shards:
                counts = self.counts[split]
                self.splits[split] = {"shards": shards, "counts": counts,
                                      "total": sum(counts.values()),
                                      "images_per_shard": dict(zip(shards, buffer.sizes,
                                                                   strict=True))}  # fmt: skip
        for counts in self.counts.values():
            for name, n in counts.items():
                self.report.written[name] = self.report.written.get(name, 0) + n
        return self.report


def _check_all_columns(files, image_column, collection_column, caption_column) -> None:
    import pyarrow.parquet as pq

    columns = {"--image-column": image_column, "--collection-column": collection_column,
               "--caption-column": caption_column}  # fmt: skip
    for path in files:
        try:
            schema = pq.read_schema(path)
        except (OSError, ValueError) as err:
            raise DataError(f"{path} is not a readable Parquet file: {err}") from None
        check_columns(schema, path, columns)
