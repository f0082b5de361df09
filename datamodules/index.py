"""``artbank shards index``: a manifest for WebDataset shards another tool wrote.

img2dataset and LAION-style sets come without our ``manifest.json``. One streaming pass over
the shards (parallel over shards) counts each collection's samples per shard and writes the
manifest ``artbank shards build`` would, beside the shards, with the json field (or table)
that names the collections. ``ArtworkDataModule(manifest=...)`` then knows the collections,
the epoch length and the shard list, and splits shards over ranks and workers as for our own
shards. Samples without an image or a collection are counted, not listed in the counts.

The validation split is by key (``--val-per-collection N``): the samples stay where they are,
and the manifest lists, per collection, the N keys with the smallest hash
(:func:`~artbank_pl.datamodules.labels.key_rank`), which training passes over and
validation reads. The draw depends on the keys alone, not on the shard order or the workers.
"""

from __future__ import annotations

import heapq
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
    key_rank,
    read_collection_table,
)
from artbank_pl.datamodules.shards import MANIFEST, MANIFEST_VERSION
from artbank_pl.datamodules.stream import IMAGE_KEYS, expand_urls, iter_tar_samples
from artbank_pl.errors import DataError
from artbank_pl.options import check_at_least
from artbank_pl.tool_args import ToolParser, int_at_least

log = logging.getLogger(__name__)


def count_shard(
    url: str, collection_key: str, table: dict[str, str] | None, val_per_collection: int = 0
) -> dict:
    """Count one shard's samples per collection; samples unfit for training are counted apart.

    Returns:
        ``{"counts": {name: n}, "no_image": n, "no_collection": n, "damaged": n,
        "held_out": {name: [[rank, key], ...]}}``: ``held_out`` holds each collection's
        ``val_per_collection`` smallest-ranked keys of this shard (the candidates of the draw).
    """
    reader = CollectionSelector({}, collection_key, table)
    counts, unfit = Counter(), Counter()
    # a max-heap per collection of (-rank, key): the smallest ranks stay, memory stays bounded
    smallest: dict[str, list[tuple[int, str]]] = {}
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
            continue
        counts[name] += 1
        if val_per_collection:
            heap = smallest.setdefault(name, [])
            entry = (-key_rank(sample["__key__"]), sample["__key__"])
            if len(heap) < val_per_collection:
                heapq.heappush(heap, entry)
            elif entry > heap[0]:
                heapq.heapreplace(heap, entry)
    return {
        "counts": dict(counts),
        **{k: unfit[k] for k in ("no_image", "no_collection", "damaged")},
        "held_out": {name: [[-r, key] for r, key in heap] for name, heap in smallest.items()},
    }


def draw_held_out(per_shard: list[dict], totals: Counter, per_collection: int) -> dict[str, set]:
    """Each collection's held-out keys: its ``per_collection`` smallest ranks over all shards.

    A collection keeps at least one sample for training, as ``shards build`` does.
    """
    held_out = {}
    for name, total in totals.items():
        take = min(per_collection, total - 1)
        candidates = {tuple(c) for r in per_shard for c in r["held_out"].get(name, [])}
        held_out[name] = {key for _, key in heapq.nsmallest(take, candidates)} if take else set()
    return held_out


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
    val_per_collection: int = 0,
) -> Path:
    """Scan the shards of ``pattern`` and write ``manifest.json`` (default: beside them).

    ``val_per_collection`` samples of each collection (at most all but one) are held out for
    validation by key (see the module's docstring).

    Raises:
        DataError: no shard, a shard outside the manifest's folder, or no sample names a
            collection (the line names the field).
    """
    check_at_least("--workers", workers, 1)
    check_at_least("--val-per-collection", val_per_collection, 0)
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
    count = partial(count_shard, collection_key=collection_key, table=table,
                    val_per_collection=val_per_collection)  # fmt: skip
    with ProcessPoolExecutor(min(workers, len(urls))) as pool:
        per_shard = list(pool.map(count, urls))
    totals = Counter()
    for result in per_shard:
        totals.update(result["counts"])
    unfit = {k: sum(r[k] for r in per_shard) for k in ("no_image", "no_collection", "damaged")}
    if not totals:
        source = "the collection table" if table else f"json field {collection_key!r}"
        raise DataError(f"no sample of {pattern} names a collection in {source} ({unfit})")
    held_out = draw_held_out(per_shard, totals, val_per_collection)
    manifest = build_manifest(names, per_shard, totals, unfit, held_out)
    table_path = str(Path(collection_table).resolve()) if collection_table else None
    manifest["labels"] = {"collection_key": collection_key, "collection_table": table_path}
    path = root / MANIFEST
    atomic_write_text(path, json.dumps(manifest, indent=2))
    return path


def build_manifest(
    names: list[str],
    per_shard: list[dict],
    totals: Counter,
    unfit: dict,
    held_out: dict[str, set] | None = None,
) -> dict:
    """Return the manifest ``shards build`` writes, with per-shard counts.

    With ``held_out`` keys, the ``val`` split names the shards that hold them and lists the
    keys; the ``train`` split's counts leave them out.
    """
    held_out = held_out or {}
    val_per_shard = [
        Counter(name for name, keys in held_out.items()
                for _, key in r["held_out"].get(name, []) if key in keys)
        for r in per_shard
    ]  # fmt: skip
    val_counts = Counter({name: len(keys) for name, keys in held_out.items() if keys})
    train_per_shard = [
        Counter(r["counts"]) - v for r, v in zip(per_shard, val_per_shard, strict=True)
    ]
    splits = {
        "train": {
            "shards": names,
            "counts": dict(sorted((totals - val_counts).items())),
            "total": sum((totals - val_counts).values()),
            "per_shard": {n: dict(c) for n, c in zip(names, train_per_shard, strict=True)},
            # every sample with an image, labelled or not: what a content stream reads
            "images_per_shard": {
                n: sum(r["counts"].values()) + r["no_collection"] + r["damaged"]
                for n, r in zip(names, per_shard, strict=True)
            },
        }
    }
    if val_counts:
        splits["val"] = {
            "shards": [n for n, v in zip(names, val_per_shard, strict=True) if v],
            "counts": dict(sorted(val_counts.items())),
            "total": sum(val_counts.values()),
            "per_shard": {n: dict(v) for n, v in zip(names, val_per_shard, strict=True) if v},
            "keys": {name: sorted(keys) for name, keys in sorted(held_out.items()) if keys},
        }
    collections = sorted(totals)
    return {
        "version": MANIFEST_VERSION,
        "collections": [
            {"name": name, "index": i, "count": totals[name]} for i, name in enumerate(collections)
        ],
        "splits": splits,
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
    parser.add_argument(
        "--val-per-collection", type=int_at_least(0), default=0,
        help="samples per collection held out for validation, chosen by key",
    )  # fmt: skip
    opts = parser.parse_args(argv)
    path = index_shards(opts.shards, opts.collection_key, opts.collection_table, opts.output,
                        opts.workers, opts.val_per_collection)  # fmt: skip
    manifest = json.loads(path.read_text())
    counts = ", ".join(f"{c['name']}: {c['count']}" for c in manifest["collections"][:10])
    more = len(manifest["collections"]) - 10
    counts += f" and {more} more" if more > 0 else ""
    held = manifest["splits"].get("val", {}).get("total", 0)
    total = manifest["splits"]["train"]["total"] + held
    print(f"indexed {total} samples ({counts}); {held} held out for validation; "
          f"unfit {manifest['unfit']}; manifest {path}")  # fmt: skip
    return 0
