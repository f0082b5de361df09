import os
from collections import Counter

import pytest
import webdataset as wds
from torch.utils.data import DataLoader, get_worker_info

from artbank_pl.datamodules import ArtworkDataModule
from artbank_pl.datamodules.stream import ShardStream
from tests.conftest import write_collections


def key_and_part(sample, rng):
    info = get_worker_info()
    return {"key": sample["__key__"], "worker": info.id if info else 0, "pid": os.getpid()}


def write_shards(root, num_shards, per_shard):
    urls = []
    for s in range(num_shards):
        url = str(root / f"s-{s:03d}.tar")
        with wds.TarWriter(url) as sink:
            for i in range(per_shard):
                sink.write({"__key__": f"s{s}_{i}", "txt": b"x"})
        urls.append(url)
    return urls


def collect(stream, rank, world, workers):
    stream.set_distributed(rank, world)
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    return [(rank, item["worker"], item["key"]) for item in loader]


@pytest.mark.parametrize(("num_shards", "per_shard"), [(8, 3), (2, 8)])
def test_training_stream_splits_disjointly_over_2_ranks_x_2_workers(
    tmp_path, num_shards, per_shard
):
    urls = write_shards(tmp_path, num_shards, per_shard)
    seen = {}
    for rank in (0, 1):
        stream = ShardStream(urls, key_and_part, resample=True, num_samples=12)
        for r, w, key in collect(stream, rank, 2, 2):
            seen.setdefault((r, w), set()).add(key)
    assert len(seen) == 4
    parts = list(seen.values())
    for i in range(4):
        for j in range(i + 1, 4):
            assert not parts[i] & parts[j], "two (rank, worker) parts read the same sample"
    assert set().union(*parts) == {f"s{s}_{i}" for s in range(num_shards) for i in range(per_shard)}


def test_validation_stream_reads_every_sample_exactly_once(tmp_path):
    urls = write_shards(tmp_path, 3, 5)
    keys = []
    for rank in (0, 1):
        keys += [k for _, _, k in collect(ShardStream(urls, key_and_part), rank, 2, 2)]
    assert Counter(keys) == Counter(f"s{s}_{i}" for s in range(3) for i in range(5))


def test_part_without_samples_is_an_error_not_a_hang(tmp_path):
    urls = write_shards(tmp_path, 1, 1)
    stream = ShardStream(urls, key_and_part, resample=True, num_samples=4)
    with pytest.raises(ValueError, match="use fewer dataloader workers"):
        collect(stream, 1, 2, 0)


def test_datamodule_batches_and_collections(shard_dir):
    dm = ArtworkDataModule(
        manifest=str(shard_dir / "manifest.json"),
        resolution=32,
        batch_size=3,
        num_workers=2,
        samples_per_epoch=12,
    )
    assert dm.collections == ["hokusai", "monet"]
    batches = list(dm.train_dataloader())
    assert len(batches) == 4  # 12 samples / (2 workers x 3) = 2 batches per worker
    batch = batches[0]
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    for key, idx in zip(batch["__key__"], batch["collection_idx"].tolist(), strict=True):
        assert key.startswith(dm.collections[idx])
    val_keys = [k for b in dm.val_dataloader() for k in b["__key__"]]
    assert sorted(val_keys) == ["hokusai__img04", "monet__img05"]


def test_datamodule_without_manifest_needs_collections(shard_dir):
    pattern = str(shard_dir / "train-{000000..000004}.tar")
    with pytest.raises(ValueError, match="needs `manifest`, or `collections`"):
        ArtworkDataModule(train_shards=pattern)
    with pytest.raises(ValueError, match="data.samples_per_epoch is needed"):
        ArtworkDataModule(train_shards=pattern, collections=["monet", "hokusai"])
    dm = ArtworkDataModule(train_shards=pattern, collections=["monet", "hokusai"], num_workers=0,
                           samples_per_epoch=8)  # fmt: skip
    assert dm.collection_index == {"monet": 0, "hokusai": 1}
    assert dm.val_urls == dm.train_urls


def test_content_folder_is_split_once_over_ranks(tmp_path):
    from artbank_pl.datamodules.content import FolderStream

    write_collections(tmp_path, {"photos": 5}, size=(20, 30))
    (tmp_path / "photos" / "broken.png").write_bytes(b"no image")
    keys = []
    for rank in (0, 1):
        stream = FolderStream(tmp_path / "photos", 16)
        stream.set_distributed(rank, 2)
        items = list(DataLoader(stream, batch_size=None, num_workers=2))
        assert all(item["pixel_values"].shape == (3, 16, 16) for item in items)
        keys += [item["__key__"] for item in items]
    assert sorted(keys) == [f"img{i:02d}" for i in range(5)]


def test_grid_takes_an_output_folder_and_names_one_without_a_manifest(tmp_path):
    from artbank_pl.errors import DataError
    from artbank_pl.grid import manifest_path

    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match="out is a folder without manifest.jsonl"):
        manifest_path(tmp_path / "out")
    (tmp_path / "out" / "manifest.jsonl").write_text("")
    assert manifest_path(tmp_path / "out") == tmp_path / "out" / "manifest.jsonl"


def resumable_batches(urls, workers, epoch=0, skip=None, seed=0):
    """The keys of one epoch's batches from a ResumableLoader (outside a Trainer)."""
    from artbank_pl.datamodules.resumable import ResumableLoader

    stream = ShardStream(urls, key_and_part, True, num_samples=8, shuffle=16, seed=seed)
    loader = ResumableLoader(
        stream, lambda: None, batch_size=2, num_workers=workers, collate_fn=lambda b: b
    )
    if skip is not None:
        loader.load_state_dict({"epoch": epoch, "batches": skip})
    return [[item["key"] for item in batch] for batch in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_resumed_mid_epoch_yields_the_rest_of_that_epoch(tmp_path, workers):
    urls = write_shards(tmp_path, 4, 6)
    epoch_0 = resumable_batches(urls, workers)
    assert resumable_batches(urls, workers) == epoch_0  # a function of (seed, epoch, part)
    assert resumable_batches(urls, workers, epoch=1, skip=0) != epoch_0
    assert resumable_batches(urls, workers, seed=1) != epoch_0
    for skip in (1, 3, len(epoch_0) - 1):
        assert resumable_batches(urls, workers, epoch=0, skip=skip) == epoch_0[skip:], skip


@pytest.mark.parametrize("workers", [0, 2])
def test_a_chained_loader_keeps_its_workers_and_each_epochs_order(tmp_path, workers):
    from artbank_pl.datamodules.resumable import ResumableLoader

    urls = write_shards(tmp_path, 4, 6)
    stream = ShardStream(urls, key_and_part, True, num_samples=8, shuffle=16, chain_epochs=True)
    loader = ResumableLoader(
        stream, lambda: None, batch_size=2, num_workers=workers, collate_fn=lambda b: b
    )
    assert loader.batches_per_epoch == 4 * max(1, workers)
    epochs = [list(loader) for _ in range(3)]
    for epoch, batches in enumerate(epochs):
        keys = [[item["key"] for item in batch] for batch in batches]
        # the same batches as a fresh loader started at that epoch
        assert keys == resumable_batches(urls, workers, epoch=epoch, skip=0), epoch
    pids = [{item["pid"] for batch in batches for item in batch} for batches in epochs]
    assert pids[0] == pids[1] == pids[2]  # the workers were not forked again
    assert (os.getpid() in pids[0]) == (workers == 0)
    loader.load_state_dict({"epoch": 1, "batches": 3})  # a resume starts a new iterator there
    resumed = [[item["key"] for item in batch] for batch in loader]
    assert resumed == resumable_batches(urls, workers, epoch=1, skip=0)[3:]
    live = loader._live.batches
    loader.close()
    assert loader._live is None
    if workers:
        assert not any(worker.is_alive() for worker in live._workers)


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_a_content_folder_knows_its_number_of_batches_for_the_progress_bar(tmp_path, workers):
    from artbank_pl.datamodules import ContentDataModule

    write_collections(tmp_path, {"c": 7}, size=(20, 20))
    total = 0
    for rank in (0, 1):
        data = ContentDataModule(str(tmp_path / "c"), resolution=16, batch_size=2,
                                 num_workers=workers)  # fmt: skip
        data.rank, data.world_size = rank, 2
        loader = data.predict_dataloader()
        batches = list(loader)
        assert len(loader) == len(batches)  # each worker ends on its own partial batch
        total += sum(len(batch["__key__"]) for batch in batches)
    assert total == 7
