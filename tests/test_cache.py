import pytest
import torch
from PIL import ImageOps

from artbank_pl.cli import main
from artbank_pl.datamodules import ArtworkDataModule
from artbank_pl.datamodules.artwork import crop_square, to_tensor
from artbank_pl.datamodules.cache import cache_shards
from artbank_pl.datamodules.shards import read_manifest, resize_shorter_side
from artbank_pl.datamodules.stream import decode_image, from_npy, iter_tar_samples
from artbank_pl.tasks import InverterTask, PromptBankTask


@pytest.fixture(scope="module")
def cached(shard_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cached")
    return cache_shards(shard_dir / "manifest.json", out, "tiny", 32, vision_model="tiny")


def test_cache_holds_the_posterior_of_the_crop_and_of_its_mirror(cached):
    manifest = read_manifest(cached)
    assert manifest["cache"]["resolution"] == 32
    sample = next(iter_tar_samples(str(cached.parent / manifest["splits"]["train"]["shards"][0])))
    task = PromptBankTask(collections=["hokusai", "monet"], num_tokens=2, bank_heads=4)
    image = crop_square(resize_shorter_side(decode_image(sample), 32), 32, None)
    for key, img in (("moments.npy", image), ("moments_flip.npy", ImageOps.mirror(image))):
        moments = from_npy(sample[key])
        assert moments.shape == (8, 4, 4)  # mean and log-variance of a 4 x 4 latent
        expected = task.vae.encode(to_tensor(img)[None]).latent_dist.mean[0]
        torch.testing.assert_close(moments[:4], expected, atol=2e-3, rtol=2e-3)
    assert from_npy(sample["clip.npy"]).shape == (65, 32)  # CLS + 8 x 8 patches, tiny CLIP


def test_the_cache_carries_each_samples_size_and_crop_for_sdxl(cached):
    dm = ArtworkDataModule(manifest=str(cached), resolution=32, batch_size=8, num_workers=0,
                           samples_per_epoch=8)  # fmt: skip
    batch = next(iter(dm.train_dataloader()))
    # conftest's images are 80 x 64 (recorded in the shards' json); 40 x 32 at resolution 32,
    # centre crop at left 4 (and 40 - 32 - 4 = 4 mirrored)
    assert batch["original_size"].tolist() == [[64, 80]] * 8
    assert batch["crop_top_left"].tolist() == [[0, 4]] * 8
    assert batch["original_size"].dtype == torch.long


def test_training_reads_the_cache(cached):
    dm = ArtworkDataModule(manifest=str(cached), resolution=32, batch_size=2, num_workers=0,
                           samples_per_epoch=4)  # fmt: skip
    batch = next(iter(dm.train_dataloader()))
    assert "pixel_values" not in batch and batch["moments"].shape == (2, 8, 4, 4)
    for task in (
        PromptBankTask(collections=dm.collections, num_tokens=2, bank_heads=4),
        InverterTask(collections=dm.collections, vision_model="tiny", inverter_heads=4),
    ):
        loss = task._batch_losses(batch, deterministic=False).mean()
        loss.backward()
        assert torch.isfinite(loss)
    val = next(iter(dm.val_dataloader()))
    assert val["pixel_values"].shape == (2, 3, 32, 32)  # decoded for SampleGrid's exemplars
    assert val["moments"].shape == (2, 8, 4, 4)  # the loss reads the cache


def test_validation_loss_comes_from_the_cache_without_a_vae_encode(cached):
    dm = ArtworkDataModule(manifest=str(cached), resolution=32, batch_size=2, num_workers=0)
    val = next(iter(dm.val_dataloader()))
    task = PromptBankTask(collections=dm.collections, num_tokens=2, bank_heads=4)
    encodes = []
    task.vae.encoder.register_forward_pre_hook(lambda module, args: encodes.append(1))
    from_cache = task._batch_losses(val, deterministic=True)
    assert encodes == []
    pixels_only = {k: v for k, v in val.items() if k != "moments"}
    from_pixels = task._batch_losses(pixels_only, deterministic=True)
    assert len(encodes) == 1
    torch.testing.assert_close(from_cache, from_pixels, atol=2e-3, rtol=2e-3)


def test_cache_of_another_resolution_or_model_is_refused(cached, capsys):
    with pytest.raises(ValueError, match="resolution 32, but data.resolution is 64"):
        ArtworkDataModule(manifest=str(cached), resolution=64)
    with pytest.raises(SystemExit) as info:
        main([
            "fit", "--model", "artbank_pl.tasks.PromptBankTask",
            "--model.init_args.bank_heads", "4", "--model.init_args.pretrained", "random-sd15",
            "--data", "artbank_pl.datamodules.ArtworkDataModule",
            "--data.init_args.manifest", str(cached),
            "--data.init_args.resolution", "32", "--trainer.max_steps", "1",
        ])  # fmt: skip
    assert "pretrained='tiny'" in str(info.value.code)
