"""Which collection and caption a shard sample carries, in our shards and in other tools'.

Our shards (``artbank shards build``) hold ``KEY.json`` with ``{"collection", "caption"}``.
Shards written by other tools (img2dataset, LAION-style sets) hold ``KEY.jpg``, ``KEY.txt``
and ``KEY.json`` with fields of their own (``{"artist": ...}``, or nested, as
``{"meta": {"style": ...}}``), or no json at all with the labels in a table beside them.
:class:`CollectionSelector` reads the collection from a json field (a dotted path) or from a
key-to-collection table, keeps the samples of this run's collections, counts the others
once per collection, and says in one line when a whole pass matched nothing.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

from artbank_pl.datamodules.stream import sample_meta
from artbank_pl.errors import DataError
from artbank_pl.ratelimit import worth_logging

log = logging.getLogger(__name__)
#: the json field our own shards keep the collection in
DEFAULT_COLLECTION_KEY = "collection"
#: where :meth:`CollectionSelector.index_of` leaves a kept sample's bank index
INDEX_FIELD = "__collection_idx__"
#: where :meth:`CollectionSelector.name_of` leaves the name it read (the json is parsed once)
NAME_FIELD = "__collection_name__"
#: how many of the found values a no-match error names
_SHOWN_VALUES = 8


def key_rank(key: str) -> int:
    """Return a sample key's place in the validation draw: 8 bytes of its BLAKE2b hash.

    The smallest ranks of a collection are its held-out samples, whichever shard holds them
    and whichever order the shards are read in.
    """
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big")


def json_field(meta: dict, path: str):
    """Return the value at a dotted ``path`` (``meta.artist``) of a json object, or None."""
    value = meta
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def read_collection_table(path: str) -> dict[str, str]:
    """Read a sample-key -> collection table: a json object, or a two-column csv/tsv file.

    A csv/tsv file may start with a header row (``key,collection``); rows are ``KEY,NAME``.

    Raises:
        DataError: the file is missing, unreadable, or not of that form (named).
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"data.collection_table {path}: cannot read it ({err})") from None
    if file.suffix == ".json":
        try:
            table = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"data.collection_table {path}: not valid JSON ({err})") from None
        if not isinstance(table, dict):
            raise DataError(f"data.collection_table {path}: must be a json object key -> name")
        return {str(k): str(v) for k, v in table.items()}
    delimiter = "\t" if file.suffix == ".tsv" else ","
    rows = [row for row in csv.reader(text.splitlines(), delimiter=delimiter) if row]
    if rows and [c.strip().lower() for c in rows[0]] == ["key", "collection"]:
        rows = rows[1:]
    bad = next((i for i, row in enumerate(rows) if len(row) != 2), None)
    if bad is not None or not rows:
        where = f"row {bad + 1} has {len(rows[bad])} columns" if bad is not None else "no rows"
        raise DataError(f"data.collection_table {path}: needs KEY,COLLECTION rows ({where})")
    return {key.strip(): name.strip() for key, name in rows}


class CollectionSelector:
    """The collection of a raw shard sample, and whether this run trains on it.

    Args:
        collection_index: this run's collection names -> bank index.
        collection_key: json field (a dotted path for nested objects) naming the collection.
        collection_table: key -> collection, instead of the json field.
        held_out: collection -> keys of its validation samples, when the split is by key (an
            index of foreign shards: the held-out samples sit in the training shards).
        validation: this stream reads the ``held_out`` keys only; otherwise every key but them.
    """

    def __init__(
        self,
        collection_index: dict[str, int],
        collection_key: str = DEFAULT_COLLECTION_KEY,
        collection_table: dict[str, str] | None = None,
        held_out: dict[str, frozenset[str]] | None = None,
        validation: bool = False,
    ) -> None:
        self.collection_index = collection_index
        self.collection_key = collection_key
        self.collection_table = collection_table
        self.held_out = held_out
        self.validation = validation
        #: samples passed over, per collection value found (None: the field is missing)
        self.other = Counter()

    def in_split(self, sample: dict) -> bool:
        """Whether the sample is on this stream's side of a split by key (always, without one)."""
        if self.held_out is None:
            return True
        try:
            name = self.name_of(sample)
        except ValueError:
            return not self.validation  # damaged: training skips and counts it
        return (sample["__key__"] in self.held_out.get(name, ())) == self.validation

    def name_of(self, sample: dict) -> str | None:
        """Return the sample's collection name (None when it has none).

        Raises:
            ValueError: the sample's json is damaged (not UTF-8 JSON, or not an object).
        """
        if NAME_FIELD not in sample:
            sample[NAME_FIELD] = self._read_name(sample)
        return sample[NAME_FIELD]

    def _read_name(self, sample: dict) -> str | None:
        if self.collection_table is not None:
            return self.collection_table.get(sample["__key__"])
        if "json" not in sample:
            return None
        value = json_field(sample_meta(sample), self.collection_key)
        return None if value is None or isinstance(value, dict | list) else str(value)

    def index_of(self, sample: dict) -> int | None:
        """Return the bank index of the sample's collection, or None (counted) if not ours.

        Raises:
            ValueError: the sample's json is damaged.
        """
        name = self.name_of(sample)
        index = self.collection_index.get(name) if name is not None else None
        if index is None:
            self._count_other(name)
        else:  # the transform reads it back instead of parsing the json again
            sample[INDEX_FIELD] = index
        return index

    def bank_index(self, sample: dict) -> int:
        """Return the bank index :meth:`index_of` recorded on a kept sample (or read it now).

        Raises:
            KeyError: the sample's collection is not one of this run's.
        """
        if INDEX_FIELD in sample:
            return sample[INDEX_FIELD]
        name = self.name_of(sample)
        if name not in self.collection_index:
            raise KeyError(f"collection {name!r} is not in this run's collections")
        return self.collection_index[name]

    def _count_other(self, name: str | None) -> None:
        """Count a passed-over sample; name a collection when first seen (a few, then counts)."""
        self.other[name] += 1
        if self.other[name] > 1 or not worth_logging(len(self.other)):
            return  # never a line per sample; the first few collections, then at 10, 100, ...
        what = self._source()
        if name is None:
            log.warning("passing over samples without %s (counted)", what)
        else:
            log.warning(
                "passing over collection %r of %s: not in this run's collections "
                "(counted; %d such values so far)", name, what, len(self.other),
            )  # fmt: skip

    def _source(self) -> str:
        if self.collection_table is not None:
            return "data.collection_table"
        return f"json field {self.collection_key!r} (data.collection_key)"

    def no_match_error(self, urls: list[str], parts: int = 1) -> DataError:
        """Return the one-line error of a pass over ``urls`` (one of ``parts``) that kept none."""
        found = [repr(name) for name, _ in self.other.most_common(_SHOWN_VALUES)]
        extra = len(self.other) - _SHOWN_VALUES
        more = f" and {extra} more" if extra > 0 else ""
        shards = ", ".join(urls[:2]) + (f" and {len(urls) - 2} more" if len(urls) > 2 else "")
        if parts > 1:
            shards += f" (the shards of one of {parts} parts: ranks x dataloader workers)"
        return DataError(
            f"no sample of {shards} belongs to this run's collections: {self._source()} "
            f"holds {', '.join(found)}{more} ({sum(self.other.values())} samples); wanted "
            f"{sorted(self.collection_index)}. Set data.collection_key to the field that "
            "names the collection, or list the collections it holds"
        )


def sample_caption(sample: dict, meta: dict | None, caption_key: str) -> str:
    """Return a sample's caption: the json field ``caption_key``, else its ``.txt``, else "".

    Raises:
        ValueError: the caption is not text (a number, a list) or not UTF-8 (the stream
            skips the sample and counts it).
    """
    value = json_field(meta, caption_key) if meta is not None else None
    if value is None and "txt" in sample:
        value = sample["txt"].decode("utf-8")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"its caption is of type {type(value).__name__}, not text")
    return value
