"""Offline batch stylization: a predict loop over content images with stochastic inversion."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

from artbank_pl import diffusion
from artbank_pl.errors import ConfigError, DataError
from artbank_pl.options import check_at_least
from artbank_pl.styles import (
    check_width,
    fitting_styles,
    image_files,
    invert_style_images,
    load_image,
    read_bank_styles,
    style_image_names,
)
from artbank_pl.tasks.base import FrozenDiffusionTask, sample_seed
from artbank_pl.tasks.conditioning import TextConditioning
from artbank_pl.tasks.sampling import Sampler, check_sampling
from artbank_pl.tokenizer import add_placeholder_tokens, expand_placeholder, placeholder_token

Inversion = Literal["stochastic", "noise", "ddim"]
STYLE_MARK = "*"


class StylizeTask(FrozenDiffusionTask):
    """Stylize content images with trained styles (run with ``artbank predict``).

    ``artbank test`` runs :class:`~artbank_pl.tasks.EvaluateTask`, this stylizer plus the
    evaluation's options (metrics model, exemplars, sweep, report).

    Styles come from a prompt bank (a checkpoint or its export, optionally a subset of its
    collections) or from an InST inverter checkpoint plus style images. Every content image
    is rendered once per style. The prompt's ``*`` stands for the style's tokens and
    ``{caption}`` for the content's caption, so ``*`` alone gives pure style.

    Args:
        bank: ``PromptBankTask`` checkpoint, exported ``.safetensors`` file, or export folder.
        collections: the bank's collections to use (default: all).
        inverter: ``InverterTask`` checkpoint.
        style_images: style images for the inverter (each becomes a style named by its stem).
        vision_model: CLIP vision model for the inverter (default: the one it was trained with).
        prompt: prompt with ``*`` for the style, e.g. ``a photo of {caption} in the style of *``.
        negative_prompt: prompt of the unconditional branch of guidance.
        inversion: ``stochastic`` (InST), ``noise`` (plain img2img) or ``ddim`` (DDIM
            inversion; needs ``scheduler: ddim``).
        scheduler: the sampler, a diffusers scheduler built from the model's scheduler
            config: ``ddim``, ``dpmsolver++`` (multistep; 15-20 steps suffice), ``euler``
            or ``unipc``.
        strength: fraction of the schedule re-run (0-1]; higher is more stylized.
        steps: sampler steps of the full schedule (``int(steps * strength)`` are run).
        guidance_scale: classifier-free guidance scale (1 or less turns it off).
        eta: DDIM eta (0 is deterministic; ``ddim`` only).
        adain: match the content latent's channel statistics to the style image's first.
        adain_reference: image whose latent statistics AdaIN uses with bank styles, or a
            folder with one sub-folder of images per style (its first image is the style's
            reference, e.g. the training collections' folder).
        seed: global seed; each output's seed derives from it, the content key and the style.
        batch_invariant: run each content image on its own through the UNet and VAE, so its
            output is bit-identical whatever the batch size or order, and across ranks that
            use the same number of threads. It costs one UNet call per image and step
            instead of one per batch (estimated 3-4 x slower on a GPU at batch 8). Off (the
            default): whole batches at once; outputs then equal to float rounding, except
            after ``inversion: ddim``, which amplifies it.
        pretrained: ``tiny``, a local diffusers folder, or a hub id.
        revision: hub revision of ``pretrained``.
        variant: weight variant of ``pretrained``.
        vae_fp32: keep the VAE in float32 under half precision.
        compile_unet: ``torch.compile`` the UNet (large runs; minutes of warm-up).
        channels_last: channels-last memory format for the UNet and VAE.
        clip_skip: condition on the output of the text encoder's ``clip_skip``-th layer from
            the end (1: the penultimate, for models trained that way), final-normed as
            diffusers does; 0 is the last layer.
        vae: another autoencoder (a folder or hub id), e.g. SDXL's fp16-fix VAE
            (``madebyollin/sdxl-vae-fp16-fix``); ``None`` keeps ``pretrained``'s.
    """

    frozen_names = ("unet", "vae", "text_encoder", "text_encoder_2")

    def __init__(
        self,
        bank: str | None = None,
        collections: list[str] | None = None,
        inverter: str | None = None,
        style_images: list[str] | None = None,
        vision_model: str | None = None,
        prompt: str = STYLE_MARK,
        negative_prompt: str = "",
        inversion: Inversion = "stochastic",
        scheduler: Sampler = "ddim",
        strength: float = 0.7,
        steps: int = 50,
        guidance_scale: float = 10.0,
        eta: float = 0.0,
        adain: bool = False,
        adain_reference: str | None = None,
        seed: int = 0,
        batch_invariant: bool = False,
        pretrained: str = "tiny",
        revision: str | None = None,
        variant: str | None = None,
        vae_fp32: bool = False,
        compile_unet: bool = False,
        channels_last: bool = False,
        clip_skip: int = 0,
        vae: str | None = None,
    ) -> None:
        _check_options(bank, inverter, style_images, prompt, adain, adain_reference)
        check_sampling(strength, steps, inversion, scheduler)
        check_at_least("model.guidance_scale", guidance_scale, 0)
        check_at_least("model.eta", eta, 0)
        check_at_least("model.clip_skip", clip_skip, 0)  # before the bank is read
        # a bank is read before Stable Diffusion is loaded: a bad file is refused at once
        bank_styles = read_bank_styles(bank, collections) if bank else None
        super().__init__(
            pretrained, revision, variant, vae_fp32, compile_unet=compile_unet,
            channels_last=channels_last, clip_skip=clip_skip, vae=vae,
        )  # fmt: skip
        if bank:
            styles = fitting_styles(bank_styles, self.text_widths, bank)
        else:
            styles, self.inverter_vision_model = invert_style_images(
                inverter, style_images, vision_model
            )
            check_width(styles, self.text_widths, inverter)
        self.style_names = list(styles)
        self._register_styles(styles)
        self.output_exists: Callable[[str, str], bool] | None = None
        self._style_latents: dict[str, torch.Tensor] = {}
        if adain:  # a missing reference is found now, not after hours of predict
            self.adain_references = {name: self._adain_reference(name) for name in styles}

    # ------------------------------------------------------------------ styles
    def _register_styles(self, styles: dict[str, torch.Tensor]) -> None:
        """Add each style's placeholder tokens and keep their vectors as one lookup table."""
        self.placeholders, rows = {}, []
        for name, table in styles.items():
            token = placeholder_token(name)
            ids = add_placeholder_tokens(self.tokenizer, [token], len(table))[0]
            if not rows:
                self.first_placeholder_id = ids[0]
            self.placeholders[name] = expand_placeholder(token, token, len(table))
            rows.append(table.float())
        self.register_buffer("style_table", torch.cat(rows), persistent=False)

    def prompt_for(self, style: str, caption: str) -> str:
        """Build one prompt: ``*`` becomes the style tokens, ``{caption}`` the caption."""

        def build(text: str) -> str:
            prompt = self.hparams.prompt.replace("{caption}", text).strip()
            return prompt.replace(STYLE_MARK, self.placeholders[style])

        return self.fitted_prompt(build, caption)

    def encode(self, prompts: list[str]) -> torch.Tensor | TextConditioning:
        """Text conditioning of prompts, with style tokens spliced in."""
        tokens = self.prompt_tokens(prompts, self.first_placeholder_id)
        # the style tokens' ids are consecutive rows of the table
        return self.encode_text(tokens, self.style_table[tokens.offsets])

    def _adain_reference(self, style: str) -> Path:
        """Return the AdaIN reference image of a style (``adain_reference`` or its image)."""
        hp = self.hparams
        if not hp.adain_reference:
            return Path(style_image_names(hp.style_images)[style])
        reference = Path(hp.adain_reference)
        if not reference.exists():
            raise DataError(f"model.adain_reference {reference} does not exist")
        if not reference.is_dir():
            return reference
        folder = reference / style
        images = image_files(folder) if folder.is_dir() else []
        if not images:
            raise DataError(f"model.adain_reference: no image for style {style!r} in {folder}")
        return images[0]

    def style_latent(self, style: str) -> torch.Tensor:
        """Return the AdaIN reference latent of a style."""
        if style not in self._style_latents:
            image = load_image(self.adain_references[style])
            self._style_latents[style] = self.encode_latents(image, sample=False)
        return self._style_latents[style]

    def seed_for(self, key: str, style: str) -> int:
        """Seed of one output, from the global seed, the content key and the style."""
        return sample_seed(f"{key}/{style}", self.hparams.seed)

    # ------------------------------------------------------------------ predict
    def content_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """VAE posterior means of content pixels, encoded once for every style.

        With ``batch_invariant`` each image is encoded on its own, so that its latent does
        not depend on the batch it came in.
        """
        if self.hparams.batch_invariant:
            return torch.cat([self.encode_latents(p[None], sample=False) for p in pixels])
        return self.encode_latents(pixels, sample=False)

    def negative_conditioning(self) -> torch.Tensor | TextConditioning:
        """Return the negative prompt's encoding, computed once per device and dtype.

        On SDXL an empty negative prompt is zeros, as in diffusers' SDXL pipelines.
        """
        key = (self.device, self.text_encoder.dtype)
        if getattr(self, "_negative", (None, None))[0] != key:
            negative = self.hparams.negative_prompt
            self._negative = (
                key,
                self.encode([negative]) if negative else self.empty_conditioning(),
            )
        return self._negative[1]

    def _render(
        self,
        style: str,
        z0: torch.Tensor,
        captions: list[str],
        seeds: list[int],
        strength: float | None = None,
        guidance_scale: float | None = None,
    ) -> torch.Tensor:
        """Stylize content latents ``z0`` in ``style``; ``[B, H, W, 3]`` uint8 on the CPU."""
        hp = self.hparams
        if hp.adain:
            z0 = diffusion.adain(z0, self.style_latent(style))
        cond = self.encode([self.prompt_for(style, c) for c in captions])
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        strength = hp.strength if strength is None else strength
        guidance_scale = hp.guidance_scale if guidance_scale is None else guidance_scale
        z = self.img2img(
            z0, cond, self.negative_conditioning(), generators, strength, hp.steps,
            guidance_scale, hp.eta, hp.inversion, hp.scheduler,
        )  # fmt: skip
        images = self.decode_latents(z)
        return (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Stylize a content batch with every style; outputs that already exist are skipped.

        Returns:
            ``{"images": [H, W, 3] uint8 tensors, "keys", "styles", "seeds", "sources"}``.
        """
        keys, n = batch["__key__"], len(batch["__key__"])
        captions = batch.get("caption") or [""] * n
        sources = batch.get("source") or [""] * n
        exists = self.output_exists or (lambda key, style: False)
        todo = {s: [i for i in range(n) if not exists(keys[i], s)] for s in self.style_names}
        out = {"images": [], "keys": [], "styles": [], "seeds": [], "sources": []}
        if not any(todo.values()):
            return out  # a finished batch costs no VAE or UNet work
        z0 = self.content_latents(batch["pixel_values"])
        for style, indices in todo.items():
            groups = [[i] for i in indices] if self.hparams.batch_invariant else [indices]
            for group in filter(None, groups):
                seeds = [self.seed_for(keys[i], style) for i in group]
                images = self._render(style, z0[group], [captions[i] for i in group], seeds)
                out["images"] += list(images)
                out["keys"] += [keys[i] for i in group]
                out["styles"] += [style] * len(group)
                out["seeds"] += seeds
                out["sources"] += [sources[i] for i in group]
        return out


def _check_options(bank, inverter, style_images, prompt, adain, reference) -> None:
    if bool(bank) == bool(inverter):
        raise ConfigError("give exactly one style source: model.bank or model.inverter")
    if inverter and not style_images:
        raise ConfigError("model.inverter needs model.style_images")
    if STYLE_MARK not in prompt:
        raise ConfigError(f"prompt {prompt!r} has no '*' where the style goes")
    if adain and bank and not reference:
        raise ConfigError(
            "adain with a bank needs model.adain_reference (an image, or a folder with one "
            "sub-folder per style)"
        )
