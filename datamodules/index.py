"""``artbank shards index``: a manifest for WebDataset shards another tool wrote.

img2dataset and LAION-style sets come without our ``manifest.json``. One streaming pass over
the shards (parallel over shards) counts each collection's samples per shard and writes the
manifest ``artbank shards build`` would, beside the shards, with the json field (or table)
that names the collections. ``ArtworkDataModule(manifest=...)`` then knows the collections,
the epoch length and the shard list, and splits shards over ranks and workers as for our own
shards. Samples without an image or a collection are counted, not listed in the counts.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from artbank_pl.atomic import atomic_write_text
from artbank_pl.datamodules.labels import (
    DEFAULT_COLLECTION_KEY,
    CollectionSelector,
    read_collection_table,
)
from artbank_pl.datamodules.shards import MANIFEST, MANIFEST_VERSION
from artbank_pl.datamodules.stream import IMAGE_KEYS, expand_urls, iter_tar_samples
from artbank_pl.errors import DataError
from artbank_pl.options import check_at_least
from artbank_pl.tool_args import ToolParser, int_at_least

log = logging.getLogger(__name__)


def count_shard(url: str, collection_key: str, table: dict[str, str] | None) -> dict:
    """Count one shard's samples per collection; samples unfit for training are counted apart.

    Returns:
        ``{"counts": {name: n}, "no_image": n, "no_collection": n, "damaged": n}``.
    """
    reader = CollectionSelector({}, collection_key, table)
    counts, unfit = Counter(), Counter()
    for sample in iter_tar_samples(url):
        if not any(key in sample for key in IMAGE_KEYS):
            unfit["no_image"] += 1
            continue
        try:
            name = reader.name_of(sample)
        except ValueError:
            unfit["damaged"] += 1
            continue
        if name is None:
            unfit["no_collection"] += 1
        else:
            counts[name] += 1
    return {
        "counts": dict(counts),
        **{k: unfit[k] for k in ("no_image", "no_collection", "damaged")},
    }


def shard_names(urls: list[str], root: Path) -> list[str]:
    """Each shard's path relative to the manifest's folder (the manifest names them so).

    Raises:
        DataError: a shard is remote, piped or outside ``root``.
    """
    names = []
    for url in urls:
        path = Path(url)
        if "://" in url or url.startswith("pipe:") or not path.resolve().is_relative_to(root):
            raise DataError(
                f"shards index: {url} is not a local file under {root}; the manifest lists "
                "shards relative to its folder (index local copies, or train on the URLs "
                "with data.train_shards and data.samples_per_epoch)"
            )
        names.append(str(path.resolve().relative_to(root)))
    return names


def index_shards(
    pattern: str,
    collection_key: str = DEFAULT_COLLECTION_KEY,
    collection_table: str | None = None,
    output: str | Path | None = None,
    workers: int = 4,
) -> Path:
    """Scan the shards of ``pattern`` and write ``manifest.json`` (default: beside them).

    Raises:
        DataError: no shard, a shard outside the manifest's folder, or no sample names a
            collection (the line names the field).
    """
    check_at_least("--workers", workers, 1)
    if not pattern.strip():
        raise DataError("shards index: the shard pattern is empty (give 'DIR/{00000..00099}.tar')")
    urls = expand_urls(pattern)
    local = [url for url in urls if "://" not in url and not url.startswith("pipe:")]
    missing = [url for url in local if not Path(url).is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(
            f"shards index: {len(missing)} of {len(urls)} shards of {pattern} do not exist: "
            f"{', '.join(missing[:3])}{more}"
        )
    root = Path(output or Path(urls[0]).parent).resolve()
    names = shard_names(urls, root)
    table = read_collection_table(collection_table) if collection_table else None
    count = partial(count_shard, collection_key=collection_key, table=table)
    with ProcessPoolExecutor(min(workers, len(urls))) as pool:
        per_shard = list(pool.map(count, urls))
    totals = Counter()
    for result in per_shard:
        totals.update(result["counts"])
    unfit = {k: sum(r[k] for r in per_shard) for k in ("no_image", "no_collection", "damaged")}
    if not totals:
        source = "the collection table" if table else f"json field {collection_key!r}"
        raise DataError(f"no sample of {pattern} names a collection in {source} ({unfit})")
    manifest = build_manifest(names, per_shard, totals, unfit)
    table_path = str(Path(collection_table).resolve()) if collection_table else None
    manifest["labels"] = {"collection_key": collection_key, "collection_table": table_path}
    path = root / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2))
    return path


def build_manifest(names: list[str], per_shard: list[dict], totals: Counter, unfit: dict) -> dict:
    """Return the manifest ``shards build`` writes, with one train split and per-shard counts."""
    collections = sorted(totals)
    return {
        "version": MANIFEST_VERSION,
        "collections": [
            {"name": name, "index": i, "count": totals[name]} for i, name in enumerate(collections)
        ],
        "splits": {
            "train": {
                "shards": names,
                "counts": dict(sorted(totals.items())),
                "total": sum(totals.values()),
                "per_shard": {n: r["counts"] for n, r in zip(names, per_shard, strict=True)},
                # every sample with an image, labelled or not: what a content stream reads
                "images_per_shard": {
                    n: sum(r["counts"].values()) + r["no_collection"] + r["damaged"]
                    for n, r in zip(names, per_shard, strict=True)
                },
            }
        },
        "unfit": unfit,
        "skipped": [],
    }


def main(argv: list[str]) -> int:
    """``artbank shards index``: write a manifest for shards another tool wrote."""
    parser = ToolParser(
        prog="artbank shards index",
        description="Count the collections of existing WebDataset shards into manifest.json.",
    )
    parser.add_argument("shards", help="brace pattern of the shards: 'data/{00000..00099}.tar'")
    parser.add_argument(
        "--collection-key", default=DEFAULT_COLLECTION_KEY,
        help="json field naming a sample's collection (dotted for nested)",
    )  # fmt: skip
    parser.add_argument(
        "--collection-table", default=None,
        help="key -> collection file (json object, or KEY,COLLECTION csv)",
    )  # fmt: skip
    parser.add_argument(
        "--output", default=None, help="folder of manifest.json (default: the shards' folder)"
    )
    parser.add_argument("--workers", type=int_at_least(1), default=4,
                        help="shards scanned in parallel")  # fmt: skip
    opts = parser.parse_args(argv)
    path = index_shards(opts.shards, opts.collection_key, opts.collection_table, opts.output,
                        opts.workers)  # fmt: skip
    manifest = json.loads(path.read_text())
    counts = ", ".join(f"{c['name']}: {c['count']}" for c in manifest["collections"][:10])
    more = len(manifest["collections"]) - 10
    counts += f" and {more} more" if more > 0 else ""
    print(f"indexed {manifest['splits']['train']['total']} samples ({counts}); "
          f"unfit {manifest['unfit']}; manifest {path}")  # fmt: skip
    return 0
