import json
import tarfile
from pathlib import Path

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
    assert set(meta) == {"collection", "caption", "source"}
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


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: [m], "not an artbank shard manifest"),
        (lambda m: {**m, "collections": "monet"}, "'collections' must be a non-empty list"),
        (lambda m: {**m, "collections": [{"name": "monet"}]}, "needs a 'name' and an 'index'"),
        (lambda m: {**m, "splits": {"train": {"shards": ["/etc/passwd"]}}}, "outside the manifest"),
        (lambda m: {**m, "splits": {"train": {"shards": ["gone.tar"]}}}, r"1 missing shard\(s\)"),
        (lambda m: {**m, "splits": {"train": {"shards": "x.tar"}}}, "must be a list of file names"),
    ],
)
def test_a_malformed_manifest_is_one_line_naming_the_key(shard_dir, tmp_path, edit, message):
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    bad = shard_dir / "bad.json"
    bad.write_text(json.dumps(edit(manifest)))
    with pytest.raises(DataError, match=message):
        read_manifest(bad)


def test_hostile_images_are_skipped_counted_and_16_bit_grey_kept_by_value(tmp_path):
    import numpy as np
    from PIL import Image

    from tests import hostile

    images = write_collections(tmp_path / "in", {"monet": 3}, size=(24, 24))
    folder = images / "monet"
    hostile.decompression_bomb(folder / "bomb.png")
    hostile.elongated(folder / "strip.png")
    hostile.bad_utf8_caption(folder / "img00.png")
    hostile.grey16(folder / "grey.png", value=30000)
    report = build_shards(images, tmp_path / "out", size=24, image_format="png")
    skipped = sorted(Path(p).name for p in report.skipped)
    assert skipped == ["bomb.png", "img00.png", "strip.png"]
    assert report.written == {"monet": 3}  # img01, img02 and the 16-bit image
    assert not list((tmp_path / "out").glob("*.tmp*"))
    with tarfile.open(tmp_path / "out" / "train-000000.tar") as tar:
        names = [m.name for m in tar.getmembers() if m.name.endswith(".png")]
        grey = [n for n in names if "grey" in n]
        pixels = np.asarray(Image.open(tar.extractfile(grey[0])))
    assert abs(int(pixels.mean()) - round(30000 / 65535 * 255)) <= 1  # not white


def test_a_sample_whose_json_is_not_an_object_is_skipped(tmp_path):
    import io

    import webdataset as wds
    from PIL import Image

    from artbank_pl.datamodules import ArtworkDataModule

    png = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(png, format="PNG")
    with wds.TarWriter(str(tmp_path / "train-000000.tar")) as sink:
        sink.write({"__key__": "bad", "png": png.getvalue(), "json": b"[1, 2]"})
        for i in range(3):
            meta = json.dumps({"collection": "monet"}).encode()
            sink.write({"__key__": f"good{i}", "png": png.getvalue(), "json": meta})
    data = ArtworkDataModule(train_shards=str(tmp_path / "train-000000.tar"),
                             collections=["monet"], resolution=16, batch_size=1, num_workers=0,
                             samples_per_epoch=3, shuffle_buffer=1)  # fmt: skip
    data.setup("fit")
    keys = [key for batch in data.train_dataloader() for key in batch["__key__"]]
    assert len(keys) == 3 and "bad" not in keys


def test_symlinked_sub_folders_are_read_and_empty_collections_are_named(tmp_path, caplog):
    root = write_collections(tmp_path / "in", {"a": 2, "b": 2})
    elsewhere = write_collections(tmp_path / "elsewhere", {"more": 3})
    (root / "a" / "linked").symlink_to(elsewhere / "more", target_is_directory=True)
    (root / "a" / "loop").symlink_to(root / "a", target_is_directory=True)  # read once
    (root / "empty").mkdir()
    build_shards(root, tmp_path / "out", size=32, val_per_collection=0)
    manifest = read_manifest(tmp_path / "out/manifest.json")
    assert manifest["splits"]["train"]["counts"] == {"a": 5, "b": 2}
    assert [c["name"] for c in manifest["collections"]] == ["a", "b"]
    assert f"left out collection folder {root / 'empty'}: it holds no image" in caplog.text
