"""InST training: an attention inverter from CLIP image features to a pseudo-word."""

from __future__ import annotations

from typing import Literal

import torch

from artbank_pl.errors import ConfigError
from artbank_pl.modules.inverter import AttentionInverter
from artbank_pl.optim import LRSchedule
from artbank_pl.options import check_at_least, check_fraction
from artbank_pl.tasks.conditioning import TextConditioning
from artbank_pl.tasks.prompts import PromptTokens
from artbank_pl.tasks.style import StyleTask
from artbank_pl.tokenizer import (
    add_placeholder_tokens,
    expand_placeholder,
    single_token_id,
)
from artbank_pl.vision import image_features, inverter_inputs, load_vision_encoder

ImageFeatures = Literal["patch", "pooled"]


class InverterTask(StyleTask):
    """Train InST's inverter: a painting's CLIP features become the placeholder's embeddings.

    Each sample's own image goes through the frozen CLIP vision model and the inverter;
    the result replaces the placeholder tokens of that sample's prompt (``{}`` alone, as in
    the paper, by default). Trains on one painting or a whole collection, at any batch size.

    Args:
        collections: collection names, for per-collection losses; linked from the data.
        vision_model: CLIP vision model: a hub id, a local folder, or ``tiny``.
        image_features: ``patch`` (queries attend over the patch tokens) or ``pooled`` (the
            projected image embedding alone, as in the paper).
        num_tokens: token embeddings the inverter produces.
        placeholder: the placeholder string added to the tokenizer.
        inverter_dim: width of the attention layers (default: the (first) text encoder's
            embedding width; on SDXL the output maps to both encoders' widths).
        inverter_layers: cross-attention layers.
        inverter_heads: attention heads.
        inverter_dropout: dropout (0.05 in the paper).
        initializer_token: a one-token word whose embedding the output starts from.
        image_queries: the inverter's queries start from the image embedding, as InST's
            do, rather than from learned vectors alone.
        learned_base: train the base embedding the inverter's output is added to (a free
            word, textual inversion inside the inverter); off, it stays the initializer's
            embedding (or zero), and only the image moves the output.
        templates: prompt templates with one ``{}`` for the placeholder.
        use_captions: append each sample's caption to its prompt.
        pretrained: ``tiny``, a local diffusers folder, or a hub id.
        revision: hub revision of ``pretrained``.
        variant: weight variant of ``pretrained``.
        vae_fp32: keep the VAE in float32 under half precision.
        lr: AdamW learning rate (InST: 1e-4 per image of the global batch).
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear warm-up steps.
        lr_schedule: ``cosine`` or ``constant``.
        min_lr_ratio: final learning-rate fraction of the cosine schedule.
        min_snr_gamma: min-SNR-gamma weighting; ``None`` turns it off.
        noise_offset: noise offset.
        val_seed: seed of the fixed validation noise.
        compile_unet: ``torch.compile`` the UNet (long runs; minutes of warm-up).
        channels_last: channels-last memory format for the UNet and VAE.
        clip_skip: condition on the output of the text encoder's ``clip_skip``-th layer from
            the end (1: the penultimate, for models trained that way), final-normed as
            diffusers does; 0 is the last layer.
        vae: another autoencoder (a folder or hub id), e.g. SDXL's fp16-fix VAE
            (``madebyollin/sdxl-vae-fp16-fix``); ``None`` keeps ``pretrained``'s.
    """

    frozen_names = ("unet", "vae", "text_encoder", "text_encoder_2", "vision")

    def __init__(
        self,
        collections: list[str] | None = None,
        vision_model: str = "openai/clip-vit-large-patch14",
        image_features: ImageFeatures = "patch",
        num_tokens: int = 1,
        placeholder: str = "<inst>",
        inverter_dim: int | None = None,
        inverter_layers: int = 2,
        inverter_heads: int = 8,
        inverter_dropout: float = 0.05,
        initializer_token: str | None = "painting",
        image_queries: bool = False,
        learned_base: bool = True,
        templates: list[str] | None = None,
        use_captions: bool = False,
        pretrained: str = "tiny",
        revision: str | None = None,
        variant: str | None = None,
        vae_fp32: bool = False,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 0,
        lr_schedule: LRSchedule = "constant",
        min_lr_ratio: float = 0.0,
        min_snr_gamma: float | None = None,
        noise_offset: float = 0.0,
        val_seed: int = 0,
        compile_unet: bool = False,
        channels_last: bool = False,
        clip_skip: int = 0,
        vae: str | None = None,
    ) -> None:
        # checked before the base class loads Stable Diffusion
        check_at_least("model.num_tokens", num_tokens, 1)
        check_at_least("model.inverter_layers", inverter_layers, 1)
        check_at_least("model.inverter_heads", inverter_heads, 1)
        check_at_least("model.inverter_dim", inverter_dim, 1)
        check_fraction("model.inverter_dropout", inverter_dropout)
        super().__init__(
            collections, templates or ["{}"], use_captions, pretrained, revision, variant,
            vae_fp32, lr, weight_decay, betas, warmup_steps, lr_schedule, min_lr_ratio,
            min_snr_gamma, noise_offset, val_seed, compile_unet, channels_last, clip_skip, vae,
        )  # fmt: skip
        self.vision = load_vision_encoder(vision_model)
        self.first_placeholder_id = add_placeholder_tokens(
            self.tokenizer, [placeholder], num_tokens
        )[0][0]
        self.placeholder = placeholder
        config = self.vision.config
        feature_dim = config.hidden_size if image_features == "patch" else config.projection_dim
        # SDXL: one output over both encoders' widths, i.e. one head per encoder
        widths = self.text_widths
        self.inverter = AttentionInverter(
            feature_dim, sum(widths), num_tokens, inverter_dim or widths[0], inverter_layers,
            inverter_heads, inverter_dropout, image_queries, config.projection_dim,
            learned_base,
        )  # fmt: skip
        if initializer_token:
            init_id = single_token_id(self.tokenizer, initializer_token)
            words = [e.get_input_embeddings().weight[init_id] for e in self.text_encoders]
            self.inverter.init_base(torch.cat(words))

    def cast_frozen(self, dtype: torch.dtype) -> None:
        """Cast the frozen SD parts and, once, the frozen CLIP vision model to ``dtype``."""
        super().cast_frozen(dtype)
        if self.vision.dtype != dtype:
            self.vision.to(dtype)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen CLIP features ``[B, S, c]`` of ``[-1, 1]`` pixels (patch tokens or pooled)."""
        return image_features(self.vision, pixel_values, self.hparams.image_features)

    def style_vectors(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``[B, n, d]`` for style images given as ``[-1, 1]`` pixels."""
        features, embedding = inverter_inputs(
            self.vision, pixel_values, self.hparams.image_features
        )
        return self.inverter(features, embedding)

    def placeholder_text(self, collection: int) -> str:
        """Return the placeholder expanded to its tokens (the same for every sample)."""
        return expand_placeholder(self.placeholder, self.placeholder, self.inverter.num_tokens)

    def conditioning(self, batch: dict, tokens: PromptTokens) -> torch.Tensor | TextConditioning:
        """Encode the prompts with each sample's own inverted embeddings spliced in.

        Row ``b``'s placeholder token ``j`` gets ``vectors[b, j]``. Cached CLIP features
        (``artbank shards cache --vision-model``) are used when the batch has them.
        """
        if "clip" in batch:
            if self.hparams.image_queries and self.hparams.image_features == "patch":
                raise ConfigError(
                    "cached patch features hold no image embedding for model.image_queries: "
                    "cache with image_features pooled, or train from the images"
                )
            vectors = self.inverter(batch["clip"].to(self.device))
        else:
            vectors = self.style_vectors(batch["pixel_values"])
        flat_index = tokens.rows * vectors.shape[1] + tokens.offsets
        return self.encode_text(tokens, vectors.flatten(0, 1)[flat_index])
