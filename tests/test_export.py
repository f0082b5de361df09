import pickle

import pytest
import torch
from diffusers import PNDMScheduler, StableDiffusionPipeline
from lightning.pytorch import Trainer
from safetensors.torch import load_file, save_file

from artbank_pl.export import CheckpointError, bank_embeddings_from_checkpoint, write_embeddings
from artbank_pl.sd import build_tiny_parts
from artbank_pl.styles import load_bank_styles, style_image_names
from artbank_pl.tokenizer import placeholder_token, token_strings


def tiny_pipeline():
    parts = build_tiny_parts()
    return StableDiffusionPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=parts.unet,
        scheduler=PNDMScheduler.from_config(parts.noise_scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def trained_embeddings(tiny_task):
    with torch.no_grad():
        tiny_task.bank.prompts.add_(torch.randn_like(tiny_task.bank.prompts))
    return tiny_task.embeddings()


def test_export_loads_into_diffusers_exactly(tiny_task, tmp_path):
    embeds = trained_embeddings(tiny_task)
    paths = write_embeddings(embeds, tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == [
        "a1111/artbank-hokusai.safetensors",
        "a1111/artbank-monet.safetensors",
        "diffusers/hokusai.safetensors",
        "diffusers/monet.safetensors",
    ]
    pipe = tiny_pipeline()
    for name, table in embeds.items():
        pipe.load_textual_inversion(tmp_path / "diffusers" / f"{name}.safetensors")
        ids = pipe.tokenizer.convert_tokens_to_ids(token_strings(placeholder_token(name), 2))
        rows = pipe.text_encoder.get_input_embeddings().weight[ids]
        assert torch.equal(rows, table)


def test_a1111_form_is_a_single_emb_params_tensor(tiny_task, tmp_path):
    embeds = trained_embeddings(tiny_task)
    write_embeddings(embeds, tmp_path, formats=("a1111",))
    state = load_file(tmp_path / "a1111" / "artbank-monet.safetensors")
    assert list(state) == ["emb_params"]
    assert torch.equal(state["emb_params"], embeds["monet"])
    pipe = tiny_pipeline()
    pipe.load_textual_inversion(tmp_path / "a1111" / "artbank-monet.safetensors", token="<monet>")
    ids = pipe.tokenizer.convert_tokens_to_ids(["<monet>", "<monet>_1"])
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], embeds["monet"])
    # a second A1111 file loads beside the first only with its own token= (README)
    pipe.load_textual_inversion(tmp_path / "a1111" / "artbank-hokusai.safetensors", token="<h>")


def test_an_exported_folder_reads_back_under_its_collection_names(tiny_task, tmp_path):
    embeds = trained_embeddings(tiny_task)
    write_embeddings(embeds, tmp_path)
    for fmt in ("diffusers", "a1111"):
        styles = load_bank_styles(tmp_path / fmt)
        assert styles.keys() == embeds.keys()
        assert torch.equal(styles["monet"], embeds["monet"])
    # a file written by another tool (no metadata) is named after its stem
    save_file({"emb_params": embeds["monet"]}, tmp_path / "other.safetensors")
    assert list(load_bank_styles(tmp_path / "other.safetensors")) == ["other"]


def test_export_from_checkpoint_needs_no_sd_and_matches(tiny_task, tmp_path):
    embeds = trained_embeddings(tiny_task)
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_steps=0)
    trainer.strategy.connect(tiny_task)
    path = tmp_path / "bank.ckpt"
    trainer.save_checkpoint(path)
    loaded = bank_embeddings_from_checkpoint(path)
    assert loaded.keys() == embeds.keys()
    for name in embeds:
        torch.testing.assert_close(loaded[name], embeds[name])


class _Payload:
    def __reduce__(self):
        return (open, ("/tmp/artbank-unpickled-marker", "w"))


def test_pickled_files_are_refused_and_never_unpickled(tmp_path):
    marker = "/tmp/artbank-unpickled-marker"
    torch.save({"string_to_token": {"*": 1}, "attention": _Payload()}, tmp_path / "embeddings.pt")
    with pytest.raises(CheckpointError, match="embeddings.pt cannot be loaded safely"):
        bank_embeddings_from_checkpoint(tmp_path / "embeddings.pt")
    import os

    assert not os.path.exists(marker)
    with pytest.raises(CheckpointError, match="does not exist"):
        bank_embeddings_from_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "x.ckpt").write_bytes(pickle.dumps({"state_dict": {}}))
    with pytest.raises(CheckpointError):
        bank_embeddings_from_checkpoint(tmp_path / "x.ckpt")


def test_load_from_checkpoint_restores_the_bank_without_listing_frozen_keys(tiny_task, tmp_path):
    import warnings

    from artbank_pl.tasks import PromptBankTask

    embeds = trained_embeddings(tiny_task)
    trainer = Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_steps=0)
    trainer.strategy.connect(tiny_task)
    trainer.save_checkpoint(tmp_path / "bank.ckpt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PromptBankTask.load_from_checkpoint(tmp_path / "bank.ckpt")
    assert not [w for w in caught if "not in the checkpoint" in str(w.message)]
    for name, table in loaded.embeddings().items():
        torch.testing.assert_close(table, embeds[name])


@pytest.mark.parametrize("bank_attention", ["ssam", "none"])
def test_a_bank_continues_exported_embeddings(tiny_task, tmp_path, bank_attention):
    from artbank_pl.errors import ConfigError
    from artbank_pl.tasks import PromptBankTask

    embeds = trained_embeddings(tiny_task)
    write_embeddings(embeds, tmp_path)
    names = list(embeds)
    args = {"num_tokens": 2, "bank_heads": 4, "bank_attention": bank_attention}
    # a folder: each collection starts at the file of its name, in any order
    task = PromptBankTask(collections=names[::-1], init_embeddings=str(tmp_path / "a1111"), **args)
    for name, table in task.embeddings().items():
        torch.testing.assert_close(table, embeds[name])
    # one file (another user's style): it starts every collection
    one = tmp_path / "diffusers" / "monet.safetensors"
    task = PromptBankTask(collections=["mine", "yours"], init_embeddings=str(one), **args)
    for table in task.embeddings().values():
        torch.testing.assert_close(table, embeds["monet"])
    with pytest.raises(ConfigError, match=r"monet.safetensors: the vectors for a are \(2, 32\)"):
        PromptBankTask(collections=["a"], init_embeddings=str(one), num_tokens=3, bank_heads=4)
    save_file({"<x>": torch.full((2, 32), float("nan"))}, tmp_path / "nan.safetensors")
    with pytest.raises(CheckpointError, match="nan.safetensors holds NaN or infinite"):
        PromptBankTask(collections=["a"], init_embeddings=str(tmp_path / "nan.safetensors"), **args)


def test_an_inverter_exports_style_images_to_the_same_files(shard_dir, image_root, tmp_path):
    from lightning.pytorch import seed_everything

    from artbank_pl.cli import main
    from artbank_pl.datamodules import ArtworkDataModule
    from artbank_pl.tasks import InverterTask, StylizeTask

    seed_everything(0, verbose=False)
    task = InverterTask(collections=["hokusai", "monet"], vision_model="tiny", inverter_heads=4)
    data = ArtworkDataModule(manifest=str(shard_dir / "manifest.json"), resolution=64,
                             batch_size=2, num_workers=0, samples_per_epoch=4)  # fmt: skip
    trainer = Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, limit_val_batches=0)  # fmt: skip
    trainer.fit(task, data)
    ckpt = tmp_path / "inst.ckpt"
    trainer.save_checkpoint(ckpt)
    images = [str(sorted((image_root / name).glob("*.png"))[0]) for name in ("monet", "hokusai")]
    stems = list(style_image_names(images))  # monet-img00, hokusai-img00: one stem, 2 folders
    assert main(["export", "--ckpt", str(ckpt), "--style-images", *images,
                 "--output", str(tmp_path / "out")]) == 0  # fmt: skip
    # the files the stylizer's own inversion of those images gives, loadable as a bank
    stylizer = StylizeTask(inverter=str(ckpt), style_images=images)
    exported = StylizeTask(bank=str(tmp_path / "out/diffusers"), collections=stems)
    assert torch.equal(exported.style_table, stylizer.style_table)
    pipe = tiny_pipeline()
    for stem in stems:
        rows = load_file(tmp_path / f"out/a1111/artbank-{stem}.safetensors")["emb_params"]
        pipe.load_textual_inversion(tmp_path / f"out/diffusers/{stem}.safetensors")
        ids = pipe.tokenizer.convert_tokens_to_ids(
            token_strings(placeholder_token(stem), len(rows))
        )
        assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids], rows)
    # the inverter's checkpoint without images is refused by name
    with pytest.raises(SystemExit, match="InverterTask checkpoint exports with style images"):
        main(["export", "--ckpt", str(ckpt), "--output", str(tmp_path / "none")])
