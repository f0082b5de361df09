import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from safetensors.torch import load_file

from artbank_pl.datamodules import ArtworkDataModule
from artbank_pl.errors import ConfigError
from artbank_pl.tasks import PromptBankTask
from tests.conftest import COLLECTIONS, make_batch


def datamodule(shard_dir, **kwargs):
    args = dict(resolution=32, batch_size=2, num_workers=0, samples_per_epoch=8)
    return ArtworkDataModule(manifest=str(shard_dir / "manifest.json"), **(args | kwargs))


def trainer(tmp_path, max_steps, **kwargs):
    args = dict(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        enable_checkpointing=False,
    )
    return Trainer(**(args | kwargs))


def frozen_state(task):
    return {
        name: p.detach().clone()
        for module in (task.unet, task.vae, task.text_encoder)
        for name, p in module.state_dict().items()
    }


def test_only_bank_parameters_receive_gradients(tiny_task):
    # as after a first step: the projection left zero and the tokens (started equal) differ
    torch.nn.init.normal_(tiny_task.bank.attention.proj.weight, std=0.1)
    with torch.no_grad():
        tiny_task.bank.prompts.add_(torch.randn_like(tiny_task.bank.prompts) * 1e-3)
    loss = tiny_task._batch_losses(make_batch([0, 1]), deterministic=False).mean()
    loss.backward()
    for name, p in tiny_task.named_parameters():
        if name.startswith("bank."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None and not p.requires_grad, name


def test_frozen_weights_and_vocabulary_are_bit_identical_after_training(shard_dir, tmp_path):
    task = PromptBankTask(
        collections=["hokusai", "monet"],
        num_tokens=2,
        bank_heads=4,
        lr=0.05,
        lr_schedule="constant",
    )
    before = frozen_state(task)
    bank_before = task.bank.prompts.detach().clone()
    trainer(tmp_path, 3).fit(task, datamodule(shard_dir))
    after = frozen_state(task)
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert task.text_encoder.get_input_embeddings().weight.shape[0] == 49408
    assert not torch.equal(task.bank.prompts, bank_before)


def test_placeholder_embeddings_reach_the_text_encoder(tiny_task):
    prompts = [tiny_task.prompt_for(1, "a painting in the style of {}", None)]
    ids = tiny_task.tokenize(prompts)
    captured = {}
    embeddings = tiny_task.text_encoder.embeddings  # token + position embeddings
    handle = embeddings.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    tiny_task.encode_prompts(prompts)
    handle.remove()
    positions = (ids[0] >= tiny_task.first_placeholder_id).nonzero().flatten()
    assert len(positions) == 2
    token_part = captured["out"][0, positions] - embeddings.position_embedding.weight[positions]
    expected = tiny_task.embeddings()[list(COLLECTIONS)[1]]  # collection index 1
    torch.testing.assert_close(token_part, expected)
    others = (ids[0] < tiny_task.first_placeholder_id).nonzero().flatten()
    vocab_rows = embeddings.token_embedding.weight[ids[0, others]]
    torch.testing.assert_close(
        captured["out"][0, others] - embeddings.position_embedding.weight[others], vocab_rows
    )


def test_checkpoint_holds_trainables_only_and_is_small(shard_dir, tmp_path):
    task = PromptBankTask(collections=["hokusai", "monet"], num_tokens=2, bank_heads=4)
    assert not [k for k in task.state_dict() if k.startswith(("unet.", "vae.", "text_encoder."))]
    fit = trainer(tmp_path, 2)
    fit.fit(task, datamodule(shard_dir))
    path = tmp_path / "bank.ckpt"
    fit.save_checkpoint(path)
    assert path.stat().st_size < 1024 * 1024
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert set(ckpt["state_dict"]) == {k for k in task.state_dict()}
    assert ckpt["hyper_parameters"]["collections"] == ["hokusai", "monet"]
    fresh = PromptBankTask(**ckpt["hyper_parameters"])
    fresh.load_state_dict(ckpt["state_dict"])
    torch.testing.assert_close(fresh.bank.prompts, task.bank.prompts)
    with pytest.raises(RuntimeError, match="missing keys \\['bank.prompts'\\]"):
        fresh.load_state_dict({k: v for k, v in ckpt["state_dict"].items() if k != "bank.prompts"})


def test_resume_from_last_restores_step_and_optimizer(shard_dir, tmp_path):
    def run(max_steps, ckpt_path=None):
        task = PromptBankTask(
            collections=["hokusai", "monet"],
            num_tokens=2,
            bank_heads=4,
            lr_schedule="cosine",
            warmup_steps=2,
        )
        ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True)
        fit = trainer(tmp_path, max_steps, callbacks=[ckpt], enable_checkpointing=True)
        fit.fit(task, datamodule(shard_dir), ckpt_path=ckpt_path)
        return fit, task

    first, _ = run(4)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 4
    assert saved["optimizer_states"][0]["state"][0]["step"].item() == 4
    resumed, task = run(6, ckpt_path="last")
    assert resumed.global_step == 6
    state = resumed.optimizers[0].state[task.bank.prompts]
    assert state["step"].item() == 6  # Adam's moments continued instead of restarting
    assert resumed.lr_scheduler_configs[0].scheduler.last_epoch == 6


def test_bf16_mixed_casts_frozen_parts_and_keeps_trainables_fp32(shard_dir, tmp_path):
    task = PromptBankTask(
        collections=["hokusai", "monet"], num_tokens=2, bank_heads=4, vae_fp32=True
    )
    trainer(tmp_path, 2, precision="bf16-mixed").fit(task, datamodule(shard_dir))
    assert task.unet.dtype == torch.bfloat16
    assert task.text_encoder.dtype == torch.bfloat16
    assert task.vae.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in task.bank.parameters())
    assert torch.isfinite(task.bank.prompts).all()


def test_validation_loss_is_deterministic_per_sample(tiny_task):
    batch = make_batch([0, 1, 1], keys=["a", "b", "c"])
    tiny_task.eval()
    whole = tiny_task._batch_losses(batch, deterministic=True)
    torch.testing.assert_close(whole, tiny_task._batch_losses(batch, deterministic=True))
    single = make_batch([1], keys=["b"])
    single["pixel_values"] = batch["pixel_values"][1:2]
    alone = tiny_task._batch_losses(single, deterministic=True)
    torch.testing.assert_close(alone, whole[1:2], rtol=1e-4, atol=1e-5)


def test_bad_options_are_named():
    with pytest.raises(ConfigError, match="needs `collections`"):
        PromptBankTask()
    with pytest.raises(ConfigError, match="exactly one"):
        PromptBankTask(collections=["a"], templates=["no placeholder"], bank_heads=4)


@pytest.mark.parametrize("mode", ["ssam", "self", "none"])
def test_the_bank_attention_trains_in_its_own_group_at_a_width_scaled_rate(mode):
    task = PromptBankTask(collections=["a", "b"], num_tokens=2, bank_heads=4,
                          bank_attention=mode, lr=0.02, warmup_steps=4)  # fmt: skip
    task.trainer = Trainer(max_steps=10, logger=False, enable_progress_bar=False)
    config = task.configure_optimizers()
    groups = config["optimizer"].param_groups
    assert groups[0]["params"] == [task.bank.prompts]
    assert groups[0]["initial_lr"] == 0.02
    attention = list(task.bank.attention.parameters())
    if mode == "none":  # nothing to reparameterise: the vectors' group alone
        assert len(groups) == 1
        return
    dim = task.bank.prompts.shape[-1]  # the tiny text encoder's width, 32
    assert [id(p) for p in groups[1]["params"]] == [id(p) for p in attention]
    assert groups[1]["initial_lr"] == pytest.approx(0.02 * 3.2 / dim)
    # the warm-up schedule scales both groups by the same factor
    assert [g["lr"] / g["initial_lr"] for g in groups] == pytest.approx([0.25, 0.25])
    chosen = PromptBankTask(collections=["a"], num_tokens=2, bank_heads=4,
                            bank_attention=mode, lr=0.02, attention_lr=5e-4)  # fmt: skip
    chosen.trainer = task.trainer
    assert chosen.configure_optimizers()["optimizer"].param_groups[1]["initial_lr"] == 5e-4


def test_a_negative_attention_learning_rate_is_named():
    with pytest.raises(ConfigError, match="model.attention_lr"):
        PromptBankTask(collections=["a"], num_tokens=2, bank_heads=4, attention_lr=-1.0)


class ImageLogger(Logger):
    """A logger with an image API (as W&B's), recording what it was given."""

    def __init__(self):
        super().__init__()
        self.logged = []

    name, version = "images", 0

    def log_image(self, key, images, step):
        self.logged.append((key, images, step))

    def log_metrics(self, metrics, step=None):
        pass

    def log_hyperparams(self, params, *args, **kwargs):
        pass


@pytest.mark.parametrize("task_name", ["bank", "inverter"])
def test_sample_grid_is_written_with_the_csv_logger(shard_dir, tmp_path, task_name):
    from lightning.pytorch.loggers import CSVLogger
    from PIL import Image

    from artbank_pl.callbacks import SampleGrid
    from artbank_pl.tasks import InverterTask

    names = ["hokusai", "monet"]
    if task_name == "bank":
        task = PromptBankTask(collections=names, num_tokens=2, bank_heads=4)
    else:
        task = InverterTask(collections=names, vision_model="tiny", inverter_heads=4)
    grid = SampleGrid(steps=4, num_content=2, metrics_model="tiny" if task_name == "bank" else None)
    images = ImageLogger()
    fit = trainer(
        tmp_path, 2, logger=[CSVLogger(tmp_path), images], callbacks=[grid],
        limit_val_batches=None, val_check_interval=2,
    )  # fmt: skip
    fit.fit(task, datamodule(shard_dir))
    assert grid.last_path == Path(fit.logger.log_dir) / "samples" / "step_0000002.png"
    # every logger gets the grid, not only the first, at the step of this validation's
    # scalars (Lightning logs them at global_step - 1)
    rows = list(csv.DictReader((Path(fit.logger.log_dir) / "metrics.csv").open()))
    val_steps = [int(row["step"]) for row in rows if row.get("val/loss")]
    assert val_steps == [1]
    assert [(key, step) for key, _, step in images.logged] == [("samples", 1)]
    image = Image.open(grid.last_path)
    # 2 collections x (name + style + 2 x (content, result)) cells of 96 px, under a header
    # of one 12 px text line
    assert image.size == (6 * 96, 6 + 12 + 2 * 96)
    # the inverter scores with its own CLIP model, the bank with the named one
    logged = (Path(fit.logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in ("style_sim", "content_sim", "ssim"):
        assert {f"val/{name}/hokusai", f"val/{name}/monet"} <= set(logged)


def test_per_collection_train_loss_is_logged_on_logging_steps(shard_dir, tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    task = PromptBankTask(collections=["hokusai", "monet"], num_tokens=2, bank_heads=4)
    fit = trainer(tmp_path, 4, logger=CSVLogger(tmp_path), log_every_n_steps=2)
    fit.fit(task, datamodule(shard_dir, batch_size=6))  # both collections in each batch
    rows = (Path(fit.logger.log_dir) / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"train/loss", "train/loss/hokusai", "train/loss/monet"} <= set(header)
    steps = [int(r.split(",")[header.index("step")]) for r in rows[1:]]
    assert steps == [1, 3]  # global steps 2 and 4, logged as 0-based step indices


def test_loss_curve_stays_bounded():
    from types import SimpleNamespace

    from artbank_pl.callbacks import LossCurve

    curve = LossCurve(max_points=8)
    for step in range(1, 101):
        trainer = SimpleNamespace(global_step=step, log_every_n_steps=3, accumulate_grad_batches=1)
        curve.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.0 / step)}, None, step)
    curve.flush()
    assert len(curve.steps) <= 8 and curve.steps[-1] >= 90
    assert curve.losses == pytest.approx([1.0 / step for step in curve.steps], rel=1e-6)
    assert curve.steps == sorted(curve.steps) and len(set(curve.steps)) == len(curve.steps)


def test_a_zero_snr_v_prediction_model_trains_without_nan(monkeypatch):
    from diffusers import DDPMScheduler

    task = PromptBankTask(collections=["a", "b"], num_tokens=2, bank_heads=4, min_snr_gamma=5.0)
    config = {k: v for k, v in task.noise_scheduler.config.items() if k != "_use_default_values"}
    task.noise_scheduler = DDPMScheduler.from_config(
        config | {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}
    )
    last = task.noise_scheduler.config.num_train_timesteps - 1
    assert task.noise_scheduler.alphas_cumprod[last] == 0
    # every sample at the zero-SNR timestep
    randint = torch.randint

    def timesteps_at_last(*args, **kwargs):  # (low, high, size) is the timestep draw
        return torch.full(args[2], last) if len(args) == 3 else randint(*args, **kwargs)

    monkeypatch.setattr(torch, "randint", timesteps_at_last)
    loss = task._batch_losses(make_batch([0, 1]), deterministic=False).mean()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(task.bank.prompts.grad).all()


class RecordingTask(PromptBankTask):
    """Records the timesteps and noise each training batch draws."""

    def _noise_and_timesteps(self, latents, keys, generator=None):
        noise, t = super()._noise_and_timesteps(latents, keys, generator)
        if keys is None:
            self.draws.append((t.tolist(), noise.sum().item()))
        return noise, t


def recorded_fit(shard_dir, tmp_path, max_steps, ckpt_path=None):
    task = RecordingTask(collections=["hokusai", "monet"], num_tokens=2, bank_heads=4,
                         lr_schedule="constant")  # fmt: skip
    task.draws = []
    data = ArtworkDataModule(manifest=str(shard_dir / "manifest.json"), resolution=32,
                             batch_size=2, num_workers=0, samples_per_epoch=8)  # fmt: skip
    trainer = Trainer(accelerator="cpu", max_steps=max_steps, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(task, data, ckpt_path=ckpt_path)
    return task, trainer


def test_training_draws_depend_on_seed_rank_and_batch_not_on_history(shard_dir, tmp_path):
    from artbank_pl.tasks.base import training_draw_seed

    assert len({training_draw_seed(0, r, i) for r in range(4) for i in range(50)}) == 200
    whole, _ = recorded_fit(shard_dir, tmp_path / "whole", 4)
    first, trainer = recorded_fit(shard_dir, tmp_path / "part", 2)
    ckpt = tmp_path / "part.ckpt"
    trainer.save_checkpoint(ckpt)
    torch.manual_seed(1234)  # a resumed process starts from another global RNG state
    resumed, _ = recorded_fit(shard_dir, tmp_path / "part", 4, ckpt_path=str(ckpt))
    assert first.draws == whole.draws[:2]
    assert resumed.draws == whole.draws[2:]
    assert whole.draws[0] != whole.draws[1]


def test_per_key_seeds_change_what_a_cpu_generator_draws():
    from artbank_pl.tasks.base import sample_seed

    def first_draw(key):
        gen = torch.Generator().manual_seed(sample_seed(key, 0))
        return torch.randint(0, 2**62, (1,), generator=gen).item()

    assert len({first_draw(f"sample-{i}") for i in range(200)}) == 200


def test_tokenize_pads_and_truncates_as_the_tokenizer_does(tiny_task):
    prompts = ["a cat", "word " * 100]
    expected = tiny_task.tokenizer(
        prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    assert torch.equal(tiny_task.tokenize(prompts), expected)


def test_a_placeholder_cut_off_by_truncation_is_an_error(tiny_task):
    placeholder = tiny_task.placeholder_text(0)
    ok = "word " * 60 + placeholder
    assert tiny_task.encode_prompts([ok]).shape == (1, 77, 32)
    with pytest.raises(ConfigError, match=r"prompt 'word word .* past CLIP's 77-token limit"):
        tiny_task.encode_prompts(["word " * 80 + placeholder])


def test_clip_skip_conditions_on_the_final_normed_penultimate_layer():
    task = PromptBankTask(collections=["a"], num_tokens=2, bank_heads=4, clip_skip=1)
    ids = task.tokenize(["a painting"])
    hidden = task.text_encoder(ids, output_hidden_states=True).hidden_states
    expected = task.text_encoder.final_layer_norm(hidden[-2])
    torch.testing.assert_close(task.encode_prompts(["a painting"]), expected)
    assert not torch.allclose(expected, task.text_encoder(ids).last_hidden_state)


def test_after_one_step_at_lr_0_every_bank_mode_exports_the_initializer(shard_dir, tmp_path):
    exported = {}
    for mode in ("ssam", "self", "none"):
        task = PromptBankTask(collections=["hokusai", "monet"], num_tokens=3, bank_heads=4,
                              bank_attention=mode, lr=0.0, lr_schedule="constant")  # fmt: skip
        trainer(tmp_path / mode, 1).fit(task, datamodule(shard_dir))
        exported[mode] = torch.stack(list(task.embeddings().values()))
    word_id = task.tokenizer("painting", add_special_tokens=False).input_ids[0]
    word = task.text_encoder.get_input_embeddings().weight[word_id].float()
    for mode, table in exported.items():
        assert (table - word).abs().max() <= 1e-6, mode


def test_a_compiled_unet_sees_only_the_batch_sizes_it_was_compiled_for():
    task = PromptBankTask(collections=["a", "b"], num_tokens=2, bank_heads=4, compile_unet=True)
    seen = []
    task.unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(5, 4, 8, 8, generator=gen)
    timesteps = torch.tensor([10, 200, 400, 600, 999])
    context = torch.randn(5, 77, 32, generator=gen)
    with torch.no_grad():
        reference = task.unet(latents, timesteps, context).sample
    seen.clear()
    for count in (3, 2, 3, 5, 4, 1):
        out = task.unet_forward(latents[:count], timesteps[:count], context[:count])
        assert out.shape[0] == count
        torch.testing.assert_close(out, reference[:count], atol=1e-5, rtol=1e-5)
    assert seen == [3, 3, 3, 5, 5, 3]  # one new shape per larger batch, none for smaller


class RecordTrainables(Callback):
    """The trainable weights after each optimizer step (placed before the EMA)."""

    def __init__(self):
        self.start, self.steps = None, []

    def on_fit_start(self, trainer, pl_module):
        self.start = [p.detach().clone() for p in pl_module.trainable_parameters()]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps.append([p.detach().clone() for p in pl_module.trainable_parameters()])


def test_the_ema_of_the_trainables_is_validated_kept_exported_and_resumed(shard_dir, tmp_path):
    from artbank_pl.callbacks import EmbeddingExport, TrainablesEMA
    from artbank_pl.export import bank_embeddings_from_checkpoint

    def fit(max_steps, ckpt_path=None):
        task = PromptBankTask(collections=list(COLLECTIONS), num_tokens=2, bank_heads=4, lr=0.05)
        record, ema = RecordTrainables(), TrainablesEMA(decay=0.5, warmup=False)
        checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
        fitter = trainer(
            tmp_path, max_steps, enable_checkpointing=True,
            callbacks=[record, ema, EmbeddingExport(dirpath=str(tmp_path / "emb")), checkpoint],
        )  # fmt: skip
        fitter.fit(task, datamodule(shard_dir), ckpt_path=ckpt_path)
        return task, record, ema

    task, record, ema = fit(3)
    expected = record.start
    assert ema.names == [n for n, p in task.named_parameters() if p.requires_grad]
    assert sum(t.numel() for t in ema.average) == sum(p.numel() for p in expected)
    for weights in record.steps:
        expected = [0.5 * e + 0.5 * w for e, w in zip(expected, weights, strict=True)]
    raw_last = record.steps[-1]
    for param, average, raw in zip(task.trainable_parameters(), expected, raw_last, strict=True):
        torch.testing.assert_close(param.detach(), average)  # the module ends averaged
        assert not torch.equal(average, raw)
    exported = load_file(tmp_path / "emb" / "diffusers" / "monet.safetensors")
    torch.testing.assert_close(next(iter(exported.values())), task.embeddings()["monet"])
    last = tmp_path / "ckpt" / "last.ckpt"
    from_ckpt = bank_embeddings_from_checkpoint(last)
    torch.testing.assert_close(from_ckpt["monet"], task.embeddings()["monet"])
    raw = bank_embeddings_from_checkpoint(last, averaged=False)["monet"]
    assert not torch.allclose(raw, from_ckpt["monet"])
    _, record, ema = fit(4, ckpt_path=str(last))  # the resumed average goes on from the saved
    assert ema.updates == 4 and len(record.steps) == 1
    expected = [0.5 * e + 0.5 * w for e, w in zip(expected, record.steps[0], strict=True)]
    for average, wanted in zip(ema.average, expected, strict=True):
        torch.testing.assert_close(average, wanted)


def test_validation_runs_with_the_average_and_training_goes_on_with_the_raw_weights():
    from artbank_pl.callbacks import TrainablesEMA

    module = torch.nn.Linear(3, 2)
    ema = TrainablesEMA(decay=0.9, warmup=False)
    ema.on_fit_start(None, module)
    raw = [p.detach().clone() + 1 for p in module.parameters()]
    with torch.no_grad():
        for param, value in zip(module.parameters(), raw, strict=True):
            param.copy_(value)
    average = [a.clone() for a in ema.average]
    ema.on_validation_start(None, module)
    assert all(torch.equal(p, a) for p, a in zip(module.parameters(), average, strict=True))
    ema.on_validation_end(None, module)
    assert all(torch.equal(p, r) for p, r in zip(module.parameters(), raw, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(ema.average, average, strict=True))


def test_the_template_table_gives_the_tokens_of_the_same_prompts_tokenized(tiny_task):
    from artbank_pl.tasks.prompts import tokenize_prompts

    table = tiny_task.template_table()
    templates = torch.tensor([0, 8, 3, 0])  # template 8 is the placeholder alone
    collections = torch.tensor([1, 0, 1, 0])
    gathered = table.tokens(templates, collections)
    prompts = [
        tiny_task.templates[t].format(tiny_task.placeholder_text(k))
        for t, k in zip(templates.tolist(), collections.tolist(), strict=True)
    ]
    expected = tokenize_prompts(tiny_task.tokenizer, prompts, tiny_task.first_placeholder_id, "cpu")
    for field in ("ids", "rows", "cols", "offsets"):
        assert torch.equal(getattr(gathered, field), getattr(expected, field)), field
    assert expected.count == 4 * tiny_task.bank.num_tokens


def test_a_template_places_the_caption_where_it_says():
    from artbank_pl.tasks.style import fill_template

    assert fill_template("{caption} in {} style", "<x>", "a circle") == "a circle in <x> style"
    assert fill_template("{caption} in {} style", "<x>", None) == "in <x> style"
    assert fill_template("a painting of {}", "<x>", "a circle") == "a painting of <x>, a circle"
    assert fill_template("a painting of {}", "<x>", None) == "a painting of <x>"
    # a caption with braces is text, not a format field
    assert fill_template("{} of {caption}", "<x>", "a {b}") == "<x> of a {b}"


def test_a_caption_template_trains_on_the_captioned_prompt():
    task = PromptBankTask(collections=["a", "b"], templates=["{caption} in {} style"],
                          num_tokens=2, bank_heads=4)  # fmt: skip
    batch = {"collection_idx": torch.tensor([1, 0]), "caption": ["a circle", ""],
             "__key__": ["k1", "k2"]}  # fmt: skip
    x, y = task.placeholder_text(1), task.placeholder_text(0)
    assert task.build_prompts(batch) == [f"a circle in {x} style", f"in {y} style"]
    task.hparams.use_captions = False
    assert task.build_prompts(batch) == [f"in {x} style", f"in {y} style"]


def test_sample_grid_prompts_as_predict_does_with_the_content_captions(shard_dir, tmp_path):
    from artbank_pl.callbacks import SampleGrid
    from artbank_pl.errors import ConfigError
    from tests.conftest import write_collections

    write_collections(tmp_path / "content", {"photos": 2}, size=(32, 32), seed=4)
    first, second = sorted((tmp_path / "content/photos").glob("*.png"))
    first.with_suffix(".txt").write_text("a circle\n")  # the second has no caption
    task = PromptBankTask(collections=["hokusai", "monet"], num_tokens=2, bank_heads=4)
    seen = []

    def record(content, k, style, *args, captions=None, template="{}", adain=False):
        seen.append(([task.prompt_for(k, template, c) for c in captions or [None]], adain))
        return (content + 1) / 2

    task.stylize = record
    grid = SampleGrid(content=str(tmp_path / "content/photos"), steps=4,
                      prompt="{caption} in * style", adain=True)  # fmt: skip
    fit = trainer(tmp_path, 2, callbacks=[grid], limit_val_batches=None, val_check_interval=2)
    fit.fit(task, datamodule(shard_dir))
    x = task.placeholder_text(0)
    assert seen[0] == ([f"a circle in {x} style", f"in {x} style"], True)
    # without {caption} the caption stays out, as in predict
    seen.clear()
    grid = SampleGrid(content=str(tmp_path / "content/photos"), steps=4, prompt="*")
    fit = trainer(tmp_path, 2, callbacks=[grid], limit_val_batches=None, val_check_interval=2)
    fit.fit(task, datamodule(shard_dir))
    assert seen[0] == ([x], False)
    with pytest.raises(ConfigError, match="SampleGrid prompt 'a circle' must hold one"):
        SampleGrid(prompt="a circle")


def test_a_collection_named_in_non_latin_letters_gets_its_own_placeholder():
    task = PromptBankTask(collections=["日本画", "monet"], num_tokens=2, bank_heads=4)
    assert task.placeholders == ["<日本画>", "<monet>"]
    ids = task.tokenizer(task.placeholder_text(0)).input_ids[1:-1]
    # bank row k * n + j is collection k's token j: the name's two tokens are rows 0 and 1
    assert ids == [task.first_placeholder_id, task.first_placeholder_id + 1]


def test_a_caption_too_long_for_clip_loses_its_last_words_not_the_style(tiny_task, caplog):
    caption = " ".join(f"w{i}" for i in range(120))
    before = getattr(tiny_task, "captions_shortened", 0)
    prompt = tiny_task.prompt_for(1, "{caption} in {} style", caption)
    ids = tiny_task.tokenizer(prompt).input_ids
    assert len(ids) <= 77 and prompt.endswith(f"{tiny_task.placeholder_text(1)} style")
    kept = prompt.split(" in ")[0].split()
    assert kept == caption.split()[: len(kept)] and len(kept) > 10
    # one more word would not fit
    longer = " ".join(caption.split()[: len(kept) + 1])
    assert (
        len(tiny_task.tokenizer(f"{longer} in {tiny_task.placeholder_text(1)} style").input_ids)
        > 77
    )
    assert tiny_task.captions_shortened == before + 1
    assert "shortened a caption to fit CLIP's 77 tokens" in caplog.text
    # a caption that fits is left as it is, and not counted
    assert tiny_task.prompt_for(1, "{caption} in {} style", "a circle").startswith("a circle in ")
    assert tiny_task.captions_shortened == before + 1
    tiny_task.encode_prompts([prompt])  # the style tokens are inside the limit
