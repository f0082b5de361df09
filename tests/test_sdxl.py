"""SDXL on the ``tiny-xl`` preset: two text encoders, pooled text and micro-conditioning."""

import pytest
import torch
from lightning.pytorch import Trainer
from safetensors.torch import load_file, save_file

from artbank_pl.datamodules import ArtworkDataModule
from artbank_pl.errors import ConfigError
from artbank_pl.export import write_embeddings
from artbank_pl.sd import TINY_XL, load_parts
from artbank_pl.styles import load_bank_styles
from artbank_pl.tasks import InverterTask, PromptBankTask, StylizeTask
from artbank_pl.tasks.conditioning import TextConditioning
from artbank_pl.tasks.sampling import make_sampler
from artbank_pl.tokenizer import placeholder_token, token_strings
from tests.conftest import make_batch

WIDTHS = (32, 48)  # tiny-xl's CLIP-L and OpenCLIP-G stand-ins


def xl_bank(**kwargs):
    args = dict(collections=["hokusai", "monet"], pretrained=TINY_XL, num_tokens=2, bank_heads=4)
    return PromptBankTask(**(args | kwargs))


def fit(task, shard_dir, tmp_path, steps=3, resolution=32):
    data = ArtworkDataModule(manifest=str(shard_dir / "manifest.json"), resolution=resolution,
                             batch_size=2, num_workers=0, samples_per_epoch=8)  # fmt: skip
    trainer = Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp_path,
                      enable_checkpointing=False)  # fmt: skip
    trainer.fit(task, data)
    return trainer


def test_tiny_xl_builds_sdxl_parts():
    parts = load_parts(TINY_XL)
    assert parts.is_xl and parts.unet.config.addition_embed_type == "text_time"
    assert parts.text_encoder_2.config.projection_dim == 40
    assert parts.tokenizer_2.pad_token == "!" and parts.tokenizer.pad_token == "<|endoftext|>"
    assert all(not p.requires_grad for p in parts.text_encoder_2.parameters())


def test_conditioning_equals_diffusers_sdxl_encode_prompt():
    task = xl_bank()
    prompt = "a harbour at dusk"
    ours = task.encode_prompts([prompt])
    pipe = task.parts.diffusers_pipeline(image_to_image=False)
    embeds, _, pooled, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
    torch.testing.assert_close(ours.hidden_states, embeds, rtol=0, atol=0)
    torch.testing.assert_close(ours.pooled, pooled, rtol=0, atol=0)


@pytest.mark.parametrize("bank_attention", ["ssam", "self", "none"])
def test_a_bank_trains_both_encoders_tables(shard_dir, tmp_path, bank_attention):
    task = xl_bank(bank_attention=bank_attention)
    start = task.bank_tables().detach().clone()
    words = [e.get_input_embeddings().weight[task.tokenizer.convert_tokens_to_ids("painting</w>")]
             for e in (task.text_encoder, task.text_encoder_2)]  # fmt: skip
    assert torch.equal(start[0, 0], torch.cat(words))  # each table starts at its own word
    fit(task, shard_dir, tmp_path)
    moved = (task.bank_tables().detach() - start).abs()
    assert moved[..., : WIDTHS[0]].sum() > 0 and moved[..., WIDTHS[0] :].sum() > 0
    assert {k.split(".")[0] for k, _ in task.named_parameters() if _.requires_grad} == {
        "bank",
        "bank_2",
    }


def test_an_inverter_trains_one_head_per_encoder_and_exports_sdxl_files(
    shard_dir, image_root, tmp_path
):
    task = InverterTask(collections=["hokusai", "monet"], pretrained=TINY_XL,
                        vision_model="tiny", inverter_heads=4, lr=1e-3)  # fmt: skip
    assert task.inverter.output.out_features == sum(WIDTHS)
    start = task.inverter.output.weight.detach().clone()
    trainer = fit(task, shard_dir, tmp_path)
    moved = (task.inverter.output.weight.detach() - start).abs().sum(dim=1)
    assert moved[: WIDTHS[0]].sum() > 0 and moved[WIDTHS[0] :].sum() > 0
    trainer.save_checkpoint(tmp_path / "inst.ckpt")
    from artbank_pl.styles import checkpoint_styles

    image = str(next((image_root / "monet").glob("*.png")))
    styles, widths = checkpoint_styles(tmp_path / "inst.ckpt", [image])
    assert widths == WIDTHS  # recorded in the checkpoint: the export splits at 32
    write_embeddings(styles, tmp_path / "out", widths=widths)
    one = load_file(next((tmp_path / "out/a1111").glob("*.safetensors")))
    assert one["clip_l"].shape == (1, 32) and one["clip_g"].shape == (1, 48)
    stylizer = StylizeTask(inverter=str(tmp_path / "inst.ckpt"), style_images=[image],
                           pretrained=TINY_XL, steps=4, strength=0.5)  # fmt: skip
    images = stylizer._render(stylizer.style_names[0], torch.randn(1, 4, 4, 4), [""], [0])
    assert images.shape == (1, 32, 32, 3)


def test_each_sample_carries_its_own_size_and_crop_to_the_unet(shard_dir):
    task = xl_bank()
    seen = []
    task.unet.register_forward_pre_hook(
        lambda _m, args, kwargs: seen.append(kwargs["added_cond_kwargs"]["time_ids"].clone()),
        with_kwargs=True,
    )
    data = ArtworkDataModule(manifest=str(shard_dir / "manifest.json"), resolution=32,
                             batch_size=4, num_workers=0, samples_per_epoch=4)  # fmt: skip
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    # conftest's images are 80 x 64 (w x h); shards build resized them to 64 on the short side
    assert batch["original_size"].tolist() == [[64, 80]] * 4
    tops, lefts = batch["crop_top_left"].T.tolist()
    assert tops and all(0 <= t <= 0 for t in tops) and all(0 <= x <= 40 - 32 for x in lefts)
    task._batch_losses(batch, deterministic=False)
    expected = [[64, 80, t, x, 32, 32] for t, x in zip(tops, lefts, strict=True)]
    assert seen[-1].tolist() == expected
    # and they change what the UNet predicts
    other = dict(batch, original_size=torch.tensor([[1024, 1024]] * 4))
    assert not torch.equal(task._batch_losses(batch, True), task._batch_losses(other, True))


def test_a_json_original_size_is_read_as_img2dataset_writes_it():
    from PIL import Image

    from artbank_pl.datamodules.artwork import original_size

    image = Image.new("RGB", (40, 30))
    assert original_size({"original_width": 1600, "original_height": 1200}, image) == (1200, 1600)
    assert original_size({"original_width": "big", "original_height": 1200}, image) == (30, 40)
    assert original_size(None, image) == (30, 40)


@pytest.mark.parametrize("sampler", ["ddim", "dpmsolver++", "euler", "unipc"])
def test_noise_inversion_equals_diffusers_sdxl_img2img(sampler):
    task = xl_bank()
    cond = task.encode_prompts(["a harbour at dusk"])
    uncond = task.empty_conditioning()
    z0 = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(5))
    gens = [torch.Generator().manual_seed(7)]
    ours = task.img2img(z0, cond, uncond, gens, 0.7, 10, 4.0, 0.0, "noise", sampler)
    sampling = make_sampler(task.noise_scheduler.config, sampler)
    pipe = task.parts.diffusers_pipeline(image_to_image=True, scheduler=sampling)
    reference = pipe(
        prompt_embeds=cond.hidden_states, pooled_prompt_embeds=cond.pooled, image=z0,
        strength=0.7, num_inference_steps=10, guidance_scale=4.0,
        generator=torch.Generator().manual_seed(7), output_type="latent",
    ).images  # fmt: skip
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)


def exported(tmp_path):
    gen = torch.Generator().manual_seed(3)
    styles = {"monet": torch.randn(2, sum(WIDTHS), generator=gen) * 0.02,
              "ukiyo-e": torch.randn(3, sum(WIDTHS), generator=gen) * 0.02}  # fmt: skip
    write_embeddings(styles, tmp_path, widths=WIDTHS)
    return styles


def test_exports_are_a1111_one_file_and_diffusers_pair(tmp_path):
    styles = exported(tmp_path)
    one = load_file(tmp_path / "a1111" / "artbank-monet.safetensors")
    assert set(one) == {"clip_l", "clip_g"}
    assert torch.equal(torch.cat([one["clip_l"], one["clip_g"]], -1), styles["monet"])
    first = load_file(tmp_path / "diffusers" / "monet.safetensors")
    second = load_file(tmp_path / "diffusers" / "monet_2.safetensors")
    assert first["<monet>"].shape == (2, 32) and second["<monet>"].shape == (2, 48)
    for fmt in ("a1111", "diffusers"):  # both read back whole, by folder and by file
        for name, table in load_bank_styles(tmp_path / fmt, widths=WIDTHS).items():
            assert torch.equal(table, styles[name]), (fmt, name)
    single = load_bank_styles(tmp_path / "diffusers" / "ukiyo-e.safetensors", widths=WIDTHS)
    assert torch.equal(single["ukiyo-e"], styles["ukiyo-e"])


def test_diffusers_loads_the_exports_into_an_sdxl_pipeline(tmp_path):
    styles = exported(tmp_path)
    pipe = load_parts(TINY_XL).diffusers_pipeline(image_to_image=False)
    token = placeholder_token("monet")
    one = load_file(tmp_path / "a1111" / "artbank-monet.safetensors")
    pipe.load_textual_inversion(one["clip_l"], token=token, text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)  # fmt: skip
    pipe.load_textual_inversion(one["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)  # fmt: skip
    second = placeholder_token("ukiyo-e")
    folder = tmp_path / "diffusers"
    pipe.load_textual_inversion(folder / "ukiyo-e.safetensors", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)  # fmt: skip
    pipe.load_textual_inversion(folder / "ukiyo-e_2.safetensors", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)  # fmt: skip
    for name, placeholder in (("monet", token), ("ukiyo-e", second)):
        n = len(styles[name])
        ids = pipe.tokenizer.convert_tokens_to_ids(token_strings(placeholder, n))
        ids_2 = pipe.tokenizer_2.convert_tokens_to_ids(token_strings(placeholder, n))
        first = pipe.text_encoder.get_input_embeddings().weight[ids]
        rows = torch.cat([first, pipe.text_encoder_2.get_input_embeddings().weight[ids_2]], -1)
        assert torch.equal(rows, styles[name]), name


def test_a_file_of_the_other_family_is_refused_with_both_widths(tmp_path):
    save_file({"emb_params": torch.zeros(2, 32)}, tmp_path / "sd15.safetensors")
    with pytest.raises(ConfigError, match=r"sd15.safetensors.*width 32 \(one text encoder.*"
                       r"needs clip_l 32 \+ clip_g 48"):  # fmt: skip
        StylizeTask(bank=str(tmp_path / "sd15.safetensors"), pretrained=TINY_XL, steps=2)
    exported(tmp_path / "xl")
    with pytest.raises(ConfigError, match=r"artbank-monet.safetensors.*clip_l 32 \+ clip_g 48"
                       r".*needs 32 \(one text encoder"):  # fmt: skip
        StylizeTask(bank=str(tmp_path / "xl/a1111/artbank-monet.safetensors"), steps=2)
    with pytest.raises(ConfigError, match="init_embeddings.*sd15.safetensors"):
        xl_bank(init_embeddings=str(tmp_path / "sd15.safetensors"))


def test_a_bank_starts_from_a_one_file_sdxl_embedding(tmp_path):
    styles = exported(tmp_path)
    task = xl_bank(collections=["monet"], init_embeddings=str(tmp_path / "a1111"), num_tokens=2)
    torch.testing.assert_close(task.bank_tables()[0], styles["monet"])


def test_stylize_on_sdxl_guides_against_zeros_and_renders(tmp_path):
    exported(tmp_path)
    task = StylizeTask(bank=str(tmp_path / "a1111"), pretrained=TINY_XL, steps=4, strength=0.5)
    negative = task.negative_conditioning()
    assert isinstance(negative, TextConditioning)
    assert not negative.hidden_states.any() and not negative.pooled.any()
    images = task._render("monet", torch.randn(2, 4, 4, 4), ["a", "b"], [1, 2])
    assert images.shape == (2, 32, 32, 3) and images.dtype == torch.uint8


def test_the_sdxl_vae_runs_in_float32_under_float16():
    task = xl_bank()
    task.cast_frozen(torch.float16)
    assert task.unet.dtype == torch.float16 and task.text_encoder_2.dtype == torch.float16
    assert task.vae.dtype == torch.float32  # its config asks for it (force_upcast)


def test_the_prompt_bank_steps_on_a_batch_without_sizes():
    task = xl_bank()
    losses = task._batch_losses(make_batch([0, 1]), deterministic=True)
    assert losses.shape == (2,) and torch.isfinite(losses).all()


def test_the_sdxl_recipes_train_export_and_stylize_on_tiny_xl(shard_dir, image_root, tmp_path,
                                                              monkeypatch):  # fmt: skip
    from artbank_pl.cli import main

    monkeypatch.chdir(tmp_path)
    cpu = ["--trainer.accelerator", "cpu", "--trainer.devices", "1",
           "--trainer.precision", "32-true", "--model.init_args.pretrained", TINY_XL,
           "--model.init_args.vae", "null"]  # fmt: skip
    main(["fit", "--config", "artbank-sdxl", *cpu, "--trainer.max_steps", "2",
          "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
          "--data.init_args.manifest", str(shard_dir / "manifest.json"),
          "--data.init_args.resolution", "32", "--data.init_args.num_workers", "0"])  # fmt: skip
    run = tmp_path / "runs/artbank-sdxl"
    one = load_file(run / "embeddings/a1111/artbank-monet.safetensors")
    assert one["clip_l"].shape == (4, 32) and one["clip_g"].shape == (4, 48)
    # `artbank export` of the checkpoint, without loading SDXL, writes the same file
    assert main(["export", "--ckpt", str(run / "checkpoints/last.ckpt"), "--output", "out"]) == 0
    again = load_file(tmp_path / "out/a1111/artbank-monet.safetensors")
    assert all(torch.equal(again[key], one[key]) for key in one)
    assert (tmp_path / "out/diffusers/monet_2.safetensors").is_file()
    main(["predict", "--config", "stylize-sdxl", *cpu,
          "--model.init_args.bank", str(run / "checkpoints/last.ckpt"),
          "--model.init_args.steps", "4", "--data.init_args.content", str(image_root / "monet"),
          "--data.init_args.resolution", "32", "--data.init_args.num_workers", "0"])  # fmt: skip
    written = sorted((tmp_path / "runs/stylized-sdxl").rglob("*.jpg"))
    assert len(written) == 2 * 6  # every content image in each of the bank's two styles


def test_another_vae_replaces_the_models_and_decides_the_upcast(tmp_path):
    vae = load_parts(TINY_XL).vae
    vae.register_to_config(force_upcast=False)  # as the fp16-fix VAE's config says
    vae.save_pretrained(tmp_path / "fp16-fix")
    task = xl_bank(vae=str(tmp_path / "fp16-fix"))
    task.cast_frozen(torch.float16)
    assert task.vae.dtype == torch.float16
    from artbank_pl.sd import PretrainedLoadError

    with pytest.raises(PretrainedLoadError, match="vae='/nowhere/vae': no such folder"):
        xl_bank(vae="/nowhere/vae")
