"""Shared training logic of the style tasks: prompts, steps and per-collection losses."""

from __future__ import annotations

import random
import zlib

import torch

from artbank_pl import diffusion
from artbank_pl.errors import ConfigError
from artbank_pl.metrics import PerCollectionMean
from artbank_pl.optim import LRSchedule
from artbank_pl.tasks.base import FrozenDiffusionTask
from artbank_pl.tasks.conditioning import as_conditioning
from artbank_pl.tasks.prompts import PromptTokens, TemplateTable

STYLE_TEMPLATES = (
    "a painting in the style of {}",
    "an artwork in the style of {}",
    "a picture in the style of {}",
    "a rendition in the style of {}",
    "a cropped painting in the style of {}",
    "a close-up painting in the style of {}",
    "a good painting in the style of {}",
    "an image in the style of {}",
    "{}",
)
#: where a template puts the sample's caption (elsewhere the caption follows the template)
CAPTION_FIELD = "{caption}"


def fill_template(template: str, placeholder: str, caption: str | None) -> str:
    """Fill a prompt template: ``{}`` takes the placeholder, ``{caption}`` the caption.

    A template without ``{caption}`` gets the caption after a comma (``a painting in the
    style of <x>, a circle``); one with it places the caption where the model's own captions
    have it (``{caption} in {} style`` gives ``a circle in <x> style``, and ``in <x> style``
    without a caption).
    """
    before, after = template.split("{}")
    text = f"{before}{placeholder}{after}"
    if CAPTION_FIELD in text:
        return " ".join(text.replace(CAPTION_FIELD, caption or "").split())
    return f"{text}, {caption}" if caption else text


def check_same_collections(saved: list[str] | None, current: list[str]) -> None:
    """Refuse to resume a bank trained on ``saved`` collections in a run on ``current``.

    Raises:
        ConfigError: naming the collections only in the checkpoint and only in this run.
    """
    saved = list(saved or [])
    if not saved or saved == list(current):
        return
    gone = [c for c in saved if c not in current]
    new = [c for c in current if c not in saved]
    detail = f"only in the checkpoint: {gone}; only in this run: {new}"
    if not gone and not new:
        detail = f"same names in another order: {saved} vs {list(current)}"
    raise ConfigError(
        f"the checkpoint was trained on other collections ({detail}); resume with the data "
        "it was trained on, or start a new run"
    )


def batch_collections(batch: dict) -> list[int]:
    """Return the batch's collection indices as host ints.

    ``collate_artworks`` sends them as a list beside the tensor, because reading the
    tensor back after Lightning has moved the batch to the GPU waits for the GPU.
    """
    if "collection_list" in batch:
        return list(batch["collection_list"])
    return batch["collection_idx"].tolist()


class StyleTask(FrozenDiffusionTask):
    """A frozen SD whose prompts carry trainable placeholder embeddings.

    Subclasses say which placeholder text each sample's prompt holds
    (:meth:`placeholder_text`) and how the prompts are encoded (:meth:`conditioning`).

    Args:
        collections: collection names, for per-collection losses (and, for the bank, its
            rows); linked from the datamodule's manifest.
        templates: prompt templates with one ``{}`` for the placeholder, and optionally a
            ``{caption}`` for the caption (see :func:`fill_template`).
        use_captions: put each sample's caption (when it has one) in its prompt.
        **kwargs: the frozen model and optimisation options of ``FrozenDiffusionTask``.
    """

    def __init__(
        self,
        collections: list[str] | None,
        templates: list[str] | None,
        use_captions: bool,
        pretrained: str,
        revision: str | None,
        variant: str | None,
        vae_fp32: bool,
        lr: float,
        weight_decay: float,
        betas: tuple[float, float],
        warmup_steps: int,
        lr_schedule: LRSchedule,
        min_lr_ratio: float,
        min_snr_gamma: float | None,
        noise_offset: float,
        val_seed: int,
        compile_unet: bool = False,
        channels_last: bool = False,
        clip_skip: int = 0,
        vae: str | None = None,
    ) -> None:
        name = type(self).__name__
        if not collections:
            raise ConfigError(
                f"{name} needs `collections`: give data.manifest (linked automatically) "
                "or model.collections"
            )
        for template in templates or ():
            if template.count("{}") != 1:
                raise ConfigError(f"template {template!r} must hold exactly one '{{}}'")
        super().__init__(
            pretrained, revision, variant, vae_fp32, lr, weight_decay, betas, warmup_steps,
            lr_schedule, min_lr_ratio, min_snr_gamma, noise_offset, val_seed, compile_unet,
            channels_last, clip_skip, vae,
        )  # fmt: skip
        self.collections = list(collections)
        self.templates = list(templates or STYLE_TEMPLATES)
        self.val_loss = PerCollectionMean(len(self.collections))

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint trained on other collections, naming them, before any tensor.

        Same-sized banks would otherwise load silently under the wrong names, and other
        sizes end in a raw size-mismatch traceback.
        """
        saved = (checkpoint.get("hyper_parameters") or {}).get("collections")
        check_same_collections(saved, self.collections)

    def placeholder_text(self, collection: int) -> str:
        """Return the (expanded) placeholder text for a sample of ``collection``."""
        raise NotImplementedError

    def conditioning(self, batch: dict, tokens: PromptTokens) -> torch.Tensor:
        """Return the text conditioning ``[B, 77, d]`` of the prompts ``tokens`` for ``batch``."""
        raise NotImplementedError

    def prompt_for(self, collection: int, template: str, caption: str | None) -> str:
        """Build one prompt from a template, the collection's placeholder and a caption."""
        caption = caption if self.hparams.use_captions else None
        placeholder = self.placeholder_text(collection)
        return self.fitted_prompt(lambda text: fill_template(template, placeholder, text), caption)

    def build_prompts(
        self, batch: dict, deterministic: bool = False, generator: random.Random | None = None
    ) -> list[str]:
        """Prompts for a batch: templates drawn from a host ``generator``, or fixed per key."""
        collections = batch_collections(batch)
        captions = batch.get("caption") or [None] * len(collections)
        if deterministic:
            picks = [zlib.crc32(key.encode()) % len(self.templates) for key in batch["__key__"]]
        else:
            generator = generator or random.Random()
            picks = [generator.randrange(len(self.templates)) for _ in collections]
        return [
            self.prompt_for(collection, self.templates[pick], caption)
            for collection, pick, caption in zip(collections, picks, captions, strict=True)
        ]

    def template_table(self) -> TemplateTable:
        """Every (template, collection) prompt without a caption, tokenized once on this device."""
        table = getattr(self, "_template_table", None)
        if table is None or table.device != self.device:
            prompts = [
                [self.prompt_for(k, template, None) for k in range(len(self.collections))]
                for template in self.templates
            ]
            table = TemplateTable(self.tokenizer, prompts, self.first_placeholder_id, self.device)
            self._template_table = table
        return table

    def training_tokens(
        self, batch: dict, device_gen: torch.Generator, host_gen: random.Random
    ) -> PromptTokens:
        """Return the prompts of a training batch, with templates drawn at random.

        Without captions the prompts are gathered from :meth:`template_table` with template
        indices drawn on the device, so nothing is tokenized or copied in the step; captions
        vary per sample, so prompts that carry one are tokenized on the host.
        """
        if self.hparams.use_captions and any(batch.get("caption") or ()):
            prompts = self.build_prompts(batch, generator=host_gen)
            return self.prompt_tokens(prompts, self.first_placeholder_id)
        table = self.template_table()
        count = len(batch["collection_idx"])
        picks = torch.randint(
            table.num_templates, (count,), generator=device_gen, device=self.device
        )
        return table.tokens(picks, batch["collection_idx"].to(self.device))

    def _batch_losses(self, batch: dict, deterministic: bool) -> torch.Tensor:
        if deterministic:  # validation: the posterior mean and fixed noise per sample key
            latents = self.batch_latents(batch, sample=False)
            prompts = self.build_prompts(batch, deterministic=True)
            cond = self.conditioning(batch, self.prompt_tokens(prompts, self.first_placeholder_id))
            cond = as_conditioning(cond).with_time_ids(self.batch_time_ids(batch, latents))
            return self.diffusion_loss(latents, cond, batch["__key__"])
        device_gen, host_gen = self.training_generators()
        latents = self.batch_latents(batch, sample=True, generator=device_gen)
        cond = self.conditioning(batch, self.training_tokens(batch, device_gen, host_gen))
        cond = as_conditioning(cond).with_time_ids(self.batch_time_ids(batch, latents))
        return self.diffusion_loss(latents, cond, generator=device_gen)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """One denoising step; logs ``train/loss`` and ``train/loss/<collection>``."""
        losses = self._batch_losses(batch, deterministic=False)
        loss = losses.mean()
        batch_size = losses.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        if self._is_logging_step():
            self._log_collection_losses(batch, losses.detach())
        return loss

    def _log_collection_losses(self, batch: dict, losses: torch.Tensor) -> None:
        """Log ``train/loss/<collection>`` for the collections in the batch.

        Per-collection sums are an index add on the device, and which collections are
        present is read from the host copy of the indices, so nothing waits for the GPU.
        """
        present = batch_collections(batch)
        idx = batch["collection_idx"].to(losses.device)
        sums = losses.new_zeros(len(self.collections)).index_add_(0, idx, losses)
        for k in sorted(set(present)):
            count = present.count(k)
            self.log(f"train/loss/{self.collections[k]}", sums[k] / count, batch_size=count)

    def _is_logging_step(self) -> bool:
        trainer = self._trainer
        return trainer is None or (trainer.global_step + 1) % trainer.log_every_n_steps == 0

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Accumulate the deterministic per-collection loss (fixed noise per sample key)."""
        losses = self._batch_losses(batch, deterministic=True)
        self.val_loss.update(losses, batch["collection_idx"].to(self.device))

    def on_validation_epoch_end(self) -> None:
        """Log ``val/loss`` and ``val/loss/<collection>``, reduced across ranks."""
        result = self.val_loss.per_collection()
        self.val_loss.reset()
        self.log("val/loss", result["overall"], prog_bar=True, sync_dist=False)
        for k, name in enumerate(self.collections):
            if result["count"][k] > 0:
                self.log(f"val/loss/{name}", result["mean"][k], sync_dist=False)

    @torch.no_grad()
    def stylize(
        self,
        content: torch.Tensor,
        collection: int,
        style_pixels: torch.Tensor,
        steps: int = 20,
        strength: float = 0.7,
        guidance_scale: float = 7.5,
        seed: int = 0,
        inversion: str = "stochastic",
        scheduler: str = "ddim",
        adain: bool = False,
        captions: list[str] | None = None,
        template: str = "{}",
    ) -> torch.Tensor:
        """Render content images in one collection's style (training previews, the study).

        Args:
            content: ``[B, 3, H, W]`` pixels in ``[-1, 1]``.
            collection: the style's collection index.
            style_pixels: one exemplar ``[3, H, W]`` of the collection (the inverter's input).
            steps: DDIM steps of the full schedule.
            strength: img2img strength.
            guidance_scale: classifier-free guidance scale.
            seed: seed of content image ``i`` is ``seed + i``.
            inversion: ``stochastic``, ``noise`` or ``ddim`` (see ``img2img``).
            scheduler: the sampler (see ``img2img``).
            adain: match the content latents' channel statistics to the exemplar's first.
            captions: one caption per content image, put in its prompt as in training
                (``use_captions``); ``None`` for the style alone.
            template: the prompt template (see :func:`fill_template`).

        Returns:
            ``[B, 3, H, W]`` images in ``[0, 1]`` (eta 0).
        """
        prompts = [self.prompt_for(collection, template, c) for c in captions or [None]]
        style = {"pixel_values": style_pixels[None].expand(len(prompts), -1, -1, -1),
                 "collection_idx": torch.tensor([collection] * len(prompts))}  # fmt: skip
        tokens = self.prompt_tokens(prompts, self.first_placeholder_id)
        cond = as_conditioning(self.conditioning(style, tokens)).expand(len(content))
        uncond = self.empty_conditioning()
        z0 = self.encode_latents(content, sample=False)
        if adain:
            z0 = diffusion.adain(z0, self.encode_latents(style_pixels[None], sample=False))
        generators = [torch.Generator().manual_seed(seed + i) for i in range(len(content))]
        z = self.img2img(
            z0, cond, uncond, generators, strength, steps, guidance_scale,
            inversion=inversion, scheduler=scheduler,
        )  # fmt: skip
        return self.decode_latents(z)
