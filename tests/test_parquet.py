"""``artbank shards build --parquet``: Hugging Face datasets' layout into our shards."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from artbank_pl.datamodules.parquet import build_from_parquet
from artbank_pl.datamodules.shards import main as shards_main
from artbank_pl.datamodules.shards import read_manifest
from artbank_pl.errors import ConfigError, DataError

NAMES = ["claude-monet", "katsushika-hokusai", "gustav-klimt"]


def png_bytes(seed, size=(40, 30)):
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def write_wikiart_like(folder, rows_per_file=(5, 4)):
    """Parquet files as `datasets` writes them: Image structs, ClassLabel ints in metadata.

    File 0: rows 0-4, labels 0 1 2 0 1, row 3's image is not an image.
    File 1: rows 0-3, labels 2 None 0 1, row 2's image is a path beside the file.
    """
    folder.mkdir(parents=True)
    features = {"image": {"_type": "Image"},
                "artist": {"names": NAMES, "_type": "ClassLabel"},
                "text": {"dtype": "string", "_type": "Value"}}  # fmt: skip
    meta = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    labels = [[0, 1, 2, 0, 1], [2, None, 0, 1]]
    Image.open(io.BytesIO(png_bytes(99))).save(folder / "beside.png")
    for f, count in enumerate(rows_per_file):
        images = []
        for r in range(count):
            data = b"garbage" if (f, r) == (0, 3) else png_bytes(10 * f + r)
            cell = {"bytes": None, "path": "beside.png"} if (f, r) == (1, 2) else {
                "bytes": data, "path": f"{f}-{r}.png"}  # fmt: skip
            images.append(cell)
        table = pa.table({
            "image": pa.array(images, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "artist": pa.array(labels[f][:count], pa.int64()),
            "text": pa.array([f"caption {f}-{r}" for r in range(count)]),
        }).replace_schema_metadata(meta)  # fmt: skip
        pq.write_table(table, folder / f"train-{f:05d}-of-00002.parquet", row_group_size=2)
    return folder


def read_shards(out, manifest, split):
    urls = [str(out / s) for s in manifest["splits"][split]["shards"]]
    return [(s["__key__"], s["png"], json.loads(s["json"])) for s in
            wds.WebDataset(urls, shardshuffle=False)]  # fmt: skip


def test_integer_labels_take_their_class_names_and_bad_rows_are_counted(tmp_path):
    source = write_wikiart_like(tmp_path / "wikiart")
    out = tmp_path / "shards"
    report = build_from_parquet(source, out, "image", "artist", caption_column="text", size=16,
                                maxcount=3, val_per_collection=1, image_format="png")  # fmt: skip
    # 9 rows: one without a label, one unreadable image (a monet) -> 7 written
    assert report.written == {"claude-monet": 2, "katsushika-hokusai": 3, "gustav-klimt": 2}
    assert sorted(report.skipped) == ["train-00000-of-00002.parquet:3",
                                      "train-00001-of-00002.parquet:1"]  # fmt: skip
    manifest = read_manifest(out / "manifest.json")
    assert [c["name"] for c in manifest["collections"]] == sorted(NAMES)
    samples = read_shards(out, manifest, "train") + read_shards(out, manifest, "val")
    assert len(samples) == 7 == len({key for key, _, _ in samples})
    by_source = {meta["source"]: (key, png, meta) for key, png, meta in samples}
    key, png, meta = by_source["train-00001-of-00002.parquet:2"]  # the image given by path
    assert meta == {"collection": "claude-monet", "caption": "caption 1-2",
                    "source": "train-00001-of-00002.parquet:2"}  # fmt: skip
    assert key.startswith("claude-monet__") and min(Image.open(io.BytesIO(png)).size) == 16
    # the last row of each collection is held out (the unlabelled and unreadable ones aside)
    held = sorted(meta["source"] for _, _, meta in read_shards(out, manifest, "val"))
    assert held == ["train-00001-of-00002.parquet:0", "train-00001-of-00002.parquet:2",
                    "train-00001-of-00002.parquet:3"]  # fmt: skip
    assert manifest["splits"]["train"]["total"] == 4 and manifest["splits"]["val"]["total"] == 3


def test_workers_do_not_change_the_shards(tmp_path):
    source = write_wikiart_like(tmp_path / "wikiart")
    kwargs = dict(size=16, maxcount=4, image_format="png", seed=3)
    build_from_parquet(source, tmp_path / "a", workers=0, **kwargs)
    build_from_parquet(source, tmp_path / "b", workers=2, **kwargs)
    manifest = read_manifest(tmp_path / "a" / "manifest.json")
    assert manifest == read_manifest(tmp_path / "b" / "manifest.json")
    assert read_shards(tmp_path / "a", manifest, "train") == read_shards(
        tmp_path / "b", manifest, "train"
    )


def test_string_labels_and_plain_bytes_build_without_metadata(tmp_path):
    table = pa.table({"img": [png_bytes(1), png_bytes(2)], "style": ["Ukiyo-e", "Cubism"]})
    pq.write_table(table, tmp_path / "plain.parquet")
    report = build_from_parquet(tmp_path / "plain.parquet", tmp_path / "out", "img", "style",
                                size=8)  # fmt: skip
    assert report.written == {"Ukiyo-e": 1, "Cubism": 1} and not report.skipped


def test_a_missing_column_is_named_with_the_columns_there_are(tmp_path, capsys):
    source = write_wikiart_like(tmp_path / "wikiart")
    with pytest.raises(ConfigError, match=r"--collection-column 'style': .*train-00000.* has no "
                       r"such column \(columns: image, artist, text\)"):  # fmt: skip
        build_from_parquet(source, tmp_path / "out", "image", "style")
    assert not (tmp_path / "out").exists()  # refused before anything is written
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no .parquet file"):
        build_from_parquet(tmp_path / "empty", tmp_path / "o2")
    with pytest.raises(DataError, match="nowhere does not exist"):
        build_from_parquet(tmp_path / "nowhere", tmp_path / "o2")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="bad.parquet is not a readable Parquet file"):
        build_from_parquet(tmp_path / "bad.parquet", tmp_path / "o3")


def test_the_command_builds_from_parquet_and_needs_exactly_one_source(tmp_path, capsys):
    source = write_wikiart_like(tmp_path / "wikiart")
    rc = shards_main(["--parquet", str(source), "--output", str(tmp_path / "out"), "--size",
                      "8", "--workers", "0"])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0 and "wrote 7 images" in printed and "skipped 2 unreadable item(s)" in printed
    with pytest.raises(SystemExit):
        shards_main(["--parquet", str(source), "--input", "x", "--output", "y"])
    assert "not allowed with argument" in capsys.readouterr().err
