import json
import tarfile

import pytest

from artbank_pl.datamodules.shards import build_shards, read_manifest
from artbank_pl.errors import DataError
from tests.conftest import write_collections


def test_build_writes_shards_and_manifest(shard_dir):
    manifest = read_manifest(shard_dir / "manifest.json")
    assert [c["name"] for c in manifest["collections"]] == ["hokusai", "monet"]
    assert manifest["splits"]["train"]["counts"] == {"hokusai": 4, "monet": 5}
    assert manifest["splits"]["val"]["counts"] == {"hokusai": 1, "monet": 1}
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) == 5  # 9 samples, 2 per shard
    with tarfile.open(shard_dir / shards[0]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile([n for n in names if n.endswith(".json")][0]).read())
    assert {n.rsplit(".", 1)[1] for n in names} == {"jpg", "json"}
    assert set(meta) == {"collection", "caption", "source", "original_width", "original_height"}
    # the size before resizing to 64 (SDXL conditions on it), as img2dataset records it
    assert (meta["original_width"], meta["original_height"]) == (80, 64)
    assert not list(shard_dir.glob(".*"))  # no temporary file left behind


def test_corrupt_image_is_skipped_counted_and_named(tmp_path, caplog):
    root = write_collections(tmp_path / "in", {"a": 3, "b": 2})
    bad = root / "a" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    (root / "b" / "img00.txt").write_text("a harbour at dusk\n")
    report = build_shards(root, tmp_path / "out", size=32)
    assert report.written == {"a": 3, "b": 2}
    assert report.skipped == [str(bad)]
    assert str(bad) in caplog.text
    manifest = read_manifest(tmp_path / "out")
    assert manifest["skipped"] == [str(bad)]
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        metas = [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    assert {m["caption"] for m in metas if m["source"] == "b/img00.png"} == {"a harbour at dusk"}


def test_bad_inputs_name_the_path(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        build_shards(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no collection folders"):
        build_shards(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(tmp_path / "missing.json")
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(DataError, match="not an artbank shard manifest"):
        read_manifest(tmp_path / "m.json")


def test_16_bit_grey_is_converted_by_value_in_shards_and_content(tmp_path):
    import numpy as np
    from PIL import Image

    from artbank_pl.datamodules.content import FolderStream
    from tests import hostile

    images = write_collections(tmp_path / "in", {"monet": 1}, size=(24, 24))
    hostile.grey16(images / "monet" / "grey.png", value=30000)
    expected = round(30000 / 65535 * 255)  # 117, not white
    build_shards(images, tmp_path / "out", size=24, image_format="png")
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        grey = [m for m in tar.getmembers() if "grey" in m.name and m.name.endswith(".png")]
        pixels = np.asarray(Image.open(tar.extractfile(grey[0])))
    assert abs(int(pixels.mean()) - expected) <= 1
    item = next(i for i in FolderStream(images / "monet", 16) if i["__key__"] == "grey")
    assert abs(float(item["pixel_values"].mean() + 1) * 127.5 - expected) <= 1
