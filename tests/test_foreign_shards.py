"""Training on WebDataset shards written by other tools (img2dataset's layout, no manifest)."""

import io
import json
import logging
import time

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from artbank_pl.datamodules import ArtworkDataModule
from artbank_pl.datamodules.labels import json_field, read_collection_table
from artbank_pl.errors import DataError
from tests.hostile_runs import fit
from tests.test_prompt_bank_task import trainer

ARTISTS = {"monet": 6, "hokusai": 6, "degas": 20}  # degas: a collection this run does not list


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def write_img2dataset_shards(root, artists=ARTISTS, per_shard=16):
    """``00000.tar`` ...: KEY.jpg, KEY.txt and KEY.json ``{"artist": ...}``, as img2dataset
    writes them, plus the damage real crawls have: a sample without its image, a corrupt
    jpg, a json without the field, a caption that is a number."""
    samples = [
        {"__key__": f"{len(artist)}{i:05d}", "jpg": jpeg(i),
         "txt": f"a painting by {artist}".encode(),
         "json": json.dumps({"artist": artist, "meta": {"style": f"{artist}-style"}}).encode()}
        for artist, count in artists.items() for i in range(count)
    ]  # fmt: skip
    samples.append({"__key__": "noimage", "txt": b"x", "json": b'{"artist": "monet"}'})
    samples.append(
        {"__key__": "corrupt", "jpg": b"\xff\xd8garbage", "json": b'{"artist": "monet"}'}
    )
    samples.append({"__key__": "nofield", "jpg": jpeg(99), "json": b'{"url": "http://x"}'})
    samples.append({"__key__": "numbercap", "jpg": jpeg(98),
                    "json": b'{"artist": "hokusai", "caption": 7}'})  # fmt: skip
    root.mkdir(parents=True, exist_ok=True)
    urls = []
    for start in range(0, len(samples), per_shard):
        url = root / f"{start // per_shard:05d}.tar"
        with wds.TarWriter(str(url)) as sink:
            for sample in samples[start : start + per_shard]:
                sink.write(sample)
        urls.append(url)
    return urls


def test_a_json_field_is_read_at_a_dotted_path():
    meta = {"artist": "monet", "meta": {"style": "impressionism"}, "n": 3}
    assert json_field(meta, "artist") == "monet"
    assert json_field(meta, "meta.style") == "impressionism"
    assert json_field(meta, "meta.missing") is None
    assert json_field(meta, "n.deeper") is None


def test_collection_tables_read_from_json_and_csv_and_name_the_file(tmp_path):
    (tmp_path / "t.json").write_text('{"a1": "monet", "b2": "hokusai"}')
    (tmp_path / "t.csv").write_text("key,collection\na1,monet\nb2,hokusai\n")
    (tmp_path / "bad.csv").write_text("a1,monet,extra\n")
    expected = {"a1": "monet", "b2": "hokusai"}
    assert read_collection_table(str(tmp_path / "t.json")) == expected
    assert read_collection_table(str(tmp_path / "t.csv")) == expected
    with pytest.raises(DataError, match=r"bad\.csv.*row 1 has 3 columns"):
        read_collection_table(str(tmp_path / "bad.csv"))
    with pytest.raises(DataError, match="missing.json"):
        read_collection_table(str(tmp_path / "missing.json"))


def foreign_datamodule(tmp_path, **options):
    write_img2dataset_shards(tmp_path / "foreign")
    args = dict(train_shards=str(tmp_path / "foreign/{00000..00002}.tar"),
                collections=["monet", "hokusai"], resolution=32, batch_size=4, num_workers=0,
                samples_per_epoch=8, shuffle_buffer=4)  # fmt: skip
    return ArtworkDataModule(**(args | options))


def test_foreign_shards_train_with_the_collection_from_a_json_field(tmp_path, caplog):
    from artbank_pl.tasks import PromptBankTask

    dm = foreign_datamodule(tmp_path, collection_key="artist")
    task = PromptBankTask(collections=dm.collections, num_tokens=2, bank_heads=4, lr=0.01)
    start = task.bank.prompts.detach().clone()
    with caplog.at_level(logging.WARNING):
        trainer(tmp_path, max_steps=3, limit_val_batches=0).fit(task, dm)
    assert not task.bank.prompts.detach().equal(start)
    # 20 degas samples and one without the field: one line each, never one per sample
    passed_over = [r.getMessage() for r in caplog.records if "passing over" in r.getMessage()]
    assert len([m for m in passed_over if "'degas'" in m]) == 1, passed_over
    assert len([m for m in passed_over if "without json field 'artist'" in m]) == 1, passed_over
    # every kept sample is ours, with its .txt caption; the damaged ones are skipped
    items = [item for batch in dm.val_dataloader() for item in zip(
        batch["__key__"], batch["collection_list"], batch["caption"], strict=True)]  # fmt: skip
    keys = {key for key, _, _ in items}
    assert len(keys) == 12 and not keys & {"noimage", "corrupt", "nofield", "numbercap"}
    for key, index, caption in items:
        artist = dm.collections[index]
        assert key.startswith(str(len(artist))) and caption == f"a painting by {artist}"


def test_a_collection_table_names_the_collections_of_shards_without_the_field(tmp_path):
    write_img2dataset_shards(tmp_path / "foreign")
    table = {f"{len(a)}{i:05d}": a for a, n in ARTISTS.items() for i in range(n)}
    (tmp_path / "labels.json").write_text(json.dumps(table))
    dm = foreign_datamodule(tmp_path, collection_table=str(tmp_path / "labels.json"))
    batches = list(dm.val_dataloader())
    got = {
        (key, dm.collections[index])
        for batch in batches
        for key, index in zip(batch["__key__"], batch["collection_list"], strict=True)
    }
    assert got == {(k, a) for k, a in table.items() if a != "degas"}


def test_shards_where_nothing_matches_stop_in_one_line_naming_the_field(tmp_path, caplog):
    dm = foreign_datamodule(tmp_path)  # the default field, "collection", is not in these
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), pytest.raises(DataError) as err:
        next(iter(dm.train_dataloader()))
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert "json field 'collection'" in message and "['hokusai', 'monet']" in message
    wrong = foreign_datamodule(tmp_path, collection_key="artist", collections=["turner"])
    with pytest.raises(DataError) as err:
        next(iter(wrong.train_dataloader()))
    assert "'degas'" in str(err.value) and "'monet'" in str(err.value)
    assert "['turner']" in str(err.value)
    assert len(caplog.records) <= 5  # no line per sample


def test_fit_on_foreign_shards_where_nothing_matches_is_one_line(tmp_path):
    write_img2dataset_shards(tmp_path / "foreign")
    seen = fit(
        tmp_path, "--data.init_args.manifest", "null",
        "--data.init_args.train_shards", str(tmp_path / "foreign/{00000..00002}.tar"),
        "--data.init_args.collections", "[turner, constable]",
        "--data.init_args.collection_key", "artist", "--data.init_args.num_workers", "1",
        refused_at_start=False,
    )  # fmt: skip
    assert seen.exit == 1 and "\n" not in seen.text, seen.text
    assert "no sample of" in seen.text and "'degas'" in seen.text


def test_an_index_of_foreign_shards_trains_with_the_manifest_alone(tmp_path, capsys):
    from artbank_pl.cli import main
    from artbank_pl.datamodules.shards import read_manifest
    from artbank_pl.tasks import PromptBankTask

    write_img2dataset_shards(tmp_path / "foreign")
    pattern = str(tmp_path / "foreign/{00000..00002}.tar")
    assert main(["shards", "index", pattern, "--collection-key", "artist", "--workers", "2"]) == 0
    assert "indexed 34 samples" in capsys.readouterr().out
    manifest = read_manifest(tmp_path / "foreign/manifest.json")
    # counted without decoding: "corrupt" (a jpg member) counts, "noimage" and "nofield" not
    assert manifest["splits"]["train"]["counts"] == {"degas": 20, "hokusai": 7, "monet": 7}
    assert manifest["unfit"] == {"no_image": 1, "no_collection": 1, "damaged": 0}
    per_shard = manifest["splits"]["train"]["per_shard"]
    assert sum(sum(c.values()) for c in per_shard.values()) == 34
    # the manifest carries the field: no collection_key, collections or epoch length needed
    dm = ArtworkDataModule(manifest=str(tmp_path / "foreign"), resolution=32, batch_size=4,
                           num_workers=0, shuffle_buffer=4)  # fmt: skip
    assert dm.collections == ["degas", "hokusai", "monet"]
    task = PromptBankTask(collections=dm.collections, num_tokens=2, bank_heads=4, lr=0.01)
    start = task.bank.prompts.detach().clone()
    trainer(tmp_path, max_steps=3, limit_val_batches=0).fit(task, dm)
    assert not task.bank.prompts.detach().equal(start)


def test_indexing_shards_that_name_no_collection_is_one_line(tmp_path):
    from artbank_pl.datamodules.index import index_shards

    write_img2dataset_shards(tmp_path / "foreign")
    with pytest.raises(DataError, match="json field 'painter'"):
        index_shards(str(tmp_path / "foreign/{00000..00002}.tar"), "painter", workers=1)
    assert not (tmp_path / "foreign/manifest.json").exists()


def test_an_index_holds_out_validation_samples_by_key_and_training_never_reads_them(tmp_path):
    from artbank_pl.datamodules.index import index_shards
    from artbank_pl.datamodules.shards import read_manifest

    write_img2dataset_shards(tmp_path / "foreign", per_shard=7)
    pattern = str(tmp_path / "foreign/{00000..00005}.tar")
    index_shards(pattern, "artist", workers=1, val_per_collection=3)
    manifest = read_manifest(tmp_path / "foreign/manifest.json")
    val, train = manifest["splits"]["val"], manifest["splits"]["train"]
    # monet and degas share key names ("500003"): held out per collection, not per key
    assert val["counts"] == {"degas": 3, "hokusai": 3, "monet": 3} and val["total"] == 9
    assert train["counts"] == {"degas": 17, "hokusai": 4, "monet": 4} and train["total"] == 25
    assert sum(sum(c.values()) for c in val["per_shard"].values()) == 9
    assert set(val["shards"]) == set(val["per_shard"]) and set(val["shards"]) < set(train["shards"])
    # the draw depends on the keys only: more workers, the same keys
    index_shards(pattern, "artist", workers=3, val_per_collection=3)
    assert read_manifest(tmp_path / "foreign/manifest.json")["splits"]["val"] == val

    dm = ArtworkDataModule(manifest=str(tmp_path / "foreign"), resolution=32, batch_size=4,
                           num_workers=0, shuffle_buffer=4)  # fmt: skip
    read = {
        (key, dm.collections[index])
        for batch in dm.val_dataloader()
        for key, index in zip(batch["__key__"], batch["collection_list"], strict=True)
    }
    held_out = {(key, name) for name, keys in val["keys"].items() for key in keys}
    assert read == held_out
    loader, trained = dm.train_dataloader(), set()
    for _ in range(8):  # 8 epochs of 24 samples: every training sample, many times over
        for batch in loader:
            keys, indices = batch["__key__"], batch["collection_list"]
            trained |= {(k, dm.collections[i]) for k, i in zip(keys, indices, strict=True)}
    dm.teardown("fit")
    readable = {(f"{len(a)}{i:05d}", a) for a, n in ARTISTS.items() for i in range(n)}
    assert trained == readable - held_out


def test_an_index_keeps_one_training_sample_of_a_collection_smaller_than_the_hold_out(tmp_path):
    from artbank_pl.datamodules.index import index_shards
    from artbank_pl.datamodules.shards import read_manifest

    write_img2dataset_shards(tmp_path / "foreign")
    index_shards(str(tmp_path / "foreign/{00000..00002}.tar"), "artist", val_per_collection=50)
    splits = read_manifest(tmp_path / "foreign/manifest.json")["splits"]
    assert splits["train"]["counts"] == {"degas": 1, "hokusai": 1, "monet": 1}
    assert splits["val"]["counts"] == {"degas": 19, "hokusai": 6, "monet": 6}
