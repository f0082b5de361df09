import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image
from transformers import CLIPImageProcessor

from artbank_pl.datamodules import ArtworkDataModule
from artbank_pl.styles import load_inverter
from artbank_pl.tasks import InverterTask
from artbank_pl.vision import clip_preprocess
from tests.conftest import make_batch


def inverter_task(**kwargs):
    args = dict(collections=["monet", "hokusai"], vision_model="tiny", inverter_heads=4)
    return InverterTask(**(args | kwargs))


@pytest.mark.parametrize("features", ["patch", "pooled"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_only_the_inverter_trains_at_any_batch_size(features, batch_size):
    task = inverter_task(image_features=features, num_tokens=2)
    loss = task._batch_losses(make_batch([0] * batch_size, size=64), deterministic=False).mean()
    loss.backward()
    for name, p in task.named_parameters():
        if name.startswith("inverter."):
            assert p.grad is not None, name
        else:
            assert p.grad is None and not p.requires_grad, name


def test_the_inverter_starts_at_its_initializer_for_any_image():
    task = inverter_task(num_tokens=2).eval()
    batch = make_batch([0, 0, 1], size=64)
    batch["pixel_values"][1] = -batch["pixel_values"][1]
    word = task.text_encoder.get_input_embeddings().weight[
        task.tokenizer(task.hparams.initializer_token, add_special_tokens=False).input_ids[0]
    ]
    vectors = task.style_vectors(batch["pixel_values"])
    assert (vectors - word).abs().max() == 0


def test_each_sample_gets_its_own_inverted_embedding():
    task = inverter_task(num_tokens=2).eval()
    torch.nn.init.normal_(task.inverter.output.weight, std=0.02)  # as after some training
    batch = make_batch([0, 0], size=64)
    batch["pixel_values"][1] = -batch["pixel_values"][1]
    vectors = task.style_vectors(batch["pixel_values"])
    assert vectors.shape == (2, 2, 32)
    assert not torch.allclose(vectors[0], vectors[1])
    prompts = task.build_prompts(batch, deterministic=True)
    assert prompts == ["<inst> <inst>_1"] * 2  # the paper's caption: the placeholder alone
    first = task.first_placeholder_id
    cond = task.conditioning(batch, task.prompt_tokens(prompts, first))
    alone = task.conditioning(
        {"pixel_values": batch["pixel_values"][1:]}, task.prompt_tokens(prompts[1:], first)
    )
    torch.testing.assert_close(cond[1:], alone, rtol=1e-5, atol=1e-5)


def test_clip_preprocess_matches_clip_image_processor():
    yy, xx = np.mgrid[0:60, 0:80] / 20.0  # smooth, so PIL and torch resampling agree
    channels = [np.sin(xx + c) * np.cos(yy - c) for c in range(3)]
    image = Image.fromarray(((np.stack(channels, -1) + 1) * 127.5).astype(np.uint8))
    expected = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32)(
        image, return_tensors="pt"
    ).pixel_values
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
    ours = clip_preprocess(pixels[None], 32)
    assert ours.shape == expected.shape == (1, 3, 32, 32)
    # PIL and torch resample differently: compare the normalised statistics, not pixels
    torch.testing.assert_close(ours.mean((2, 3)), expected.mean((2, 3)), atol=0.05, rtol=0)
    assert torch.corrcoef(torch.stack([ours.flatten(), expected.flatten()]))[0, 1] > 0.99
    black = clip_preprocess(-torch.ones(1, 3, 40, 40), 32)
    torch.testing.assert_close(
        black[0, :, 0, 0],
        -torch.tensor([0.4815, 0.4578, 0.4082]) / torch.tensor([0.2686, 0.2613, 0.2758]),
        atol=1e-3,
        rtol=0,
    )


def test_checkpoint_round_trip_rebuilds_the_inverter(shard_dir, tmp_path):
    task = inverter_task(collections=["hokusai", "monet"], lr=1e-2)
    data = ArtworkDataModule(manifest=str(shard_dir / "manifest.json"), resolution=64,
                             batch_size=2, num_workers=0, samples_per_epoch=4)  # fmt: skip
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(task, data)
    trainer.save_checkpoint(tmp_path / "inst.ckpt")
    assert (tmp_path / "inst.ckpt").stat().st_size < 1024 * 1024
    inverter, hparams = load_inverter(tmp_path / "inst.ckpt")
    assert hparams["vision_model"] == "tiny"
    features = torch.randn(2, 65, 32)
    torch.testing.assert_close(inverter(features), task.inverter.eval()(features))


def test_image_queries_start_from_the_embedding_and_a_fixed_base_does_not_train(
    shard_dir, tmp_path
):
    task = inverter_task(collections=["hokusai", "monet"], lr=1e-2, image_queries=True,
                         learned_base=False, initializer_token=None)  # fmt: skip
    assert "inverter.base" not in dict(task.named_parameters())
    assert "inverter.base" in task.state_dict()
    features, embedding = torch.randn(2, 65, 32), torch.randn(2, 32)
    torch.nn.init.normal_(task.inverter.output.weight, std=0.1)
    inverter = task.inverter.eval()
    # the same patch tokens, two image embeddings: the queries, so the output, differ
    other = torch.stack([embedding[0], -embedding[0]])
    out = inverter(features[:1].expand(2, -1, -1), other)
    assert not torch.allclose(out[0], out[1])
    data = ArtworkDataModule(manifest=str(shard_dir / "manifest.json"), resolution=64,
                             batch_size=2, num_workers=0, samples_per_epoch=4)  # fmt: skip
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(task.train(), data)
    assert task.inverter.base.abs().max() == 0  # no free word: it stayed zero
    trainer.save_checkpoint(tmp_path / "inst.ckpt")
    loaded, _ = load_inverter(tmp_path / "inst.ckpt")
    torch.testing.assert_close(
        loaded(features, embedding), task.inverter.eval()(features, embedding)
    )


@pytest.mark.parametrize(("height", "width"), [(60, 80), (50, 97), (97, 50), (33, 33), (224, 300)])
def test_clip_resize_size_matches_transformers(height, width):
    from transformers.image_transforms import get_resize_output_image_size

    from artbank_pl.vision import clip_resize_size

    expected = get_resize_output_image_size(
        np.zeros((height, width, 3)), size=32, default_to_square=False
    )
    assert clip_resize_size(height, width, 32) == tuple(expected)


def test_exemplars_outputs_and_contents_share_one_preprocessing(tmp_path):
    from artbank_pl.metrics import CLIPImageEncoder
    from artbank_pl.styles import load_image
    from artbank_pl.tasks.evaluation import exemplar_images
    from artbank_pl.vision import load_vision_encoder

    yy, xx = np.mgrid[0:50, 0:97] / 9.0
    pixels = np.stack([np.sin(xx + c) * np.cos(yy) for c in range(3)], -1)
    Image.fromarray(((pixels + 1) * 127.5).astype(np.uint8)).save(tmp_path / "wide.png")
    encoder = CLIPImageEncoder(load_vision_encoder("tiny"))
    size = encoder.vision.config.image_size
    as_exemplar = encoder(exemplar_images([tmp_path / "wide.png"], size))
    as_output = encoder((load_image(tmp_path / "wide.png") + 1) / 2)  # outputs go in whole
    torch.testing.assert_close(as_exemplar, as_output, rtol=1e-5, atol=1e-5)


def test_pooled_features_are_unit_norm_image_embeddings():
    task = inverter_task(image_features="pooled")
    features = task.image_features(make_batch([0, 1], size=64)["pixel_values"])
    assert features.shape[1] == 1
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(2, 1))


def test_the_vision_encoder_takes_the_half_type_once_and_the_inverter_stays_fp32():
    task = inverter_task(num_tokens=2)
    task.cast_frozen(torch.bfloat16)
    assert task.vision.dtype == torch.bfloat16 and task.unet.dtype == torch.bfloat16
    loss = task._batch_losses(make_batch([0, 1], size=64), deterministic=False).mean()
    loss.backward()
    for p in task.inverter.parameters():
        assert p.dtype == torch.float32 and (p.grad is None or torch.isfinite(p.grad).all())
